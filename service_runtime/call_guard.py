"""The guard around every call (unary; server-streaming in `GuardedStream`): small parts, one concern each,
composed in one fixed order.

    observe (metrics, and a server span when tracing is on) around everything, then
    1. identify      x-api-key and x-request-id from the metadata, the peer (`read_metadata`)
    2. authenticate  the key resolved to its Caller, or UNAUTHENTICATED (`authenticate`)
    3. rate limit    the key's calls per second, if configured, or RESOURCE_EXHAUSTED + RetryInfo
    4. authorize     the caller's role against the method's permission row, or PERMISSION_DENIED; a
                     portal session also to its own account or customer (portal_sessions.check_scope)
    5. parse check   bytes that were not a valid message: INVALID_ARGUMENT, not UNKNOWN
    6. admit         `call_context.current_caller()` is set for the servicer
    7. audit         a mutation's record prepared, written once the handler answered (`CallAudit`)
    8. answer        the servicer's handler
    on a Rejection:  the refusal audited, then mapped to its status code (`GuardedMethod.run`):
                     a refusal of a caller that proved no key is counted per window, source and
                     reason (service_runtime.refusal_counts); any other keeps its own record.

`AuthInterceptor` wraps each method's handler in a `GuardedMethod` once and caches it, so a call
allocates only its own `Call` record.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2

from service_runtime import logs, portal_sessions, row_security, tracing
from service_runtime.api_keys import Caller, KeyRefused, KeyResolver
from service_runtime.audit import AuditRecord, AuditWriter, PendingAudit, clean, describe, is_mutation, pending_audit
from service_runtime.call_context import enter_call
from service_runtime.metrics import observe_rpc
from service_runtime.rate_limits import KeyRateLimit
from service_runtime.refusal_counts import RefusalCounter
from service_runtime.rejections import Reason, Rejection

log = logging.getLogger(__name__)

UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
MALFORMED = object()  # a request whose bytes did not parse: answered INVALID_ARGUMENT, not UNKNOWN


@dataclass(slots=True)
class Call:
    """What the guard has learnt about one call so far."""

    method: str
    request: Any
    presented: str | None = None  # the x-api-key as sent (never logged or stored)
    request_id: str | None = None
    caller: Caller | None = None
    peer: str = ""
    code: str = "INTERNAL"  # until the call ends otherwise: an exception that escapes is a bug
    detail: str = ""


# ---- 1-5: admission ------------------------------------------------------------------------------

def read_metadata(call: Call, metadata: Iterable[tuple[str, Any]] | None) -> None:
    for key, value in metadata or ():
        if key == "x-api-key":
            call.presented = value if isinstance(value, str) else None
        elif key == "x-request-id" and isinstance(value, str):
            call.request_id = value[:128]
    logs.request_id.set(call.request_id or "")


async def authenticate(call: Call, resolver: KeyResolver) -> Caller:
    """The presented key's Caller (KeyRefused UNAUTHENTICATED otherwise: naming the key's Caller when
    its secret matched, so the refusal is audited as that key's); logs and row security are scoped
    to its tenant from here on."""
    try:
        call.caller = caller = await resolver.resolve(call.presented)
    except KeyRefused as refused:
        call.caller = refused.caller
        raise
    logs.tenant_id.set(caller.tenant_id)
    row_security.current_tenant.set(caller.tenant_id)
    return caller


def authorize(call: Call, caller: Caller, allowed: frozenset[str] | None) -> None:
    if allowed is None or caller.role not in allowed:
        raise Rejection(Reason.FORBIDDEN, f"role {caller.role!r} may not call {call.method}")
    if caller.portal is not None and call.request is not MALFORMED:  # a portal session: its own customer only
        portal_sessions.check_scope(caller.portal, call.method, call.request)


def check_parsed(call: Call) -> None:
    if call.request is MALFORMED:
        raise Rejection(Reason.INVALID, "is not a valid protobuf message for this method", "request")


def tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A deserializer that answers MALFORMED instead of raising (the guard then refuses the call)."""
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:
            return MALFORMED

    return parse


def passing_bytes(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """A stream's serializer that sends bytes as they are: a message fanned out to many streams (one
    balance change to a thousand watchers) is serialized once by its method, not once per stream."""
    if serialize is None:
        return None

    def pack(message: Any) -> bytes:
        return message if isinstance(message, bytes) else serialize(message)

    return pack


# ---- 6: audit ------------------------------------------------------------------------------------

# Request ids for calls that bring none: unique per process start, cheap (no uuid per call).
_PROCESS_ID = uuid.uuid4().hex[:12]
_REQUEST_SEQ = itertools.count(1)


def key_id_of(presented: str | None) -> str:
    """The key id part of a presented key (never the secret), for auditing refused keys."""
    if presented and presented.startswith("ck_") and "." in presented:
        key_id = presented[3:].split(".", 1)[0]
        if key_id.isalnum() and len(key_id) <= 32:
            return key_id
    return ""


def audit_record(call: Call, code: str, detail: str) -> AuditRecord:
    subjects, reason = describe(call.request)
    caller = call.caller
    return AuditRecord(
        tenant_id=caller.tenant_id if caller else "", key_id=caller.key_id if caller else key_id_of(call.presented),
        role=caller.role if caller else "", method=call.method, code=code, detail=clean(detail, 1000),
        reason=reason, subjects=subjects,
        request_id=clean(call.request_id, 128) if call.request_id else f"{_PROCESS_ID}-{next(_REQUEST_SEQ)}",
    )


class CallAudit:
    """The audit trail's part in a call: every mutation and every refused attempt of a known key
    leaves a record; refusals of callers that proved no key are counted (`RefusalCounter`)."""

    __slots__ = ("_refusals", "_writer")

    def __init__(self, writer: AuditWriter | None, refusals: RefusalCounter | None = None) -> None:
        self._writer = writer
        self._refusals = refusals

    def prepare(self, call: Call) -> PendingAudit | None:
        """A mutation's record, offered to the data layer to write in its own transaction."""
        if self._writer is None or not is_mutation(call.request):
            return None
        pending = PendingAudit(audit_record(call, "OK", ""))
        pending_audit.set(pending)
        return pending

    async def settle(self, pending: PendingAudit | None) -> None:
        """Writes the answered mutation's record unless the data layer claimed it."""
        if self._writer is not None and pending is not None and not pending.claimed:
            await self._writer.record(pending.record)

    async def refused(self, call: Call, rejection: Rejection) -> None:
        try:
            if isinstance(rejection, KeyRefused) and rejection.caller is None:  # proved no key
                if self._refusals is not None:
                    await self._refusals.count(call.peer, rejection.reason_text)
            elif self._writer is not None:
                await self._writer.record(audit_record(call, call.code, call.detail))
        except Exception:  # the refusal stands even if its record could not be written
            log.exception("audit record of a refused %s failed", call.method)


def status_details(rejection: Rejection) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata carrying google.rpc.Status with RetryInfo, for a refusal that may be retried."""
    if rejection.retry_after_s is None:
        return ()
    delay = Duration()
    delay.FromNanoseconds(max(1, int(rejection.retry_after_s * 1e9)))
    detail = AnyMessage()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(code=rejection.status.value[0], message=rejection.message, details=[detail])
    return (("grpc-status-details-bin", status.SerializeToString()),)


# ---- observation ---------------------------------------------------------------------------------

Span = tuple[Any, object]  # (span, context token) from tracing.start_server_span


def observe_start(call: Call, context: grpc.aio.ServicerContext) -> tuple[float, Span | None]:
    # Tracing is off unless configured: then this one attribute check is all it costs.
    span = tracing.start_server_span(call.method, context.invocation_metadata()) if tracing.ACTIVE else None
    return time.perf_counter(), span


def observe_end(call: Call, started: float, span: Span | None) -> None:
    observe_rpc(call.method, call.code, time.perf_counter() - started)
    if span is not None:
        tenant = call.caller.tenant_id if call.caller else ""
        tracing.end_server_span(span[0], span[1], call.code, tenant, call.request_id, call.detail)


# ---- composition ---------------------------------------------------------------------------------

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class GuardedMethod:
    """One method's handler behind the parts above, in their order."""

    __slots__ = ("_allowed", "_audit", "_inner", "_limit", "_method", "_resolver")

    def __init__(self, method: str, inner: Handler, resolver: KeyResolver, allowed: frozenset[str] | None,
                 audit: CallAudit, limit: KeyRateLimit | None = None) -> None:
        self._method, self._inner, self._resolver, self._allowed, self._audit = method, inner, resolver, allowed, audit
        self._limit = limit

    async def run(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        call = Call(self._method, request)
        started, span = observe_start(call, context)
        try:
            await self._admit(call, context)
            return await self._answer(call, context)
        except Rejection as rej:
            await self._refuse(call, context, rej)
        except asyncio.CancelledError:
            call.code = "CANCELLED"
            raise
        finally:
            observe_end(call, started, span)

    async def _admit(self, call: Call, context: grpc.aio.ServicerContext) -> None:
        read_metadata(call, context.invocation_metadata())
        call.peer = context.peer() or ""
        caller = await authenticate(call, self._resolver)
        if self._limit is not None:
            self._limit.check(caller)
        authorize(call, caller, self._allowed)
        check_parsed(call)
        enter_call(caller)

    async def _refuse(self, call: Call, context: grpc.aio.ServicerContext, rej: Rejection) -> None:
        """A refusal: recorded on the call, audited, and answered with its status (abort raises)."""
        call.code, call.detail = rej.status.name, rej.message
        await self._audit.refused(call, rej)
        await context.abort(rej.status, rej.message, trailing_metadata=status_details(rej))

    async def _answer(self, call: Call, context: grpc.aio.ServicerContext) -> Any:
        pending = self._audit.prepare(call)
        response = await self._inner(call.request, context)
        if call.caller is not None and call.caller.portal is not None:
            portal_sessions.check_answer(call.caller.portal, call.method, response)
        call.code = "OK"
        await self._audit.settle(pending)
        return response


class GuardedStream(GuardedMethod):
    """A server-streaming method behind the same parts: admitted once, then its messages relayed.
    Streams are reads (statements, exports, balance watches): nothing to audit but refusals."""

    __slots__ = ()

    async def stream(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        call = Call(self._method, request)
        started, span = observe_start(call, context)
        try:
            await self._admit(call, context)
            async for message in self._inner(call.request, context):  # type: ignore[attr-defined]
                yield message
            call.code = "OK"
        except Rejection as rej:
            await self._refuse(call, context, rej)
        except asyncio.CancelledError:
            call.code = "CANCELLED"
            raise
        finally:
            observe_end(call, started, span)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Puts every unary method except health and reflection behind its `GuardedMethod`.

    The guarded handler is built once per method and cached: the key is read from each call's
    metadata inside it, so nothing but the call's own record is allocated per call.
    """

    def __init__(self, resolver: KeyResolver, permissions: Mapping[str, frozenset[str]],
                 audit: AuditWriter | None = None, refusals: RefusalCounter | None = None,
                 rate_limit: KeyRateLimit | None = None) -> None:
        self._resolver = resolver
        self._permissions = permissions
        self._audit = CallAudit(audit, refusals)
        self._rate_limit = rate_limit
        self._guarded: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method  # type: ignore[attr-defined]
        if handler is None or method.startswith(UNAUTHENTICATED_PREFIXES):
            return handler
        if handler.unary_unary is None and handler.unary_stream is None:
            raise RuntimeError(f"{method}: client-streaming methods have no guard")  # never served unguarded
        cached = self._guarded.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        guarded = self._guard(method, handler)
        self._guarded[method] = (handler, guarded)
        return guarded

    def _guard(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.unary_stream is not None:
            streamed = GuardedStream(method, handler.unary_stream, self._resolver, self._permissions.get(method),
                                     self._audit, self._rate_limit)
            return grpc.unary_stream_rpc_method_handler(
                streamed.stream,
                request_deserializer=tolerant(handler.request_deserializer),
                response_serializer=passing_bytes(handler.response_serializer),
            )
        guard = GuardedMethod(method, handler.unary_unary, self._resolver, self._permissions.get(method), self._audit,
                              self._rate_limit)
        return grpc.unary_unary_rpc_method_handler(  # a bound coroutine method: grpc awaits it on the loop
            guard.run,
            request_deserializer=tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
