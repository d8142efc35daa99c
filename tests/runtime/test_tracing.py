"""Tracing in the shared server interceptor and on client channels, and its settings.

Off by default (no spans, no propagation headers, no channel interceptors); on, every RPC is a
SERVER span continuing the caller's W3C trace context, with method, tenant and status code.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from credits.ledger.v1 import ledger_pb2 as pb
from credits.ledger.v1 import ledger_pb2_grpc
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from service_runtime import tracing
from service_runtime.settings import SettingsError
from tests.ledger.conftest import Ledger

LEDGER = "credits.ledger.v1.LedgerService"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


async def test_server_spans_continue_the_callers_trace(ledger: Ledger, spans: InMemorySpanExporter) -> None:
    await ledger.account("t")
    spans.clear()
    md = [*ledger.md, ("traceparent", f"00-{TRACE_ID}-{PARENT}-01"), ("x-request-id", "req-1")]
    await ledger.stub.GetBalance(pb.GetBalanceRequest(account_id="t"), metadata=md)
    with pytest.raises(grpc.aio.AioRpcError):
        await ledger.stub.GetBalance(pb.GetBalanceRequest(account_id="nobody"), metadata=md)
    with pytest.raises(grpc.aio.AioRpcError):
        await ledger.stub.GetBalance(pb.GetBalanceRequest(account_id="t"), metadata=[("x-api-key", "wrong")])
    ok, missing, refused = spans.get_finished_spans()
    for span in (ok, missing, refused):
        assert (span.name, span.kind) == (f"{LEDGER}/GetBalance", SpanKind.SERVER)
    assert ok.parent is not None and format(ok.parent.span_id, "016x") == PARENT
    assert format(ok.context.trace_id, "032x") == TRACE_ID == format(missing.context.trace_id, "032x")
    assert ok.status.is_ok and dict(ok.attributes or {}) == {
        "rpc.system": "grpc", "rpc.service": LEDGER, "rpc.method": "GetBalance", "rpc.grpc.status_code": 0,
        "credits.code": "OK", "credits.tenant": "tenant-a", "credits.request_id": "req-1"}
    assert (missing.attributes or {})["credits.code"] == "NOT_FOUND" and not missing.status.is_ok
    # No trace context: a new trace. A refused key: no tenant, the status code says why.
    assert refused.parent is None and format(refused.context.trace_id, "032x") != TRACE_ID
    assert (refused.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert "credits.tenant" not in (refused.attributes or {})


async def test_client_channels_send_their_span_to_the_server(ledger: Ledger, spans: InMemorySpanExporter) -> None:
    await ledger.account("c")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{ledger.port}", interceptors=tracing.client_interceptors())
    try:
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        with tracing.tracer().start_as_current_span("caller") as caller:
            spans.clear()
            await stub.GetBalance(pb.GetBalanceRequest(account_id="c"), metadata=ledger.md)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.GetBalance(pb.GetBalanceRequest(account_id="nobody"), metadata=ledger.md)
    finally:
        await channel.close()
    for _ in range(100):  # a refused call's server span ends just after its status reached the client
        finished = {(s.kind, (s.attributes or {}).get("credits.code")): s for s in spans.get_finished_spans()
                    if s.name == f"{LEDGER}/GetBalance"}
        if len(finished) >= 4:
            break
        await asyncio.sleep(0.05)
    assert len(finished) == 4
    server_ok, client_ok = finished[SpanKind.SERVER, "OK"], finished[SpanKind.CLIENT, "OK"]
    server_missing, client_missing = finished[SpanKind.SERVER, "NOT_FOUND"], finished[SpanKind.CLIENT, "NOT_FOUND"]
    assert (client_ok.kind, server_ok.kind) == (SpanKind.CLIENT, SpanKind.SERVER)
    assert client_ok.parent is not None and client_ok.parent.span_id == caller.get_span_context().span_id
    assert server_ok.parent is not None and server_ok.parent.span_id == client_ok.context.span_id
    assert server_missing.parent is not None and server_missing.parent.span_id == client_missing.context.span_id
    assert (client_missing.attributes or {})["credits.code"] == "NOT_FOUND" and not client_missing.status.is_ok
    assert {s.context.trace_id for s in spans.get_finished_spans()} == {caller.get_span_context().trace_id}


async def test_off_by_default_nothing_is_added(ledger: Ledger) -> None:
    assert not tracing.ACTIVE
    assert tracing.client_interceptors() == [] and tracing.outgoing_metadata() == []
    await ledger.account("off")  # the server path with tracing off
    assert not tracing.configure("test")  # nothing in the environment asks for it


def test_exporter_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CREDITS_OTLP_ENDPOINT", "CREDITS_TRACE_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    assert tracing.exporter_from_env() is None
    monkeypatch.setenv("CREDITS_TRACE_EXPORTER", "console")
    assert isinstance(tracing.exporter_from_env(), ConsoleSpanExporter)
    monkeypatch.setenv("CREDITS_TRACE_EXPORTER", "otlp")
    with pytest.raises(SystemExit, match="CREDITS_OTLP_ENDPOINT"):
        tracing.exporter_from_env()
    monkeypatch.setenv("CREDITS_TRACE_EXPORTER", "jaeger")  # refused where every setting is checked
    with pytest.raises(SettingsError, match=r"CREDITS_TRACE_EXPORTER='jaeger': .*'otlp', 'console'"):
        tracing.exporter_from_env()
    monkeypatch.delenv("CREDITS_TRACE_EXPORTER")
    monkeypatch.setenv("CREDITS_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    otlp = pytest.importorskip("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
    exporter = tracing.exporter_from_env()
    assert isinstance(exporter, otlp.OTLPSpanExporter)
    exporter.shutdown()
    assert tracing.service_name_of("credits.ledger.v1.LedgerService") == "credits-ledger"
