"""Container entrypoint: `entrypoint.py PROCESS [ARGS...]` runs one process of the credits engine.

    ledger      the ledger gRPC server             (listens on CREDITS_LEDGER_ADDR)
    invoice     the invoice gRPC server            (listens on CREDITS_INVOICE_ADDR)
    billing     the billing front door gRPC server (listens on CREDITS_BILLING_ADDR)
    worker      the Temporal worker + schedules    (dials CREDITS_LEDGER_ADDR / CREDITS_INVOICE_ADDR)
    portal      the customer portal (HTTP)         (listens on CREDITS_PORTAL_ADDR; dials the ledger and invoice)
    migrate     `creditctl migrate` on both service databases, then exit
    creditctl   any creditctl command, e.g. `creditctl tenants create acme`, `creditctl ledger verify`
    healthcheck ADDR [SERVICE] [TLS_NAME]  grpc.health.v1 Check against ADDR, TLS when the pod serves TLS; exit 0
                iff SERVING (the Kubernetes probes and compose)

Why a shim and not `python -m ...` everywhere: the coordinator has no `main()` of its own yet
(`creditctl up` wires the front door and the worker inside one process), so `billing` and `worker`
are wired here from the same public functions `stack/launcher.py` uses. Unlike the
stack and the stock `serve()` functions, this entrypoint never falls back to the embedded Postgres
or a Temporal dev server: a DSN or address left empty is a start-up error, not a silent local
database inside the container. SIGTERM stops the gRPC servers gracefully (Kubernetes sends it).

Only settings that exist in `service_runtime.settings` (every CREDITS_* variable is declared and
checked there) are used; nothing new is invented.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("credits.entrypoint")

GRACE_S = 10.0  # gRPC drain on SIGTERM; keep below terminationGracePeriodSeconds minus preStop


class ConfigError(SystemExit):
    def __init__(self, message: str) -> None:
        super().__init__(f"configuration error: {message}")


def _require(name: str, value: str) -> str:
    if not value:
        raise ConfigError(f"CREDITS_{name} must be set (the container never starts an embedded fallback)")
    return value


async def _until_sigterm() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("signal received, stopping")


async def _serve(server: Any, pool: Any, what: str, port: int) -> None:
    from service_runtime import metrics

    metrics_port = metrics.start_endpoint()  # CREDITS_METRICS_ADDR
    log.info("%s listening on port %d (metrics: %s)", what, port, metrics_port)
    try:
        await _until_sigterm()
    finally:
        await server.stop(GRACE_S)
        await pool.close()


async def run_ledger() -> None:
    from finance.storage.projector import BackgroundProjector
    from ledger_service.server import create_ledger_server, start_webhook_delivery
    from service_runtime.settings import Settings

    settings = Settings.from_env()
    dsn = _require("LEDGER_DSN", settings.ledger_dsn)
    server, port, pool = await create_ledger_server(dsn, settings.ledger_addr, settings)  # migrates first
    delivery = await start_webhook_delivery(dsn, settings)  # the alert outbox -> webhooks (owner DSN)
    books = await BackgroundProjector.start(dsn)  # the finance books follow the journal
    try:
        await _serve(server, pool, "ledger", port)
    finally:
        await books.stop()
        await delivery.stop()


async def run_invoice() -> None:
    from invoice_service.server import create_invoice_server
    from service_runtime.settings import Settings

    settings = Settings.from_env()
    dsn = _require("INVOICE_DSN", settings.invoice_dsn)
    server, port, pool = await create_invoice_server(dsn, settings.invoice_addr, settings)  # migrates first
    await _serve(server, pool, "invoice", port)


async def _temporal_client(settings: Any) -> Any:
    from coordinator.worker import temporal_runtime
    from service_runtime.temporal_client import connect_temporal

    addr = _require("TEMPORAL_ADDR", settings.temporal_addr)
    # CREDITS_TEMPORAL_METRICS_ADDR: the SDK's worker metrics
    return await connect_temporal(addr, settings=settings, runtime=temporal_runtime())


async def run_billing() -> None:
    from coordinator.front_door import create_front_door
    from service_runtime.settings import Settings

    settings = Settings.from_env()
    key_dsn = _require("LEDGER_DSN", settings.ledger_dsn)  # API keys are resolved against the ledger DB
    client = await _temporal_client(settings)
    # The ledger address: CreateAllowance reads the unit's scale and checks the account there.
    # As `creditctl up` wires it: the invoice and ledger addresses (up-front checks of an invoice, a unit,
    # an account) and the Temporal UI (each operation's link; CREDITS_TEMPORAL_UI_URL, empty: none).
    server, port, pool = await create_front_door(client, key_dsn, settings.task_queue, settings.billing_addr,
                                                 settings.temporal_ui_url, settings.invoice_addr,
                                                 settings.ledger_addr)
    await _serve(server, pool, "billing front door", port)


def worker_key_store(settings: Any, coordinator_keys: str) -> Any:
    """Static keys when CREDITS_COORDINATOR_KEYS is given, otherwise minting into both databases."""
    import json

    from coordinator.keys import MintingKeyStore, StaticKeyStore, key_ttl_from_env

    if coordinator_keys:
        keys = json.loads(coordinator_keys)
        if not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values()):
            raise ConfigError("CREDITS_COORDINATOR_KEYS must be a JSON object {tenant_id: api_key}")
        return StaticKeyStore(keys)
    if not settings.ledger_dsn or not settings.invoice_dsn:
        raise ConfigError("the worker needs CREDITS_COORDINATOR_KEYS, or both CREDITS_LEDGER_DSN and "
                          "CREDITS_INVOICE_DSN to mint its own operator keys")
    try:
        ttl = key_ttl_from_env()  # CREDITS_COORDINATOR_KEY_TTL_S, read by coordinator/keys.py
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return MintingKeyStore([settings.ledger_dsn, settings.invoice_dsn], ttl)


async def run_worker() -> None:
    from coordinator import search_attributes as sa
    from coordinator.schedules import ensure_schedules
    from coordinator.worker import WorkerConfig, running_worker
    from service_runtime.settings import Settings

    settings = Settings.from_env()
    keys = worker_key_store(settings, settings.coordinator_keys)
    client = await _temporal_client(settings)
    added = await sa.register(client)  # idempotent; needs operator access to the namespace
    if added:
        log.info("registered search attributes %s", ", ".join(added))
    config = WorkerConfig(settings.ledger_addr, settings.invoice_addr, settings.task_queue)
    from service_runtime import metrics

    metrics_port = metrics.start_endpoint()  # CREDITS_METRICS_ADDR, as the servers
    try:
        async with running_worker(client, config, keys):
            created = await ensure_schedules(client, settings.task_queue)  # idempotent
            log.info("worker polling task queue %s (schedules created: %s; metrics: %s)", settings.task_queue,
                     created or "none", metrics_port)
            await _until_sigterm()
    finally:
        await keys.close()  # revokes the keys a MintingKeyStore minted


async def run_portal() -> None:
    """The customer portal: an ASGI app on uvicorn, a gRPC client of the ledger and invoice services (never
    their databases); sessions are verified with CREDITS_PORTAL_SECRET, the same secret the services hold."""
    import uvicorn

    from portal.app import create_app
    from service_runtime import metrics
    from service_runtime.settings import Settings

    settings = Settings.from_env()
    _require("PORTAL_SECRET", settings.portal_secret)
    host, _, port = settings.portal_addr.rpartition(":")
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=host or "0.0.0.0", port=int(port),
                                           log_level="warning", proxy_headers=True,
                                           forwarded_allow_ips="*"))  # only the ingress reaches it (NetworkPolicy)
    metrics_port = metrics.start_endpoint()  # CREDITS_METRICS_ADDR, as the servers
    log.info("portal listening on %s (metrics: %s)", settings.portal_addr, metrics_port)
    await server.serve()  # uvicorn stops gracefully on SIGTERM (Kubernetes sends it)


# creditctl commands that resolve both databases (an empty DSN would mean the embedded Postgres).
DATABASE_COMMANDS = frozenset({"migrate", "tenants", "ledger"})


def run_creditctl(args: list[str]) -> int:
    from creditctl.main import main
    from service_runtime.settings import Settings

    if args and args[0] in DATABASE_COMMANDS:
        settings = Settings.from_env()
        _require("LEDGER_DSN", settings.ledger_dsn)
        _require("INVOICE_DSN", settings.invoice_dsn)
    return main(args)


def run_migrate(args: list[str]) -> int:
    return run_creditctl(["migrate", *args])


def healthcheck(addr: str, service: str = "", tls_name: str = "", timeout_s: float = 3.0) -> int:
    """grpc.health.v1 Check of `service` ("" = overall, "liveness") at `addr`; exit 0 iff SERVING. Dials
    with TLS when this pod's server serves TLS (CREDITS_TLS_*: a kubelet gRPC probe cannot), checking the
    certificate against `tls_name` (the name clients dial, e.g. the Service's DNS name) rather than the
    loopback address, so the same probe works with TLS on or off."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from service_runtime.tls import TlsSettings

    creds = TlsSettings.from_env().probe_credentials()
    options = [("grpc.ssl_target_name_override", tls_name)] if tls_name else []
    channel = grpc.secure_channel(addr, creds, options) if creds is not None else grpc.insecure_channel(addr)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                              timeout=timeout_s)
        except grpc.RpcError as err:
            print(f"{addr}: {err.code().name}", file=sys.stderr)  # type: ignore[attr-defined]
            return 1
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


SERVERS: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
    "ledger": run_ledger,
    "invoice": run_invoice,
    "billing": run_billing,
    "worker": run_worker,
    "portal": run_portal,
}
COMMANDS = (*SERVERS, "migrate", "creditctl", "healthcheck")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        return 2
    process, rest = argv[0], argv[1:]
    if process == "healthcheck":
        if len(rest) not in (1, 2, 3):
            print("usage: healthcheck HOST:PORT [SERVICE] [TLS_NAME]", file=sys.stderr)
            return 2
        return healthcheck(*rest)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if process in SERVERS:
        from service_runtime.logs import configure_logging
        from service_runtime.settings import settings_or_exit

        # Every CREDITS_* value checked before anything starts: a bad one is one line naming it, exit 2.
        configure_logging("text", settings_or_exit())
    if process == "migrate":
        return run_migrate(rest)
    if process == "creditctl":
        return run_creditctl(rest)
    from service_runtime.ports import port_in_use_is_one_line

    with port_in_use_is_one_line():
        asyncio.run(SERVERS[process]())
    return 0


if __name__ == "__main__":
    sys.exit(main())
