"""Another tenant's ids: every ledger and invoice RPC that names an object answers NOT_FOUND (or an
empty answer for a filter), never tenant A's data, and writes nothing of A's.

Driven from the descriptors: each RPC whose request has an id field is called with tenant A's ids
under tenant B's admin key (B has the same unit codes, so the refusal is about the object).
"""

from __future__ import annotations

from typing import Any

import grpc
from credits.invoice.v1 import invoice_pb2 as ipb
from credits.ledger.v1 import ledger_pb2 as pb
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from tests.invoice.conftest import InvoiceEnv, seed_catalog, when
from tests.security.conftest import TENANT_A, TENANT_B, Stack, code_of

LEDGER = pb.DESCRIPTOR.services_by_name["LedgerService"]
INVOICE = ipb.DESCRIPTOR.services_by_name["InvoiceService"]
# Creating an object under an id is not a cross-tenant read: B gets its own (tested elsewhere).
CREATES = {"CreateAccount", "CreateCustomer", "CreateMeter", "CreatePlan", "CreateSubscription", "DefineUnit",
           "CreateCoupon"}


def md(key: str) -> list[tuple[str, str]]:
    return [("x-api-key", key)]


def _ts(dt: Any) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(dt)
    return t


async def seed_a(stack: Stack) -> dict[str, str]:
    """Tenant A's objects, with ids that must never appear in an answer to tenant B."""
    a = md(stack.keys[TENANT_A]["admin"])
    for tenant in (TENANT_A, TENANT_B):
        await stack.ledger.DefineUnit(pb.DefineUnitRequest(idempotency_key="usd", code="USD", scale=2),
                                      metadata=md(stack.keys[tenant]["admin"]))
    for acct, parent in (("acct-john-wick", ""), ("a-secret-2", "acct-john-wick")):
        await stack.ledger.CreateAccount(pb.CreateAccountRequest(idempotency_key=acct, account_id=acct,
                                                                 parent_account_id=parent), metadata=a)
    lot = await stack.ledger.GrantCredits(pb.GrantCreditsRequest(
        idempotency_key="g", account_id="acct-john-wick", unit="USD", amount="100", type=pb.PURCHASED,
        effective_at=_ts(when(1))), metadata=a)
    charge = pb.Charge(charge_id="c1", kind=pb.USAGE, name="input_tokens", amount="1",
                       service_start=_ts(when(1)), service_end=_ts(when(2)))
    await stack.ledger.ReserveCredits(pb.ReserveCreditsRequest(
        idempotency_key="r", account_id="acct-john-wick", hold_key="a-secret-hold", unit="USD", charges=[charge]),
        metadata=a)
    transfer = await stack.ledger.TransferCredits(pb.TransferCreditsRequest(
        idempotency_key="t", from_account_id="acct-john-wick", to_account_id="a-secret-2", unit="USD", amount="1",
        reason="x"), metadata=a)
    support = md(stack.keys[TENANT_A]["support"])
    request = await stack.ledger.GrantCredits(pb.GrantCreditsRequest(
        idempotency_key="big", account_id="acct-john-wick", unit="USD", amount="10000", type=pb.COMPENSATORY,
        reason_code="r", incident_id="INC-A"), metadata=support)
    env = InvoiceEnv(stack.invoice_dsn, stack.invoice, stack.keys[TENANT_A]["admin"], None,  # type: ignore[arg-type]
                     stack.channels["invoice"], 0, None)  # type: ignore[arg-type]
    await seed_catalog(env, anchor=when(1))
    invoice = await stack.invoice.CreateDraft(ipb.CreateDraftRequest(
        idempotency_key="d", customer_id="john-wick", period_start=_ts(when(1))), metadata=a)
    await stack.invoice.CreateCoupon(ipb.CreateCouponRequest(idempotency_key="cp",
        coupon_code="a-secret-coupon", percent_off="10"), metadata=a)
    return {
        "account_id": "acct-john-wick", "parent_account_id": "acct-john-wick", "from_account_id": "acct-john-wick",
        "to_account_id": "a-secret-2", "lot_id": lot.lot_id, "hold_key": "a-secret-hold",
        "transfer_id": transfer.transfer_id, "request_id": request.grant_request.request_id,
        "customer_id": "john-wick", "subscription_id": "sub-john-wick", "plan_id": "chatppt-pro",
        "meter_code": "input_tokens", "invoice_id": invoice.invoice_id, "ledger_account_id": "acct-john-wick",
        "coupon_code": "a-secret-coupon",
    }


def _repeated(f: Any) -> bool:
    return bool(f.is_repeated) if hasattr(f, "is_repeated") else bool(f.label == f.LABEL_REPEATED)


def build(message: Message, ids: dict[str, str]) -> bool:
    """Fills `message` with A's ids (top level and one level of nested messages); True if any."""
    hit = False
    for f in message.DESCRIPTOR.fields:
        if f.name in ids and f.type == f.TYPE_STRING and not _repeated(f):
            setattr(message, f.name, ids[f.name])
            hit = True
        elif f.name == "idempotency_key":
            message.idempotency_key = "x-tenant"  # type: ignore[attr-defined]
        elif f.name in ("unit", "currency") and f.type == f.TYPE_STRING:
            setattr(message, f.name, "USD")
        elif f.name in ("reason", "reason_code", "event_id") and f.type == f.TYPE_STRING:
            setattr(message, f.name, "x1")
        elif f.name in ("type", "format") and f.type == f.TYPE_ENUM:
            setattr(message, f.name, 1)
        elif f.name == "sort_keys" and _repeated(f):
            getattr(message, f.name).append(1)
        elif f.name == "charges" and f.message_type is not None and f.message_type.name == "Charge":
            getattr(message, f.name).add().CopyFrom(pb.Charge(charge_id="c1", kind=pb.USAGE, name="input_tokens",
                                                              amount="1", service_start=_ts(when(1)),
                                                              service_end=_ts(when(2))))
        elif f.name == "amount" and f.type == f.TYPE_STRING:
            setattr(message, f.name, "1")
        elif f.name in ("period_start", "as_of", "timestamp", "invoiced_through") and f.type == f.TYPE_MESSAGE:
            getattr(message, f.name).CopyFrom(_ts(when(1)))
        elif f.name == "period_end" and f.type == f.TYPE_MESSAGE:
            getattr(message, f.name).CopyFrom(_ts(when(2)))
        elif f.type == f.TYPE_MESSAGE and _repeated(f) and f.message_type.name in (
                "DebitCreditsRequest", "UsageEvent"):
            hit = build(getattr(message, f.name).add(), ids) or hit
        elif f.type == f.TYPE_MESSAGE and not _repeated(f) and f.message_type.name == "UsageEvent":
            hit = build(getattr(message, f.name), ids) or hit
    return hit


async def test_another_tenants_ids_are_not_found_and_never_answered(stack: Stack) -> None:
    ids = await seed_a(stack)
    secrets = {v for k, v in ids.items() if k not in ("customer_id", "meter_code", "plan_id")}
    admin_b = md(stack.keys[TENANT_B]["admin"])
    a = md(stack.keys[TENANT_A]["admin"])
    before = await stack.ledger.GetBalance(pb.GetBalanceRequest(account_id="acct-john-wick"), metadata=a)
    entries = await stack.ledger.ListEntries(pb.ListEntriesRequest(account_id="acct-john-wick"), metadata=a)
    checked, failures = [], []
    for service, module, stub in ((LEDGER, pb, stack.ledger), (INVOICE, ipb, stack.invoice)):
        for method in service.methods:
            if method.name in CREATES:
                continue
            request = getattr(module, method.input_type.name)()
            if not build(request, ids):
                continue
            checked.append(method.name)
            code, details, response = await code_of(getattr(stub, method.name)(request, metadata=admin_b))
            if code == grpc.StatusCode.OK and method.name == "BatchDebitCredits":
                if [r.error.code for r in response.results] != [grpc.StatusCode.NOT_FOUND.value[0]]:
                    failures.append((method.name, "batch item", response))
            elif code == grpc.StatusCode.OK:
                raw = response.SerializeToString()
                leaked = [s for s in secrets if s.encode() in raw]
                if leaked:
                    failures.append((method.name, "leaked", leaked))
            elif code != grpc.StatusCode.NOT_FOUND:
                failures.append((method.name, code, details))
    assert failures == [], "\n".join(map(str, failures))
    assert {"GetAccount", "GetLot", "GrantCredits", "VoidGrant", "CommitHold", "ReleaseHold", "GetHold",
            "ReverseTransfer", "GetGrantRequest", "ApproveGrantRequest", "RejectGrantRequest", "GetInvoice",
            "PrepareFinalize", "GetCustomer", "IngestEvent"} <= set(checked)
    # Nothing of A's changed.
    after_balance = await stack.ledger.GetBalance(pb.GetBalanceRequest(account_id="acct-john-wick"), metadata=a)
    assert list(after_balance.totals) == list(before.totals)
    after = await stack.ledger.ListEntries(pb.ListEntriesRequest(account_id="acct-john-wick"), metadata=a)
    assert after == entries
