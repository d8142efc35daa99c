"""Minimal reproductions of what the fuzzers found, one per bug: fixed ones kept as regression tests, open
ones (in code the fuzz suite does not own) as strict xfails that flip when fixed."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from credits.audit.v1 import audit_pb2 as apb
from credits.billing.v1 import billing_pb2 as bpb
from credits.invoice.v1 import invoice_pb2 as ipb
from credits.ledger.v1 import ledger_pb2 as lpb
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from tests.fuzz.conftest import Running, Seeded, Tenant
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


GOOD_TS = Timestamp(seconds=1_785_542_400)            # 2026-08-01T00:00:00Z, a period boundary of the seeds
BAD_NANOS = Timestamp(seconds=1_785_542_400, nanos=-1)


def _nanos_request(method_name: str, a: Tenant, stamp: Timestamp) -> Message:
    """A request to `method_name` that is valid in every field (ids of tenant A's seeded objects, fresh keys)
    but the Timestamp, which is `stamp`: with GOOD_TS it succeeds, so with BAD_NANOS only the bad
    timestamp can be the reason it is refused."""
    p = a.tenant_id
    draft = a.ids["invoice"][0]  # cust1's invoice: still a DRAFT (seed_invoice_tenant)
    event = ipb.UsageEvent(event_id=f"{p}-nanos-ev", customer_id=f"{p}-cust1", meter_code=f"{p}-sum", quantity="1",
                           timestamp=stamp, properties={"user": "u1"})
    builders: dict[str, Callable[[], Message]] = {
        "CreateSubscription": lambda: ipb.CreateSubscriptionRequest(
            idempotency_key="nanos-sub", subscription_id=f"{p}-nanos-sub", customer_id=f"{p}-cust4",
            plan_id=f"{p}-plan", anchor=stamp),
        "CreateSubscription.trial_end": lambda: ipb.CreateSubscriptionRequest(
            idempotency_key="nanos-sub-trial", subscription_id=f"{p}-nanos-trial", customer_id=f"{p}-cust5",
            plan_id=f"{p}-plan", anchor=GOOD_TS, trial_end=_shifted(stamp, 5 * 86400)),
        # changes in September: sub2's and sub3's August invoices are frozen, cust1's September draft untouched
        "UpdateSubscription": lambda: ipb.UpdateSubscriptionRequest(
            idempotency_key="nanos-upd", subscription_id=f"{p}-sub2", effective_at=_shifted(stamp, 40 * 86400),
            licenses=[ipb.Quantity(code="seat", quantity=3)]),
        "MigrateSubscription": lambda: ipb.MigrateSubscriptionRequest(
            idempotency_key="nanos-mig", subscription_id=f"{p}-sub2", effective_at=_shifted(stamp, 45 * 86400)),
        "CancelSubscription": lambda: ipb.CancelSubscriptionRequest(
            idempotency_key="nanos-cancel", subscription_id=f"{p}-sub3", at=_shifted(stamp, 50 * 86400)),
        "ListDueSubscriptions": lambda: ipb.ListDueSubscriptionsRequest(as_of=stamp),
        "RedeemCoupon": lambda: ipb.RedeemCouponRequest(idempotency_key="nanos-redeem", customer_id=f"{p}-cust4",
                                                        coupon_code=f"{p}-coupon", redeemed_at=stamp),
        "IngestEvent": lambda: ipb.IngestEventRequest(idempotency_key="nanos-ev", event=event),
        "IngestEvents": lambda: ipb.IngestEventsRequest(idempotency_key="nanos-evs", events=[event]),
        "CreateDraft": lambda: ipb.CreateDraftRequest(idempotency_key="nanos-draft", customer_id=f"{p}-cust1",
                                                      period_start=_shifted(stamp, 31 * 86400)),  # September
        "SplitDraft": lambda: ipb.SplitDraftRequest(invoice_id=draft, split_at=[_shifted(stamp, 14 * 86400)]),
        "PrepareFinalize": lambda: ipb.PrepareFinalizeRequest(idempotency_key="nanos-prep", invoice_id=draft,
                                                              split_at=[_shifted(stamp, 14 * 86400)]),
        "ListInvoices.prepared_before": lambda: ipb.ListInvoicesRequest(prepared_before=stamp),
        "ListInvoices.period_start": lambda: ipb.ListInvoicesRequest(customer_id=f"{p}-cust1", period_start=stamp),
        # reads over a window: the other end fixed a day away (`from` is a Python keyword: passed by name)
        "GetUsageSeries.from": lambda: ipb.GetUsageSeriesRequest(
            customer_id=f"{p}-cust1", **{"from": stamp, "to": _shifted(GOOD_TS, 86400)}),
        "GetUsageSeries.to": lambda: ipb.GetUsageSeriesRequest(
            customer_id=f"{p}-cust1", **{"from": _shifted(GOOD_TS, -86400), "to": stamp}),
        "ListTopCustomers.from": lambda: ipb.ListTopCustomersRequest(
            meter_code=f"{p}-sum", **{"from": stamp, "to": _shifted(GOOD_TS, 86400)}),
        "ListTopCustomers.to": lambda: ipb.ListTopCustomersRequest(
            meter_code=f"{p}-sum", **{"from": _shifted(GOOD_TS, -86400), "to": stamp}),
    }
    return builders[method_name]()


def _shifted(stamp: Timestamp, seconds: int) -> Timestamp:
    return Timestamp(seconds=stamp.seconds + seconds, nanos=stamp.nanos)


NANOS_CASES = {"CreateSubscription": "anchor", "CreateSubscription.trial_end": "trial_end",
               "UpdateSubscription": "effective_at", "MigrateSubscription": "effective_at",
               "CancelSubscription": "at", "ListDueSubscriptions": "as_of", "IngestEvent": "event.timestamp",
               "IngestEvents": "events.timestamp", "CreateDraft": "period_start", "SplitDraft": "split_at",
               "PrepareFinalize": "split_at", "ListInvoices.prepared_before": "prepared_before",
               "ListInvoices.period_start": "period_start", "GetUsageSeries.from": "from",
               "GetUsageSeries.to": "to", "ListTopCustomers.from": "from", "ListTopCustomers.to": "to",
               "RedeemCoupon": "redeemed_at"}


def test_every_invoice_timestamp_has_a_nanos_case() -> None:
    """A Timestamp field added to an InvoiceService request fails here until it gets a valid request above."""
    found = {(p.values[0], p.values[1]) for p in _timestamp_rpcs()}  # type: ignore[attr-defined]
    cases = {(name.partition(".")[0], field) for name, field in NANOS_CASES.items()}
    assert found == cases


@pytest.mark.parametrize("case", list(NANOS_CASES))
async def test_timestamp_nanos_out_of_range_is_invalid_argument(case: str, invoice: Seeded) -> None:
    """nanos = -1 in an otherwise valid request: INVALID_ARGUMENT naming the timestamp, nothing written;
    the same request with the timestamp fixed is then accepted (so the bad timestamp was what was read)."""
    svc, a = invoice.service, invoice.a
    method = _method(svc.descriptor, case.partition(".")[0])
    before = await svc.snapshot.take()
    out = await svc.call(method, _nanos_request(case, a, BAD_NANOS), a.key)  # type: ignore[arg-type]
    after = await svc.snapshot.take()
    assert out.code == INVALID, (out.code, out.details)
    assert NANOS_CASES[case].rpartition(".")[2] in out.details, out.details
    assert {t for t in after if t not in AUDIT_TABLES and after[t] != before.get(t)} == set()
    control = await svc.call(method, _nanos_request(case, a, GOOD_TS), a.key)  # type: ignore[arg-type]
    svc.invalidate()
    assert control.code == grpc.StatusCode.OK, (control.code, control.details)


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
