"""Traces and metrics across the whole path: front door → Temporal → worker → ledger and invoice.

One finalization through the front door is one trace (front door, workflow, activities, both
services); after a saga, the Prometheus endpoint has its outcome and the RPC series, and the
Temporal runtime's endpoint has the worker's SDK metrics.
"""

from __future__ import annotations

import asyncio
import socket
import urllib.request

import grpc
import pytest
from credits.billing.v1 import billing_pb2 as bpb
from credits.billing.v1 import billing_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY
from temporalio.client import Client, WorkflowFailureError

from coordinator.keys import StaticKeyStore
from coordinator.worker import WorkerConfig, running_worker, saga_kind, temporal_runtime
from service_runtime import metrics, tracing
from service_runtime.temporal_server import TemporalDevServer
from stack.scenario import seed_customer
from tests.coordinator.conftest import TENANT, Stack

BILLING = "credits.billing.v1.BillingService"
LEDGER = "credits.ledger.v1.LedgerService"
INVOICE = "credits.invoice.v1.InvoiceService"


async def _finalize(billing: billing_pb2_grpc.BillingServiceStub, stack: Stack, invoice_id: str) -> bpb.Operation:
    op = await billing.FinalizeInvoice(bpb.FinalizeInvoiceRequest(invoice_id=invoice_id, wait=True, wait_timeout_s=60),
                                       metadata=stack.md)
    assert (op.status, op.outcome) == (bpb.COMPLETED, "finalized"), op
    return op


def _named(spans: list[ReadableSpan], name: str, kind: SpanKind | None = None) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name and (kind is None or s.kind == kind)]


async def _ended(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    """The spans named `name` once one has ended: a server span ends after its status reached the client,
    so a caller that saw the refusal may look a moment before the server's span is exported."""
    for _ in range(100):
        found = _named(list(spans.get_finished_spans()), name)
        if found:
            return found
        await asyncio.sleep(0.05)
    return []


async def test_one_finalization_through_the_front_door_is_one_trace(
        stack: Stack, spans: InMemorySpanExporter) -> None:
    invoice_id = await seed_customer(stack.services)
    async with stack.worker():
        async with stack.front_door() as billing:
            spans.clear()  # the seeding above made its own (unrelated) traces
            await _finalize(billing, stack, invoice_id)
    finished = list(spans.get_finished_spans())
    by_id = {s.context.span_id: s for s in finished}

    (front,) = _named(finished, f"{BILLING}/FinalizeInvoice", SpanKind.SERVER)
    assert front.parent is None  # the caller sent no trace context: the front door starts the trace
    assert front.attributes is not None
    assert (front.attributes["rpc.method"], front.attributes["credits.tenant"],
            front.attributes["rpc.grpc.status_code"]) == ("FinalizeInvoice", TENANT, 0)
    trace_id = front.context.trace_id
    assert {f"{s.name} ({s.kind.name})" for s in finished if s.context.trace_id != trace_id} == set()

    names = {s.name for s in finished}
    for expected in ("StartWorkflow:FinalizeInvoice", "RunWorkflow:FinalizeInvoice",
                     "RunActivity:ledger.reserve_credits", "RunActivity:ledger.commit_hold",
                     "RunActivity:invoice.prepare_finalize", "RunActivity:invoice.commit_finalize",
                     f"{LEDGER}/ReserveCredits", f"{LEDGER}/CommitHold",
                     f"{INVOICE}/GetInvoice", f"{INVOICE}/PrepareFinalize", f"{INVOICE}/CommitFinalize"):
        assert expected in names, (expected, sorted(names))

    def ancestors(span: ReadableSpan) -> list[str]:
        out = []
        while span.parent is not None and span.parent.span_id in by_id:
            span = by_id[span.parent.span_id]
            out.append(span.name)
        return out

    # The ledger's commit is reached through the worker's client span, the activity run, its scheduling
    # by the workflow, the workflow start and the front door's own span.
    (commit,) = _named(finished, f"{LEDGER}/CommitHold", SpanKind.SERVER)
    assert ancestors(commit) == [f"{LEDGER}/CommitHold", "RunActivity:ledger.commit_hold",
                                 "StartActivity:ledger.commit_hold", "StartWorkflow:FinalizeInvoice",
                                 f"{BILLING}/FinalizeInvoice"]
    (run,) = _named(finished, "RunWorkflow:FinalizeInvoice")
    assert ancestors(run) == ["StartWorkflow:FinalizeInvoice", f"{BILLING}/FinalizeInvoice"]
    assert commit.attributes is not None and commit.attributes["credits.tenant"] == TENANT
    # The front door's existence check with the invoice service is a child of the front door span.
    checks = [s for s in _named(finished, f"{INVOICE}/GetInvoice", SpanKind.SERVER)
              if s.parent is not None and s.parent.span_id == front.context.span_id]
    assert len(checks) == 1


async def test_rejections_are_error_spans_and_tracing_off_records_nothing(
        stack: Stack, spans: InMemorySpanExporter) -> None:
    async with stack.front_door() as billing:
        spans.clear()
        with pytest.raises(grpc.aio.AioRpcError):
            await billing.FinalizeInvoice(bpb.FinalizeInvoiceRequest(invoice_id="inv_nope"), metadata=stack.md)
        (front,) = await _ended(spans, f"{BILLING}/FinalizeInvoice")
        assert front.attributes is not None
        assert (front.attributes["credits.code"], front.attributes["rpc.grpc.status_code"]) == ("NOT_FOUND", 5)
        assert not front.status.is_ok
        (check,) = await _ended(spans, f"{INVOICE}/GetInvoice")
        assert check.context.trace_id == front.context.trace_id
        tracing.uninstall()
        spans.clear()
        with pytest.raises(grpc.aio.AioRpcError):
            await billing.FinalizeInvoice(bpb.FinalizeInvoiceRequest(invoice_id="inv_nope"), metadata=stack.md)
        assert spans.get_finished_spans() == ()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def _value(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module")
def metrics_port() -> int:
    port = metrics.start_endpoint("127.0.0.1:0")
    assert port
    return port


async def test_metrics_after_a_saga_have_its_outcome_the_rpcs_and_the_worker(
        stack: Stack, temporal_server: TemporalDevServer, metrics_port: int) -> None:
    temporal_port = _free_port()
    client = await Client.connect(temporal_server.address, runtime=temporal_runtime(f"127.0.0.1:{temporal_port}"))
    outcome = 'credits_saga_outcomes_total{outcome="finalized",saga="finalize-invoice"}'
    before = _value(await asyncio.to_thread(_scrape, metrics_port), outcome)
    invoice_id = await seed_customer(stack.services)
    config = WorkerConfig(stack.ledger_addr, stack.invoice_addr, stack.task_queue)
    async with running_worker(client, config, StaticKeyStore({TENANT: stack.coordinator_key})):
        async with stack.front_door(client) as billing:
            await _finalize(billing, stack, invoice_id)
            # Attaching to the finished saga replays it on the worker (for the progress query):
            # a replayed ending is not counted again.
            again = await billing.FinalizeInvoice(bpb.FinalizeInvoiceRequest(invoice_id=invoice_id, wait=True),
                                                  metadata=stack.md)
            assert again.status == bpb.COMPLETED
        text = await asyncio.to_thread(_scrape, metrics_port)
        temporal = await asyncio.to_thread(_scrape, temporal_port)
    assert _value(text, outcome) == before + 1
    assert _value(text, f'credits_rpc_total{{code="OK",method="FinalizeInvoice",service="{BILLING}"}}') >= 2
    assert _value(text, f'credits_rpc_total{{code="OK",method="ReserveCredits",service="{LEDGER}"}}') >= 1
    assert _value(text, f'credits_rpc_total{{code="OK",method="CommitFinalize",service="{INVOICE}"}}') >= 1
    queue = f'task_queue="{stack.task_queue}"'
    worker_lines = [line for line in temporal.splitlines() if queue in line and not line.startswith("#")]
    assert any(line.startswith("temporal_workflow_completed") for line in worker_lines), temporal[:3000]
    assert any(line.startswith("temporal_activity_execution_latency") for line in worker_lines), temporal[:3000]


async def test_a_failed_saga_is_counted_once_as_failed(stack: Stack) -> None:
    def failed() -> float:
        labels = {"saga": "finalize-invoice", "outcome": "failed"}
        return REGISTRY.get_sample_value("credits_saga_outcomes_total", labels) or 0.0

    before = failed()
    async with stack.worker():
        handle = await stack.start_finalize("inv_missing")  # the invoice service answers NOT_FOUND
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    assert failed() == before + 1
    assert saga_kind("CompensateOutage") == "compensate-outage"
