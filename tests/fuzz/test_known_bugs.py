"""Minimal reproductions of what the fuzzers found, one per bug: fixed ones kept as regression tests, open
ones (in code the fuzz suite does not own) as strict xfails that flip when fixed."""

from __future__ import annotations

import grpc
import pytest
from credits.audit.v1 import audit_pb2 as apb
from credits.billing.v1 import billing_pb2 as bpb
from credits.invoice.v1 import invoice_pb2 as ipb
from credits.ledger.v1 import ledger_pb2 as lpb
from google.protobuf.timestamp_pb2 import Timestamp

from tests.fuzz.conftest import Running, Seeded
from tests.fuzz.generators import _is_repeated
from tests.fuzz.harness import AUDIT_TABLES, DOCUMENTED
from tests.tenancy import add_tenant_key

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _method(service: object, name: str) -> object:
    return service.methods_by_name[name]  # type: ignore[attr-defined]


async def _refused_cleanly(running: Running, name: str, request: object, key: str) -> None:
    svc = running.service
    before = await svc.snapshot.take()
    out = await svc.call(_method(svc.descriptor, name), request, key)  # type: ignore[arg-type]
    svc.invalidate()
    assert out.code in DOCUMENTED and out.code != grpc.StatusCode.OK, (out.code, out.details)
    after = await svc.snapshot.take()
    changed = {t for t in after if t not in AUDIT_TABLES and after[t] != before.get(t)}
    assert not changed, f"refused ({out.code.name}: {out.details}) but wrote {changed}"


@pytest.mark.parametrize("kind", ["ledger", "invoice"])
async def test_nul_byte_in_a_refused_request_is_invalid_argument(kind: str, ledger_server: Running,
                                                                  invoice_server: Running) -> None:
    running = ledger_server if kind == "ledger" else invoice_server
    key = await add_tenant_key(running.dsn, f"nul-{kind}", "admin")
    request, name = ((lpb.GetAccountRequest(account_id="a\x00b"), "GetAccount") if kind == "ledger"
                     else (ipb.GetCustomerRequest(customer_id="a\x00b"), "GetCustomer"))
    await _refused_cleanly(running, name, request, key)


async def test_rejected_grant_does_not_materialise_a_builtin_unit(ledger_server: Running) -> None:
    key = await add_tenant_key(ledger_server.dsn, "units-side-effect", "admin")
    await _refused_cleanly(ledger_server, "GrantCredits", lpb.GrantCreditsRequest(
        idempotency_key="k", account_id="nobody", type=lpb.PURCHASED, unit="JPY", amount="not-a-number"), key)


@pytest.mark.parametrize("value", [99, -1])
async def test_unknown_aggregation_is_invalid_argument(value: int, invoice_server: Running) -> None:
    key = await add_tenant_key(invoice_server.dsn, "agg", "admin")
    await _refused_cleanly(invoice_server, "CreateMeter", ipb.CreateMeterRequest(
        idempotency_key="k", meter_code="m", aggregation=value), key)


def _timestamp_rpcs() -> list[object]:
    """(RPC, field path) for every Timestamp reachable from an InvoiceService request (generic)."""
    out = []
    for method in ipb.DESCRIPTOR.services_by_name["InvoiceService"].methods:
        for fd in method.input_type.fields:
            if fd.message_type is not None and fd.message_type.full_name == "google.protobuf.Timestamp":
                out.append(pytest.param(method.name, fd.name, id=f"{method.name}.{fd.name}"))
            elif fd.message_type is not None:
                for sub in fd.message_type.fields:
                    if sub.message_type is not None and sub.message_type.full_name == "google.protobuf.Timestamp":
                        out.append(pytest.param(method.name, f"{fd.name}.{sub.name}",
                                                id=f"{method.name}.{fd.name}.{sub.name}"))
    return out


def _with_bad_nanos(method_name: str, field_path: str) -> object:
    method = ipb.DESCRIPTOR.services_by_name["InvoiceService"].methods_by_name[method_name]
    from google.protobuf import message_factory

    msg = message_factory.GetMessageClass(method.input_type)()
    bad = Timestamp(seconds=1_785_542_400, nanos=-1)
    target = msg
    *outer, last = field_path.split(".")
    for part in outer:
        fd = target.DESCRIPTOR.fields_by_name[part]
        target = getattr(target, part).add() if _is_repeated(fd) else getattr(target, part)
    fd = target.DESCRIPTOR.fields_by_name[last]
    if _is_repeated(fd):
        getattr(target, last).add().CopyFrom(bad)
    else:
        getattr(target, last).CopyFrom(bad)
    return msg


@pytest.mark.parametrize(("method_name", "field_path"), _timestamp_rpcs())
async def test_timestamp_nanos_out_of_range_is_invalid_argument(method_name: str, field_path: str,
                                                                 invoice_server: Running,
                                                                 request: pytest.FixtureRequest) -> None:
    key = await add_tenant_key(invoice_server.dsn, "nanos", "admin")
    svc = invoice_server.service
    out = await svc.call(_method(svc.descriptor, method_name), _with_bad_nanos(method_name, field_path), key)  # type: ignore
    svc.invalidate()
    assert out.code in DOCUMENTED, (out.code, out.details)


# --- bugs found by the front-door and audit fuzzers (fixed; kept as regression tests) ---

QUERY_AUDIT = apb.DESCRIPTOR.services_by_name["AuditService"].methods_by_name["QueryAudit"]
BILLING = bpb.DESCRIPTOR.services_by_name["BillingService"]


@pytest.mark.parametrize("kind", ["ledger", "invoice"])
@pytest.mark.parametrize("query", [apb.QueryAuditRequest(page_token="\u00b2"),
                                   apb.QueryAuditRequest(page_token=str(2**63)),
                                   apb.QueryAuditRequest(subject="account_id=a\x00b"),
                                   apb.QueryAuditRequest(method="Grant\x00")],
                         ids=["superscript-digit-token", "token-above-int64", "nul-subject", "nul-method"])
async def test_query_audit_bad_filters_are_invalid_argument(kind: str, query: apb.QueryAuditRequest,
                                                            ledger_server: Running, invoice_server: Running) -> None:
    running = ledger_server if kind == "ledger" else invoice_server
    key = await add_tenant_key(running.dsn, f"audit-{kind}", "admin")
    svc = running.service
    before = await svc.snapshot.take()
    out = await svc.call(QUERY_AUDIT, query, key)  # type: ignore[arg-type]
    svc.invalidate()
    after = await svc.snapshot.take()
    assert {t for t in after if t not in AUDIT_TABLES and after[t] != before.get(t)} == set()
    assert out.code == INVALID, (out.code, out.details)


@pytest.mark.parametrize(("rpc", "request_"), [
    ("RunBillingCycle", bpb.RunBillingCycleRequest(as_of=Timestamp(seconds=-62135596801))),
    ("RunBillingCycle", bpb.RunBillingCycleRequest(as_of=Timestamp(seconds=1_785_542_400, nanos=-1))),
    ("CompensateOutage", bpb.CompensateOutageRequest(incident_id="inc-ts", account_ids=["acct-1"], amount="5.00",
                                                     unit="USD", expires_at=Timestamp(seconds=2**62))),
], ids=["as_of-before-year-1", "as_of-negative-nanos", "expires_at-after-year-9999"])
async def test_front_door_bad_timestamps_are_invalid_argument(rpc: str, request_: object, billing: Seeded) -> None:
    out = await billing.service.call(BILLING.methods_by_name[rpc], request_, billing.a.key)  # type: ignore[arg-type]
    billing.service.invalidate()
    assert out.code == INVALID, (out.code, out.details)
