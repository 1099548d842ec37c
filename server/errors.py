"""The one table that maps failures to gRPC status codes, and the interceptor that applies it.

Handlers raise; they never build statuses themselves. Anything not in the table is a bug and
becomes INTERNAL (logged with its traceback, never shown to the caller).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base of every failure a handler reports on purpose."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclasses.dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class InvalidArgument(ServiceError):
    """Bad input; carries field-level details (google.rpc.BadRequest)."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.violations = [FieldViolation(field, description)]


# How long a shed caller is told to wait before retrying (google.rpc.RetryInfo): long enough
# for a batch or two to finish, short enough not to idle a client that retries once.
DEFAULT_RETRY_DELAY_S = 0.25


class Overloaded(ServiceError):
    """A bounded queue or the in-flight cap is full: the request is shed at once instead of
    waiting. Every such answer carries google.rpc.RetryInfo (when to retry)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_delay_s: float = DEFAULT_RETRY_DELAY_S) -> None:
        super().__init__(message)
        self.retry_delay_s = retry_delay_s


class NotReady(ServiceError):
    """The model or index is not loaded and warmed up yet."""

    code = grpc.StatusCode.UNAVAILABLE


class StageUnavailable(ServiceError):
    """A downstream stage (encoder, index, rerank) cannot be reached."""

    code = grpc.StatusCode.UNAVAILABLE


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The table: exception -> (code, caller-facing message)."""
    if isinstance(exc, ServiceError):
        return exc.code, exc.message
    if isinstance(exc, NotImplementedError):
        # A generated servicer's default method (or ours) for an RPC this server lacks.
        return grpc.StatusCode.UNIMPLEMENTED, "method not implemented"
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"
    if isinstance(exc, grpc.aio.AioRpcError):
        # A downstream call failed: keep its code so callers can tell shedding from outages.
        return exc.code(), exc.details() or exc.code().name
    return grpc.StatusCode.INTERNAL, "internal error (see server log)"


def to_rich_status(exc: BaseException) -> grpc.Status:
    code, message = status_for(exc)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    if isinstance(exc, InvalidArgument):
        details = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in exc.violations
            ]
        )
        _pack(status, details)
    if isinstance(exc, Overloaded):
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(exc.retry_delay_s * 1e9))
        _pack(status, error_details_pb2.RetryInfo(retry_delay=delay))
    return rpc_status.to_status(status)


def _pack(status: status_pb2.Status, details: Message) -> None:
    packed = any_pb2.Any()
    packed.Pack(details)
    status.details.append(packed)


Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


@dataclasses.dataclass(frozen=True)
class _Undecodable:
    """Stands in for a request whose bytes are not a valid message of the method's type.

    gRPC decodes before any handler runs and answers a decode failure with UNKNOWN plus an
    error-level traceback in the log for every such call; decoding tolerantly lets the
    handler refuse it as bad input (INVALID_ARGUMENT) through the table like any other.
    """

    error: str


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as exc:
            return _Undecodable(str(exc))

    return deserialize


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns exceptions escaping unary handlers into statuses from the table above.

    `check_request`, when given, runs on every decoded request before its handler (checks that
    hold for every RPC, such as finite floats); what it raises goes through the table too.
    """

    def __init__(self, check_request: Callable[[Any], None] | None = None) -> None:
        self._check_request = check_request

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner: Handler = handler.unary_unary
        method = handler_call_details.method
        check_request = self._check_request

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                if isinstance(request, _Undecodable):
                    raise InvalidArgument("request", f"is not a valid protobuf: {request.error}")
                if check_request is not None:
                    check_request(request)
                return await inner(request, context)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AbortError:
                raise  # the handler already set a status
            except Exception as exc:
                code, _ = status_for(exc)
                if code == grpc.StatusCode.INTERNAL:
                    log.exception("unhandled error in %s", method)
                await context.abort_with_status(to_rich_status(exc))

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
