"""The seed scenario (used by `creditctl demo`, the tests and the harness).

John Wick on ChatPPT: August usage worth $100 (4M input tokens at $0.00001, 2M output tokens at
$0.00003) and a $50 promotional referral credit scoped to those two usage meters.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from credits.invoice.v1 import invoice_pb2 as ipb
from credits.invoice.v1 import invoice_pb2_grpc
from credits.ledger.v1 import ledger_pb2 as lpb
from credits.ledger.v1 import ledger_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from service_runtime.proto_time import to_timestamp

PERIOD_START = datetime(2026, 8, 1, tzinfo=UTC)
METERS = ("input_tokens", "output_tokens")


def ts(value: datetime) -> Timestamp:
    return to_timestamp(value)


@dataclass
class Services:
    ledger: ledger_pb2_grpc.LedgerServiceStub
    invoice: invoice_pb2_grpc.InvoiceServiceStub
    key: str

    @property
    def md(self) -> list[tuple[str, str]]:
        return [("x-api-key", self.key)]


async def seed_catalog(s: Services) -> None:
    """Meters and the ChatPPT plan (once per tenant)."""
    for code in METERS:
        await s.invoice.CreateMeter(ipb.CreateMeterRequest(idempotency_key=f"seed-meter-{code}", meter_code=code,
                                                           aggregation=ipb.SUM), metadata=s.md)
    await s.invoice.CreatePlan(ipb.CreatePlanRequest(
        idempotency_key="seed-plan-chatppt", plan_id="chatppt-pro", name="ChatPPT Pro", currency="USD",
        usage_charges=[
            ipb.UsageCharge(meter_code="input_tokens", price=ipb.Price(model=ipb.PER_UNIT, unit_amount="0.00001")),
            ipb.UsageCharge(meter_code="output_tokens", price=ipb.Price(model=ipb.PER_UNIT, unit_amount="0.00003")),
        ]), metadata=s.md)


async def seed_customer(s: Services, customer_id: str = "john-wick", name: str = "John Wick",
                        account_id: str = "", credit: str = "50.00", draft: bool = True) -> str:
    """Customer, subscription, $100 of August usage and (if `credit`) the scoped promotional lot.

    Several customers may share one ledger `account_id` (a pooled account). Returns the draft id
    ("" with `draft=False`: the billing cycle drafts it).
    """
    account_id = account_id or f"acct-{customer_id}"
    await s.ledger.CreateAccount(lpb.CreateAccountRequest(idempotency_key=f"seed-acct-{account_id}",
                                                          account_id=account_id, name=name), metadata=s.md)
    if credit:
        await s.ledger.GrantCredits(lpb.GrantCreditsRequest(
            idempotency_key=f"seed-grant-{account_id}-{credit}", account_id=account_id, type=lpb.PROMOTIONAL,
            unit="USD", amount=credit, effective_at=ts(PERIOD_START), source="marketing", reason_code="referral",
            campaign_id="referral-2026", scope=lpb.Scope(kinds=[lpb.USAGE], names=list(METERS))), metadata=s.md)
    await s.invoice.CreateCustomer(ipb.CreateCustomerRequest(
        idempotency_key=f"seed-cust-{customer_id}", customer_id=customer_id, name=name,
        ledger_account_id=account_id), metadata=s.md)
    await s.invoice.CreateSubscription(ipb.CreateSubscriptionRequest(
        idempotency_key=f"seed-sub-{customer_id}", subscription_id=f"sub-{customer_id}", customer_id=customer_id,
        plan_id="chatppt-pro", anchor=ts(PERIOD_START)), metadata=s.md)
    events = [ipb.UsageEvent(event_id=f"{customer_id}-in-{d}", customer_id=customer_id, meter_code="input_tokens",
                             quantity="200000", timestamp=ts(datetime(2026, 8, d, 12, tzinfo=UTC)))
              for d in range(1, 21)]
    events += [ipb.UsageEvent(event_id=f"{customer_id}-out-{d}", customer_id=customer_id,
                              meter_code="output_tokens", quantity="100000",
                              timestamp=ts(datetime(2026, 8, d, 18, tzinfo=UTC))) for d in range(1, 21)]
    await s.invoice.IngestEvents(ipb.IngestEventsRequest(idempotency_key=f"seed-usage-{customer_id}",
                                                         events=events), metadata=s.md)
    if not draft:
        return ""
    created = await s.invoice.CreateDraft(ipb.CreateDraftRequest(
        idempotency_key=f"seed-draft-{customer_id}", customer_id=customer_id, period_start=ts(PERIOD_START)),
        metadata=s.md)
    return str(created.invoice_id)
