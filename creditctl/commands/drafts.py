"""creditctl drafts create: the draft invoice of a subscription's period (CreateDraft).

Name the period by any instant inside it (`--containing now`, `--containing 2026-08-15`): the CLI
reads the subscription's anchor and its plan's interval and finds the period's start, so nobody
computes period starts by hand. `--period-start` passes an exact start through unchanged.
"""

from __future__ import annotations

from datetime import datetime

import click
from credits.invoice.v1 import invoice_pb2 as ipb

from creditctl.connection import rpc
from creditctl.help_listing import Group
from creditctl.output import Format, emit_record, format_options
from creditctl.records import idempotency_option, key_for, record, set_instant
from creditctl.times import INSTANT
from invoice_service.domain.lifecycle import Schedule
from invoice_service.domain.periods import INTERVAL_MONTHS, Period
from service_runtime.proto_time import from_timestamp

SUMMARY = ("invoice_id", "customer_id", "subscription_id", "status", "currency", "period_start", "period_end",
           "subtotal", "credits_applied", "amount_due")


def period_of(subscription_id: str, instant: datetime) -> tuple[str, Period]:
    """The subscription's customer and its billing period holding `instant` (its schedule: anchor,
    trial, calendar alignment, end; invoice_service/domain/lifecycle.py)."""
    sub = rpc("invoice", "GetSubscription", ipb.GetSubscriptionRequest(subscription_id=subscription_id))
    plan = rpc("invoice", "GetPlan", ipb.GetPlanRequest(plan_id=sub.plan_id))
    months = INTERVAL_MONTHS[ipb.BillingInterval.Name(plan.interval or ipb.MONTHLY)]
    trial_end = from_timestamp(sub.trial_end, "trial_end") if sub.HasField("trial_end") else None
    ends_at = from_timestamp(sub.ends_at, "ends_at") if sub.HasField("ends_at") else None
    schedule = Schedule(from_timestamp(sub.anchor, "anchor"), months, trial_end, sub.calendar_aligned, ends_at)
    p = schedule.period_containing(instant)
    if p is None:
        raise click.BadParameter(f"{instant.isoformat()} is in no billed period of {subscription_id} (billing "
                                 f"starts {schedule.billing_start.isoformat()}"
                                 + (f", ends {schedule.ends_at.isoformat()})" if schedule.ends_at else ")"),
                                 param_hint="--containing")
    return sub.customer_id, Period(p.index, p.start, p.end)


@click.group("drafts", cls=Group, help="draft invoices: usage and fees of one period, priced (CREDITS_INVOICE_ADDR)")
def command() -> None:
    pass


@command.command("create", help="the draft of SUBSCRIPTION_ID's period containing --containing (default now)")
@click.argument("subscription_id")
@click.option("--containing", type=INSTANT, default="now", show_default=True,
              help="any instant inside the period (ISO 8601, now, -30d ...)")
@click.option("--period-start", type=INSTANT, default=None, help="the exact period start instead")
@idempotency_option
@format_options(quiet=True)
def create(subscription_id: str, containing: datetime, period_start: datetime | None, idempotency_key: str,
           fmt: Format) -> int:
    customer_id, period = period_of(subscription_id, period_start or containing)
    if period_start is not None and period.start != period_start:
        raise click.BadParameter(f"{period_start.isoformat()} is not a period start of {subscription_id} "
                                 f"(that period starts {period.start.isoformat()}; or use --containing)",
                                 param_hint="--period-start")
    # One draft per subscription and period: the key names them, so a repeated create returns it.
    key = key_for(idempotency_key or f"cli-draft-{subscription_id}-{period.start.isoformat()}")
    request = ipb.CreateDraftRequest(idempotency_key=key, customer_id=customer_id, subscription_id=subscription_id)
    set_instant(request.period_start, period.start)
    invoice = record(rpc("invoice", "CreateDraft", request))
    emit_record(invoice if fmt != Format.TABLE else {k: invoice.get(k, "") for k in SUMMARY}, fmt,
                id_field="invoice_id")
    return 0
