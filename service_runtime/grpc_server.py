"""gRPC server bootstrap: every service's server, behind the call guard, with health and reflection.

`create_server` is what every service calls, so tests start the real server on port 0.
Each call passes `service_runtime.call_guard` (auth, permissions, audit, metrics, status mapping).
Servicer methods read `current_caller()` and raise `Rejection`; they never touch status codes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import asyncpg
import grpc
from credits.audit.v1 import audit_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service_runtime import tracing
from service_runtime.api_keys import KeyResolver
from service_runtime.audit import AUDIT_PERMISSIONS, AUDIT_SERVICE, AuditServicer, AuditWriter
from service_runtime.call_context import current_caller as current_caller  # re-exported: servicers import it here
from service_runtime.call_guard import AuthInterceptor as AuthInterceptor
from service_runtime.ports import bindable, host_port, in_use, setting_for_service
from service_runtime.rate_limits import rate_limit_from
from service_runtime.readiness import LIVENESS, DatabaseWatch, WatchedServer
from service_runtime.refusal_counts import RefusalCounter
from service_runtime.settings import Settings
from service_runtime.tls import TlsSettings

ServicerAdder = Callable[[Any, grpc.aio.Server], None]
SERVER_OPTIONS = [
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


async def create_server(
    services: Iterable[tuple[ServicerAdder, Any, str]],
    resolver: KeyResolver,
    permissions: Mapping[str, frozenset[str]],
    address: str = "127.0.0.1:0",
    tls: TlsSettings | None = None,
    audit_pool: asyncpg.Pool | None = None,
    health_dsn: str = "",
    settings: Settings | None = None,
    keys_dsn: str = "",
) -> tuple[grpc.aio.Server, int]:
    """Builds and starts a server for `services` = [(add_fn, servicer, full service name)].

    Listens with TLS (mTLS when a CA is set) if `tls` (default: from the environment) has a
    certificate; then there is no plaintext port at all. Returns the server and the bound port.
    With `health_dsn`, health follows that database (service_runtime.readiness), checked every
    `settings.health_interval_s`; `server.stop()` ends the check. The resolver hears key changes
    (revocations) from its database (`keys_dsn`, default `health_dsn`: a connection of its own;
    without either, one held from its pool) until `server.stop()`; refusals of callers that proved no key
    are counted per `settings.refusal_window_s`; `settings.key_rate_limit` limits each key.
    """
    settings = settings or Settings.from_env()
    credentials = (tls if tls is not None else TlsSettings.from_env()).server_credentials()
    services = list(services)
    if services:  # tracing from the environment (CREDITS_OTLP_ENDPOINT ...), once per process; off by default
        tracing.configure(tracing.service_name_of(services[0][2]))
    # Every server keeps an audit trail in the database its keys live in, and can be queried for it.
    pool = audit_pool or resolver.pool
    permissions = {**permissions, **AUDIT_PERMISSIONS}
    services = [*services, (audit_pb2_grpc.add_AuditServiceServicer_to_server, AuditServicer(pool), AUDIT_SERVICE)]
    rate_limit = rate_limit_from(settings.key_rate_limit, settings.key_rate_burst, settings.key_rate_exempt_roles)
    guard = AuthInterceptor(resolver, permissions, AuditWriter(pool), RefusalCounter(pool, settings.refusal_window_s),
                            rate_limit)
    server = grpc.aio.server(interceptors=[guard], options=SERVER_OPTIONS)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [health.SERVICE_NAME, reflection.SERVICE_NAME]
    for add, servicer, name in services:
        add(servicer, server)
        names.append(name)
    reflection.enable_server_reflection(names, server)
    setting = setting_for_service(services[0][2]) or "the address"
    host, wanted = host_port(address)
    if wanted and not bindable(host, wanted):  # one line naming the port and its setting, before gRPC logs its own
        raise in_use(wanted, setting, address)
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError:  # grpc: "Failed to bind to address"
        port = 0
    if port == 0:
        raise OSError(f"could not bind {address} ({setting})")
    await resolver.watch(keys_dsn or health_dsn)  # before serving: a revocation is heard from the first call
    await server.start()
    for name in [*names, "", LIVENESS]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    watch = _watch_database(health_dsn, health_servicer, names, services[0][2], settings) if health_dsn else None
    return WatchedServer(server, health_servicer, watch, resolver), port


def _watch_database(dsn: str, health_servicer: health.aio.HealthServicer, names: list[str], service: str,
                    settings: Settings) -> asyncio.Task[None]:
    """Health that follows the database `dsn`, checked every `settings.health_interval_s`."""
    label = tracing.service_name_of(service)
    checker = DatabaseWatch(dsn, health_servicer, [*names, ""], label, settings.health_interval_s,
                            settings.health_timeout_s)
    return asyncio.create_task(checker.run(), name=f"database health of {label}")
