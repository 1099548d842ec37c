"""One structured log line per RPC (or per failed RPC): method, status code, duration.

Runs inside the request-id interceptor, so each line carries the caller's `x-request-id`
(the search service forwards it downstream, so one id finds a search's lines in every
process). Modes: "errors" (default: only calls that did not end OK, cheap at any rate),
"all" (every call), "off".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

log = logging.getLogger("neuralir.access")

ACCESS_LOG_MODES = ("off", "errors", "all")


class AccessLogInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, mode: str) -> None:
        if mode not in ACCESS_LOG_MODES:
            raise ValueError(f"access log must be one of {ACCESS_LOG_MODES}, not {mode!r}")
        self._all = mode == "all"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        inner = handler.unary_unary

        async def logged(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter_ns()
            code = "OK"
            try:
                return await inner(request, context)
            except grpc.aio.AbortError:
                status = context.code()
                code = status.name if status is not None else "UNKNOWN"
                raise
            except BaseException:
                code = "CANCELLED"
                raise
            finally:
                if self._all or code != "OK":
                    ms = (time.perf_counter_ns() - start) / 1e6
                    log.info(
                        "%s %s %.2f ms",
                        method,
                        code,
                        ms,
                        extra={"fields": {"method": method, "code": code, "duration_ms": ms}},
                    )

        return grpc.unary_unary_rpc_method_handler(
            logged,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
