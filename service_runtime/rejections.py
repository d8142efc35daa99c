"""Typed business rejections and the one table mapping them to gRPC status codes.

Domain and storage code raise `Rejection`; the gRPC layer turns it into a status naming the field
or conflict. Anything else escaping a handler is a bug and surfaces as INTERNAL.
"""

from __future__ import annotations

import enum

import grpc


class Reason(enum.Enum):
    INVALID = "invalid"                # malformed or out-of-range input
    NOT_FOUND = "not_found"            # unknown id, or another tenant's
    CONFLICT = "conflict"              # idempotency key reused with another payload; duplicate id
    PRECONDITION = "precondition"      # valid input, wrong state (insufficient credits, resolved hold)
    FORBIDDEN = "forbidden"            # authenticated, but the role may not do this
    UNAUTHENTICATED = "unauthenticated"
    EXHAUSTED = "exhausted"            # over a rate limit; retry after `retry_after_s`


STATUS_OF: dict[Reason, grpc.StatusCode] = {
    Reason.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.CONFLICT: grpc.StatusCode.ALREADY_EXISTS,
    Reason.PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
    Reason.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Reason.EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class Rejection(Exception):
    """A request the system refuses on purpose. `field` names the offending input, if any;
    `retry_after_s`, when the same call may succeed later (sent as google.rpc.RetryInfo)."""

    def __init__(self, reason: Reason, message: str, field: str = "", *, retry_after_s: float | None = None) -> None:
        self.reason = reason
        self.field = field
        self.retry_after_s = retry_after_s
        self.message = f"{field}: {message}" if field else message
        super().__init__(self.message)

    @property
    def status(self) -> grpc.StatusCode:
        return STATUS_OF[self.reason]


def invalid(field: str, message: str) -> Rejection:
    return Rejection(Reason.INVALID, message, field)


def not_found(field: str, message: str = "not found") -> Rejection:
    return Rejection(Reason.NOT_FOUND, message, field)


def conflict(field: str, message: str) -> Rejection:
    return Rejection(Reason.CONFLICT, message, field)


def precondition(field: str, message: str) -> Rejection:
    return Rejection(Reason.PRECONDITION, message, field)
