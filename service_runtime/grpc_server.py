"""gRPC server bootstrap: API-key auth, permission check, rejection mapping, health, reflection.

`create_server` is what every service calls, so tests start the real server on port 0.
Servicer methods read `current_caller()` and raise `Rejection`; they never touch status codes.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import asyncpg
import grpc
from credits.audit.v1 import audit_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service_runtime import logs, row_security, tracing
from service_runtime.api_keys import Caller, KeyResolver
from service_runtime.audit import (
    AUDIT_PERMISSIONS,
    AUDIT_SERVICE,
    AuditRecord,
    AuditServicer,
    AuditWriter,
    PendingAudit,
    clean,
    describe,
    is_mutation,
    pending_audit,
)
from service_runtime.metrics import observe_rpc
from service_runtime.readiness import LIVENESS, DatabaseWatch, WatchedServer
from service_runtime.rejections import Reason, Rejection
from service_runtime.settings import Settings
from service_runtime.tls import TlsSettings

log = logging.getLogger(__name__)

_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("caller")

_UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


def current_caller() -> Caller:
    return _caller.get()


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Resolves x-api-key to a Caller, checks the role against `permissions`, maps Rejections.

    The guarded handler is built once per method and cached: the key is read from each call's
    metadata inside it, so nothing is allocated per call on the hot path.
    """

    def __init__(self, resolver: KeyResolver, permissions: Mapping[str, frozenset[str]],
                 audit: AuditWriter | None = None) -> None:
        self._resolver = resolver
        self._permissions = permissions
        self._audit = audit
        self._guarded: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method  # type: ignore[attr-defined]
        if handler is None or method.startswith(_UNAUTHENTICATED_PREFIXES) or handler.unary_unary is None:
            return handler
        cached = self._guarded.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        guarded = self._guard(method, handler)
        self._guarded[method] = (handler, guarded)
        return guarded

    def _guard(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        allowed = self._permissions.get(method)
        inner = handler.unary_unary
        resolver = self._resolver
        audit = self._audit

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code = "INTERNAL"
            presented = request_id = None
            caller: Caller | None = None
            detail = ""
            # Tracing is off unless configured: then this one attribute check is all it costs.
            traced = tracing.start_server_span(method, context.invocation_metadata()) if tracing.ACTIVE else None
            try:
                for key, value in context.invocation_metadata() or ():
                    if key == "x-api-key":
                        presented = value if isinstance(value, str) else None
                    elif key == "x-request-id" and isinstance(value, str):
                        request_id = value[:128]
                logs.request_id.set(request_id or "")
                caller = await resolver.resolve(presented)
                logs.tenant_id.set(caller.tenant_id)
                row_security.current_tenant.set(caller.tenant_id)
                if allowed is None or caller.role not in allowed:
                    raise Rejection(Reason.FORBIDDEN, f"role {caller.role!r} may not call {method}")
                if request is _MALFORMED:
                    raise Rejection(Reason.INVALID, "is not a valid protobuf message for this method", "request")
                _caller.set(caller)
                pending = None
                if audit is not None and is_mutation(request):
                    pending = PendingAudit(_audit_record(method, request, caller, presented, request_id, "OK", ""))
                    pending_audit.set(pending)
                response = await inner(request, context)
                code = "OK"
                if audit is not None and pending is not None and not pending.claimed:
                    await audit.record(pending.record)
                return response
            except Rejection as rej:
                code, detail = rej.status.name, rej.message
                if audit is not None:  # every refused attempt leaves a record, and nothing else
                    try:
                        await audit.record(_audit_record(method, request, caller, presented, request_id, code,
                                                         rej.message))
                    except Exception:  # the refusal stands even if its record could not be written
                        log.exception("audit record of a refused %s failed", method)
                await context.abort(rej.status, rej.message)
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            finally:
                observe_rpc(method, code, time.perf_counter() - started)
                if traced is not None:
                    tracing.end_server_span(*traced, code, caller.tenant_id if caller else "", request_id, detail)

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )


_MALFORMED = object()  # a request whose bytes did not parse: answered INVALID_ARGUMENT, not UNKNOWN


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:
            return _MALFORMED

    return parse


def _audit_record(method: str, request: Any, caller: Caller | None, presented: str | None, request_id: str | None,
                  code: str, detail: str) -> AuditRecord:
    subjects, reason = describe(request)
    key_id = caller.key_id if caller else _key_id_of(presented)
    return AuditRecord(
        tenant_id=caller.tenant_id if caller else "", key_id=key_id, role=caller.role if caller else "",
        method=method, code=code, detail=clean(detail, 1000), reason=reason, subjects=subjects,
        request_id=clean(request_id, 128) if request_id else f"{_PROCESS_ID}-{next(_REQUEST_SEQ)}",
    )


# Request ids for calls that bring none: unique per process start, cheap (no uuid per call).
_PROCESS_ID = uuid.uuid4().hex[:12]
_REQUEST_SEQ = itertools.count(1)


def _key_id_of(presented: str | None) -> str:
    """The key id part of a presented key (never the secret), for auditing refused keys."""
    if presented and presented.startswith("ck_") and "." in presented:
        key_id = presented[3:].split(".", 1)[0]
        if key_id.isalnum() and len(key_id) <= 32:
            return key_id
    return ""


ServicerAdder = Callable[[Any, grpc.aio.Server], None]


async def create_server(
    services: Iterable[tuple[ServicerAdder, Any, str]],
    resolver: KeyResolver,
    permissions: Mapping[str, frozenset[str]],
    address: str = "127.0.0.1:0",
    tls: TlsSettings | None = None,
    audit_pool: asyncpg.Pool | None = None,
    health_dsn: str = "",
    settings: Settings | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Builds and starts a server for `services` = [(add_fn, servicer, full service name)].

    Listens with TLS (mTLS when a CA is set) if `tls` (default: from the environment) has a
    certificate; then there is no plaintext port at all. Returns the server and the bound port.
    With `health_dsn`, health follows that database (service_runtime.readiness), checked every
    `settings.health_interval_s`; `server.stop()` ends the check.
    """
    credentials = (tls if tls is not None else TlsSettings.from_env()).server_credentials()
    services = list(services)
    if services:  # tracing from the environment (CREDITS_OTLP_ENDPOINT ...), once per process; off by default
        tracing.configure(tracing.service_name_of(services[0][2]))
    # Every server keeps an audit trail in the database its keys live in, and can be queried for it.
    pool = audit_pool or resolver.pool
    permissions = {**permissions, **AUDIT_PERMISSIONS}
    services = [*services, (audit_pb2_grpc.add_AuditServiceServicer_to_server, AuditServicer(pool), AUDIT_SERVICE)]
    server = grpc.aio.server(
        interceptors=[AuthInterceptor(resolver, permissions, AuditWriter(pool))],
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ],
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [health.SERVICE_NAME, reflection.SERVICE_NAME]
    for add, servicer, name in services:
        add(servicer, server)
        names.append(name)
    reflection.enable_server_reflection(names, server)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    await server.start()
    for name in [*names, "", LIVENESS]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    watch = None
    if health_dsn:
        settings = settings or Settings.from_env()
        label = tracing.service_name_of(services[0][2])
        checker = DatabaseWatch(health_dsn, health_servicer, [*names, ""], label,
                                settings.health_interval_s, settings.health_timeout_s)
        watch = asyncio.create_task(checker.run(), name=f"database health of {label}")
    return WatchedServer(server, health_servicer, watch), port
