"""Prometheus metrics: RPC latency and outcomes per method (recorded by the server interceptor),
plus gauges a service refreshes from its database (and whether that database is up), served on a
per-process HTTP endpoint.

CREDITS_METRICS_ADDR=127.0.0.1:9464 turns the endpoint on for a process (empty = off).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

RPC_SECONDS = Histogram(
    "credits_rpc_duration_seconds", "Server-side RPC latency", ["service", "method", "code"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RPC_TOTAL = Counter("credits_rpc_total", "RPCs handled, by status code", ["service", "method", "code"])
HOLDS_PENDING = Gauge("credits_ledger_holds_pending", "Holds reserved and not yet resolved")
LOTS_EXPIRING = Gauge("credits_ledger_lots_expiring_24h", "Lots with credit left whose window ends within 24 h")
COMMIT_WINDOW = Gauge("credits_ledger_commit_window_seconds",
                      "The group commit window the ledger's writer uses now (0: none; storage/commit_window.py)")
INVOICES_PREPARED = Gauge("credits_invoice_prepared", "Invoices PREPARED or VOID_PENDING (waiting on a saga)")
DATABASE_UP = Gauge("credits_database_up", "1 while the server's database answers its health check, else 0",
                    ["server"])
SAGA_OUTCOMES = Counter("credits_saga_outcomes_total", "Saga workflows finished, by kind and outcome",
                        ["saga", "outcome"])


_SERIES: dict[tuple[str, str], tuple[Any, Any]] = {}


def observe_rpc(full_method: str, code: str, seconds: float) -> None:
    series = _SERIES.get((full_method, code))
    if series is None:  # label lookups are slow; keep the children per (method, code)
        _, _, rest = full_method.partition("/")
        service, _, method = rest.partition("/")
        series = _SERIES[(full_method, code)] = (RPC_SECONDS.labels(service, method, code),
                                                 RPC_TOTAL.labels(service, method, code))
    series[0].observe(seconds)
    series[1].inc()


def start_endpoint(addr: str | None = None) -> int | None:
    """Serves /metrics on `addr` (host:port; port 0 picks one); returns the port, or None if off."""
    if addr is None:
        from service_runtime.settings import Settings

        addr = Settings.from_env().metrics_addr  # CREDITS_METRICS_ADDR
    if not addr:
        return None
    host, _, port = addr.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host or "127.0.0.1")
    return int(server.server_port)


async def refresh_forever(refresh: Callable[[], Awaitable[None]], every_s: float = 15.0) -> None:
    """Runs `refresh` (which sets gauges from the database) until cancelled; errors are logged."""
    while True:
        try:
            await refresh()
        except Exception:
            log.exception("metrics refresh failed")
        await asyncio.sleep(every_s)
