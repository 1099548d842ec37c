"""Server interceptors: request ids for logs, the optional shared-secret bearer token, call
observation (metrics, access log) and the in-flight cap that sheds overload."""

from __future__ import annotations

import hmac
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from neuralir.server.errors import Overloaded, to_rich_status
from neuralir.server.logs import request_id_var

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]]

# Health must answer load balancers and probes that hold no token.
_UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/",)


def _metadata(details: grpc.HandlerCallDetails) -> dict[str, str]:
    return {k: v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}


def _deadline_passed(context: grpc.aio.ServicerContext) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


def _wrap_unary(
    handler: grpc.RpcMethodHandler,
    wrapper: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        wrapper,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class RequestIdInterceptor(grpc.aio.ServerInterceptor):
    """Takes the caller's x-request-id (or makes one) and binds it to the call's logs."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        request_id = _metadata(handler_call_details).get("x-request-id") or uuid.uuid4().hex[:16]
        inner = handler.unary_unary

        async def with_request_id(request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = request_id_var.set(request_id)
            try:
                return await inner(request, context)
            finally:
                request_id_var.reset(token)

        return _wrap_unary(handler, with_request_id)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without `authorization: Bearer <token>`; health checks are exempt."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        if handler_call_details.method.startswith(_UNAUTHENTICATED_PREFIXES):
            return await continuation(handler_call_details)
        presented = _metadata(handler_call_details).get("authorization", "").encode()
        # Constant-time comparison: timing must not reveal how much of the token matched.
        if hmac.compare_digest(presented, self._expected):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        message = "missing bearer token" if not presented else "invalid bearer token"

        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        return _wrap_unary(handler, refuse)


# Called once per finished unary RPC: (full method name, final status code name, seconds).
CallObserver = Callable[[str, str, float], None]


class ObservingInterceptor(grpc.aio.ServerInterceptor):
    """Measures every unary RPC once (final status code, duration) and tells each observer:
    Prometheus metrics and the access log share this one wrapper."""

    def __init__(self, observers: list[CallObserver]) -> None:
        self._observers = observers

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        observers = self._observers
        inner = handler.unary_unary

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            code = "OK"
            try:
                return await inner(request, context)
            except grpc.aio.AbortError:
                status = context.code()
                code = status.name if status is not None else "UNKNOWN"
                raise
            except BaseException:
                # gRPC cancels the handler both when the caller cancels and when its deadline
                # passes: only the clock tells them apart.
                code = "DEADLINE_EXCEEDED" if _deadline_passed(context) else "CANCELLED"
                raise
            finally:
                if code == "OK" and _deadline_passed(context):
                    code = "DEADLINE_EXCEEDED"  # finished too late: the caller saw that
                elapsed = time.perf_counter() - start
                for observe in observers:
                    observe(method, code, elapsed)

        return _wrap_unary(handler, observed)


# Health probes and reflection answer under any load: a shed liveness probe restarts the pod.
_NEVER_SHED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class InFlightLimitInterceptor(grpc.aio.ServerInterceptor):
    """At most `max_in_flight` unary RPCs run at once; past that a call is answered at once
    with RESOURCE_EXHAUSTED and google.rpc.RetryInfo (see errors.Overloaded) and counted.

    Why here and not in gRPC: grpc.aio's `maximum_concurrent_rpcs` stops *accepting* calls
    from the core, which then queues them and drops them with CANCELLED (its pending-request
    limit, or 30 s unaccepted) - a status a client cannot tell from its own cancellation and
    that carries no retry advice. Accepting every call and refusing the excess is cheap and says
    what happened."""

    def __init__(self, max_in_flight: int, on_shed: Callable[[str], None] | None = None) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._on_shed = on_shed

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if (
            handler is None
            or handler.unary_unary is None
            or method.startswith(_NEVER_SHED_PREFIXES)
        ):
            return handler
        inner = handler.unary_unary

        async def limited(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if self.in_flight >= self.max_in_flight:
                if self._on_shed is not None:
                    self._on_shed(method)
                shed = Overloaded(
                    f"server overloaded: {self.in_flight} calls in flight, the limit is "
                    f"{self.max_in_flight}; retry after the delay in RetryInfo"
                )
                await context.abort_with_status(to_rich_status(shed))
            self.in_flight += 1
            try:
                return await inner(request, context)
            finally:
                self.in_flight -= 1

        return _wrap_unary(handler, limited)
