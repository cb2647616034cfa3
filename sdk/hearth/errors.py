"""Hearth's error hierarchy, shared by the services and the SDK.

A service raises one of these; the runtime's error interceptor turns it into a
``google.rpc.Status`` with one ``ErrorInfo`` (the stable ``reason`` and the
variables in ``metadata``) and, for retryable errors, a ``RetryInfo``. The SDK
turns the status back into the same class by (code, reason) with
:func:`from_rpc_error`. The reason is the contract; the message is for people.
"""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

#: The ErrorInfo domain of every error Hearth raises.
ERROR_DOMAIN = "hearth.local"
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


class HearthError(Exception):
    """Base of every error that crosses a Hearth API.

    Args:
        message: for people; may change between versions.
        reason: stable UPPER_SNAKE name; the contract.
        metadata: the variables of the error (a field name, a limit).
        retry_after: for retryable errors, how long to wait, in seconds.
    """

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN
    default_reason: ClassVar[str] = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason}: {self.message})"

    def to_status(self) -> status_pb2.Status:
        """The google.rpc.Status this error travels as."""
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata)
        details = [_pack(info)]
        if self.retry_after is not None:
            delay = duration_pb2.Duration()
            delay.FromTimedelta(timedelta(seconds=self.retry_after))
            details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=details)

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return ((_STATUS_DETAILS_KEY, self.to_status().SerializeToString()),)


class InvalidArgument(HearthError):
    """The request is malformed; ``field`` names the offending field."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_FIELD"

    def __init__(self, field: str, message: str, *, reason: str | None = None, **metadata: str) -> None:
        super().__init__(f"{field}: {message}", reason=reason, metadata={"field": field, **metadata})
        self.field = field


class NotFound(HearthError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(HearthError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class PermissionDenied(HearthError):
    """A policy forbids what was asked (e.g. POLICY_DENIED, naming the rule)."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class FailedPrecondition(HearthError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class ResourceExhausted(HearthError):
    """Retryable: a queue, capacity or rate limit is full."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class Unavailable(HearthError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class Aborted(HearthError):
    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class DeadlineExceeded(HearthError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class Cancelled(HearthError):
    code = grpc.StatusCode.CANCELLED
    default_reason = "CANCELLED"


class Internal(HearthError):
    """An unexpected failure. Its message is generic; details go to the logs."""

    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"


_BY_CODE: dict[grpc.StatusCode, type[HearthError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        FailedPrecondition,
        ResourceExhausted,
        Unavailable,
        Aborted,
        DeadlineExceeded,
        Cancelled,
        Internal,
    )
}


def from_rpc_error(error: grpc.RpcError) -> HearthError:
    """Turn a gRPC error into the HearthError subclass of its code, keeping the
    reason, metadata and retry delay from its rich status when there is one."""
    code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
    message = error.details() if callable(getattr(error, "details", None)) else str(error)
    for key, value in _trailers(error):
        if key == _STATUS_DETAILS_KEY:
            return _from_parts(code, message, status_pb2.Status.FromString(value))
    return _from_parts(code, message, None)


def from_status(status: status_pb2.Status) -> HearthError:
    """The HearthError a google.rpc.Status stands for (the inverse of
    :meth:`HearthError.to_status`), for errors that travel inside messages."""
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    return _from_parts(code, status.message, status)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _from_parts(code: grpc.StatusCode, message: str | None, status: status_pb2.Status | None) -> HearthError:
    reason: str | None = None
    metadata: dict[str, str] = {}
    retry_after: float | None = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.ToTimedelta().total_seconds()
    cls = _BY_CODE.get(code, HearthError)
    reason = reason or (code.name if code else "UNKNOWN")
    err: HearthError
    if cls is InvalidArgument:
        err = HearthError.__new__(InvalidArgument)
        # Not through InvalidArgument.__init__: the message on the wire
        # already starts with the field.
        HearthError.__init__(err, message or "", reason=reason, metadata=metadata, retry_after=retry_after)
        err.field = metadata.get("field", "")  # type: ignore[attr-defined]
    else:
        err = cls(message or "", reason=reason, metadata=metadata, retry_after=retry_after)
    return err


def _trailers(error: grpc.RpcError) -> tuple[tuple[str, bytes], ...]:
    getter = getattr(error, "trailing_metadata", None)
    if not callable(getter):
        return ()
    return tuple(getter() or ())


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


__all__ = [
    "ERROR_DOMAIN",
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "HearthError",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "ResourceExhausted",
    "Unavailable",
    "from_rpc_error",
    "from_status",
]
