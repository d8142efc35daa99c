"""The coordinator worker: workflows plus activity classes holding channels to the two services.

`python -m coordinator.worker` runs one worker as its own OS process, configured from the
environment:

  CREDITS_TEMPORAL_ADDR, CREDITS_TEMPORAL_NAMESPACE   the Temporal frontend
  CREDITS_LEDGER_ADDR, CREDITS_INVOICE_ADDR           the two participants
  CREDITS_TASK_QUEUE                                  the task queue to poll
  CREDITS_COORDINATOR_KEYS                            {"tenant": "api key"} (StaticKeyStore), or else
  CREDITS_LEDGER_DSN + CREDITS_INVOICE_DSN            mint operator keys (MintingKeyStore), revoked at shutdown
  CREDITS_COORDINATOR_KEY_TTL_S                       minted keys' lifetime in seconds (default 86400)
  CREDITS_WORKER_MAX_ACTIVITIES, CREDITS_WORKER_MAX_WORKFLOW_TASKS, CREDITS_WORKER_POLLERS  tuning
  CREDITS_METRICS_ADDR                                Prometheus endpoint (saga outcomes, service_runtime.metrics)
  CREDITS_TEMPORAL_METRICS_ADDR                       Temporal SDK worker metrics (Prometheus, a separate port)
  CREDITS_OTLP_ENDPOINT, CREDITS_TRACE_EXPORTER       traces (service_runtime.tracing; off by default)

Every worker counts finished sagas in `credits_saga_outcomes_total{saga, outcome}` (a workflow
interceptor, so the workflows themselves stay free of metrics code); with tracing on, workflows
started by a traced client (the front door) and their activities report spans, and the channels to
the services carry the trace context.

It prints "worker ready <task queue>" once connected and runs until SIGTERM/SIGINT; uvloop is used
when installed.

A worker built around this one (the proving harness's: fault injection, benchmark workflows) passes
`WorkerExtensions` to `running_worker` / `serve` / `main`; the production worker passes none.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
from temporalio import workflow
from temporalio.client import Client
from temporalio.exceptions import FailureError
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import (
    ExecuteWorkflowInput,
    Interceptor,
    Worker,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from coordinator.activities import CoordinatorActivities, InvoiceActivities, LedgerActivities
from coordinator.keys import KeyStore
from coordinator.search_attributes import OUTCOME, CreditsOutcome
from coordinator.workflows import SAGA_FINISHED, WORKFLOWS, saga_finished
from service_runtime import metrics, tracing
from service_runtime.settings import Settings
from service_runtime.temporal_client import connect_temporal, core_logging
from service_runtime.tls import open_channel

log = logging.getLogger(__name__)

# A participant that restarts is reachable again within a second: gRPC's default reconnect backoff
# (1 s growing to 120 s) would keep a recovered service dark for the worker for minutes.
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 1000)]


@dataclass
class WorkerConfig:
    ledger_addr: str
    invoice_addr: str
    task_queue: str
    max_concurrent_activities: int = 200
    max_concurrent_workflow_tasks: int = 200
    # Concurrent long polls per kind (workflow tasks, activity tasks). 10 rather than the SDK's 5: with
    # tens of sagas in flight, a task more often finds a poller waiting (matched at once, not queued
    # in Temporal), which took `bench saga` from 15.2 to 15.6-16.1 finalized invoices/s, p99 3.35 s
    # to 2.97-3.06 s.
    pollers: int = 10


@dataclass(frozen=True)
class WorkerExtensions:
    """What a worker built around the coordinator's adds: client interceptors on its channels to the
    ledger and the invoice service (after the tracing one), and workflows and activities of its own."""

    channel_interceptors: Sequence[grpc.aio.ClientInterceptor] = ()
    workflows: Sequence[type] = ()
    activities: Sequence[Callable[..., Any]] = ()


NO_EXTENSIONS = WorkerExtensions()


def activity_functions(ledger: LedgerActivities, invoice: InvoiceActivities,
                       coordinator: CoordinatorActivities) -> list[object]:
    return [
        ledger.get_lot_boundaries, ledger.reserve_credits, ledger.reserve_units, ledger.reserve_converted,
        ledger.commit_hold, ledger.release_hold, ledger.reverse_hold, ledger.list_holds, ledger.expire_lots,
        ledger.grant_credits, ledger.record_settlements, ledger.release_expired_holds,
        invoice.get_invoice, invoice.split_draft, invoice.prepare_finalize, invoice.commit_finalize,
        invoice.abort_finalize, invoice.prepare_void, invoice.commit_void, invoice.abort_void,
        invoice.create_draft, invoice.list_due_subscriptions, invoice.list_due_periods, invoice.list_invoices,
        invoice.list_settlements,
        coordinator.list_tenants, coordinator.owner_decision,
    ]


# CreditsOutcome values a saga holds while it is still working: if it fails with one of these, the
# outcome counted is "failed" (or "cancelled"); a terminal value ("rejected", "compensated") stands.
_IN_PROGRESS = frozenset({"", CreditsOutcome.PREPARING, CreditsOutcome.COMMITTED, CreditsOutcome.COMMITTING,
                          CreditsOutcome.VOIDING, CreditsOutcome.RUNNING, CreditsOutcome.GRANTING})


def saga_kind(workflow_type: str) -> str:
    """FinalizeInvoice -> finalize-invoice (the operation kind the front door reports)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "-", workflow_type).lower()


def _saga_finished(workflow_type: str, outcome: str) -> None:  # runs outside the sandbox
    metrics.SAGA_OUTCOMES.labels(saga_kind(workflow_type), outcome).inc()


class _SagaOutcomeInbound(WorkflowInboundInterceptor):
    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        try:
            result = await super().execute_workflow(input)
        except (FailureError, asyncio.CancelledError) as err:  # these end the workflow (others retry the task)
            failed = "cancelled" if isinstance(err, asyncio.CancelledError) else "failed"
            _report(_outcome() if _outcome() not in _IN_PROGRESS else failed)
            raise
        # A saga's result names its outcome ("finalized"); the search attribute may still hold the
        # decision ("committed"), which the finalization saga does not upsert again.
        _report(str(getattr(result, "outcome", "") or _outcome() or "completed"))
        return result


def _outcome() -> str:
    return workflow.info().typed_search_attributes.get(OUTCOME) or ""


def _report(outcome: str) -> None:
    # A completed workflow replayed (to answer a query, or on another worker) finishes again in
    # replay: counted only when it really finishes. ContinueAsNew is not an ending and not caught.
    saga_finished(workflow.info().workflow_type, outcome)


class SagaOutcomeInterceptor(Interceptor):
    """Counts every workflow that finishes on this worker in SAGA_OUTCOMES(saga kind, outcome)."""

    def workflow_interceptor_class(self, input: WorkflowInterceptorClassInput) -> type[WorkflowInboundInterceptor]:
        input.unsafe_extern_functions[SAGA_FINISHED] = _saga_finished
        return _SagaOutcomeInbound


def worker_interceptors(client: Client) -> list[Interceptor]:
    """Saga outcome metrics, plus tracing when it is on (unless the client already traces)."""
    out: list[Interceptor] = [SagaOutcomeInterceptor()]
    if tracing.ACTIVE and not tracing.has_temporal_interceptor(client):
        out.append(tracing.temporal_interceptor())
    return out


def workflow_runner(workflows: Sequence[type]) -> SandboxedWorkflowRunner:
    """The SDK's sandbox with our own workflow modules passed through: by default the sandbox
    re-imports (re-compiles and re-executes) a workflow's module for every workflow run it starts, which
    cost about half of the worker's CPU per billing-cycle saga (`creditctl bench billing`, py-spy).
    These modules (and everything they import through `imports_passed_through`) keep no state at module
    level: constants, functions and the workflow classes, whose state lives in each run's instance. The
    sandbox's run-time restrictions still apply to the modules it imports itself; the replay tests replay
    recorded histories in the default sandbox (every module re-imported, every restriction on), where a
    non-deterministic call in a workflow fails them."""
    ours = sorted({cls.__module__.partition(".")[0] for cls in workflows} | {"coordinator", "service_runtime"})
    return SandboxedWorkflowRunner(restrictions=SandboxRestrictions.default.with_passthrough_modules(*ours))


_runtimes: dict[str, Runtime] = {}


def temporal_runtime(metrics_addr: str | None = None) -> Runtime | None:
    """A Temporal runtime serving the SDK's worker metrics (task latencies, slots, polls, sticky
    cache, activity/workflow outcomes) for Prometheus on `metrics_addr` (host:port), by default
    CREDITS_TEMPORAL_METRICS_ADDR; None (the default runtime, no endpoint) when unset.
    One runtime per address and process: pass it to `connect_temporal`. Either way the core's logs go
    through Python logging (`service_runtime.temporal_client`)."""
    addr = metrics_addr if metrics_addr is not None else Settings.from_env().temporal_metrics_addr
    if not addr:
        return None
    if addr not in _runtimes:
        _runtimes[addr] = Runtime(telemetry=TelemetryConfig(
            logging=core_logging(), metrics=PrometheusConfig(bind_address=addr, durations_as_seconds=True)))
    return _runtimes[addr]


@asynccontextmanager
async def running_worker(client: Client, config: WorkerConfig, keys: KeyStore,
                         extensions: WorkerExtensions = NO_EXTENSIONS) -> AsyncIterator[Worker]:
    """Runs a worker until the block exits; channels are opened once and closed after shutdown."""
    tracing.configure("credits-worker")  # from the environment, once per process; off by default
    # TLS/mTLS when configured (service_runtime.tls); with tracing on, every call to a service runs
    # in a client span carrying the trace context.
    ledger_channel = open_channel(config.ledger_addr, options=CHANNEL_OPTIONS,
                                  interceptors=[*tracing.client_interceptors(), *extensions.channel_interceptors])
    invoice_channel = open_channel(config.invoice_addr, options=CHANNEL_OPTIONS,
                                   interceptors=[*tracing.client_interceptors(), *extensions.channel_interceptors])
    activities = activity_functions(LedgerActivities(ledger_channel, keys), InvoiceActivities(invoice_channel, keys),
                                    CoordinatorActivities(client, keys))
    workflows = [*WORKFLOWS, *extensions.workflows]
    worker = Worker(
        client, task_queue=config.task_queue, workflows=workflows, workflow_runner=workflow_runner(workflows),
        activities=[*activities, *extensions.activities],  # type: ignore[list-item]
        max_concurrent_activities=config.max_concurrent_activities,
        max_concurrent_workflow_tasks=config.max_concurrent_workflow_tasks,
        max_concurrent_workflow_task_polls=config.pollers, max_concurrent_activity_task_polls=config.pollers,
        graceful_shutdown_timeout=timedelta(seconds=1),
        interceptors=worker_interceptors(client),
    )
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        if not task.done():
            await worker.shutdown()
        await asyncio.gather(task, return_exceptions=True)
        await ledger_channel.close()
        await invoice_channel.close()


def _keys_from_env() -> KeyStore:
    from coordinator.keys import MintingKeyStore, StaticKeyStore, key_ttl_from_env

    settings = Settings.from_env()
    if settings.coordinator_keys:
        return StaticKeyStore.from_env()
    dsns = [settings.ledger_dsn, settings.invoice_dsn]
    if not all(dsns):
        raise SystemExit("set CREDITS_COORDINATOR_KEYS, or CREDITS_LEDGER_DSN and CREDITS_INVOICE_DSN")
    try:
        ttl = key_ttl_from_env()
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    return MintingKeyStore(dsns, ttl)


async def serve(settings: Settings | None = None, extensions: WorkerExtensions = NO_EXTENSIONS) -> None:
    """Runs one worker until SIGTERM/SIGINT (see the module docstring for its settings)."""
    import signal

    settings = settings or Settings.from_env()
    if not settings.temporal_addr:
        raise SystemExit("CREDITS_TEMPORAL_ADDR is required")
    config = WorkerConfig(settings.ledger_addr, settings.invoice_addr, settings.task_queue,
                          max_concurrent_activities=settings.worker_max_activities,
                          max_concurrent_workflow_tasks=settings.worker_max_workflow_tasks,
                          pollers=settings.worker_pollers)
    metrics_port = metrics.start_endpoint()
    client = await connect_temporal(settings.temporal_addr, settings=settings, runtime=temporal_runtime())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    keys = _keys_from_env()
    try:
        async with running_worker(client, config, keys, extensions):
            print(f"worker ready {config.task_queue}", flush=True)
            if metrics_port:
                log.info("metrics on port %s", metrics_port)
            await stop.wait()
    finally:
        await keys.close()  # after the worker stopped: revokes the keys it minted
    tracing.shutdown()


def main(extensions: WorkerExtensions = NO_EXTENSIONS) -> None:
    from service_runtime.settings import settings_or_exit

    settings = settings_or_exit()  # a bad CREDITS_* value: one line naming it, exit 2
    logging.basicConfig(level=logging.WARNING)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(settings, extensions=extensions))
    else:
        uvloop.run(serve(settings, extensions=extensions))


if __name__ == "__main__":
    main()
