"""One structured log line per RPC (or per failed RPC): method, status code, duration.

Runs inside the request-id interceptor, so each line carries the caller's `x-request-id`
(the search service forwards it downstream, so one id finds a search's lines in every
process). Modes: "errors" (default: only calls that did not end OK, cheap at any rate),
"all" (every call), "off".
"""

from __future__ import annotations

import logging

from neuralir.server.interceptors import CallObserver

log = logging.getLogger("neuralir.access")

ACCESS_LOG_MODES = ("off", "errors", "all")


def access_logger(mode: str) -> CallObserver | None:
    """The access log as a call observer (see interceptors.ObservingInterceptor); None if off."""
    if mode not in ACCESS_LOG_MODES:
        raise ValueError(f"access log must be one of {ACCESS_LOG_MODES}, not {mode!r}")
    if mode == "off":
        return None
    log_all = mode == "all"

    def observe(method: str, code: str, seconds: float) -> None:
        if log_all or code != "OK":
            ms = seconds * 1e3
            log.info(
                "%s %s %.2f ms",
                method,
                code,
                ms,
                extra={"fields": {"method": method, "code": code, "duration_ms": ms}},
            )

    return observe
