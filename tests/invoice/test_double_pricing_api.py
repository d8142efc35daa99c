"""One meter, one subscription at a time (issue #19 follow-up), over real gRPC: usage events belong to the
customer, so CreateSubscription, UpdateSubscription and MigrateSubscription that would make two of a
customer's subscriptions price one meter over overlapping time are FAILED_PRECONDITION naming the meter
and the other subscription, and change nothing; a seeded random sequence of changes never bills an
event twice (drafts of every period of every subscription)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import grpc
from credits.invoice.v1 import invoice_pb2 as pb

from invoice_service.domain.lifecycle import Schedule
from tests.invoice.conftest import InvoiceEnv, event, seed_catalog, ts, when
from tests.invoice.test_catalog_api import expect_error, per_unit

REFUSED = grpc.StatusCode.FAILED_PRECONDITION


async def _plans(env: InvoiceEnv) -> None:
    for plan_id, meters in (("in-only", ["input_tokens"]), ("out-only", ["output_tokens"]), ("seats", [])):
        await env.call("CreatePlan", pb.CreatePlanRequest(
            idempotency_key=f"p-{plan_id}", plan_id=plan_id, currency="USD",
            usage_charges=[per_unit(m) for m in meters], fixed_fees=[pb.FixedFee(code="base", amount="1.00")]))


def _sub(sub_id: str, plan_id: str, anchor: datetime, key: str = "") -> pb.CreateSubscriptionRequest:
    return pb.CreateSubscriptionRequest(idempotency_key=key or f"s-{sub_id}", subscription_id=sub_id,
                                        customer_id="john-wick", plan_id=plan_id, anchor=ts(anchor))


async def test_overlapping_meters_are_refused_naming_meter_and_subscription(env: InvoiceEnv) -> None:
    await seed_catalog(env)  # sub-john-wick prices input_tokens and output_tokens from Aug 1
    await _plans(env)
    details = await expect_error(env, "CreateSubscription", _sub("sub-2", "in-only", when(10)), REFUSED, "plan_id")
    assert "input_tokens" in details and "sub-john-wick" in details
    assert await env.count("subscriptions") == 1 and await env.count("subscription_phases") == 1
    await env.call("CreateSubscription", _sub("sub-2", "seats", when(10)))  # no meter: fine
    upd = pb.UpdateSubscriptionRequest(idempotency_key="u1", subscription_id="sub-2", effective_at=ts(when(15)),
                                       plan_id="out-only")
    details = await expect_error(env, "UpdateSubscription", upd, REFUSED, "plan_id")
    assert "output_tokens" in details and "sub-john-wick" in details
    # a new version that prices a meter changes nobody; migrating to it would double-bill: refused
    await env.call("CreatePlanVersion", pb.CreatePlanRequest(
        idempotency_key="p-seats-2", plan_id="seats", currency="USD", usage_charges=[per_unit("input_tokens")]))
    details = await expect_error(env, "MigrateSubscription", pb.MigrateSubscriptionRequest(
        idempotency_key="m1", subscription_id="sub-2", effective_at=ts(when(20))), REFUSED, "version")
    assert "input_tokens" in details
    assert await env.count("subscription_phases") == 2
    sub2 = await env.call("GetSubscription", pb.GetSubscriptionRequest(subscription_id="sub-2"))
    assert (sub2.plan_id, sub2.plan_version) == ("seats", 1)

    # one after the other is fine: sub-john-wick ends Sep 1, sub-2 (Aug 10 - Sep 10) takes output_tokens from then
    await env.call("CancelSubscription", pb.CancelSubscriptionRequest(
        idempotency_key="c1", subscription_id="sub-john-wick", at=ts(when(1, month=9))))
    await expect_error(env, "UpdateSubscription", upd, REFUSED, "plan_id")  # Aug 15 still overlaps
    await env.call("UpdateSubscription", pb.UpdateSubscriptionRequest(
        idempotency_key="u2", subscription_id="sub-2", effective_at=ts(when(1, month=9)), plan_id="out-only"))
    await env.call("IngestEvents", pb.IngestEventsRequest(events=[
        event("e1", "output_tokens", "100", when(20)), event("e2", "output_tokens", "7", when(5, month=9))]))
    aug = await env.call("CreateDraft", pb.CreateDraftRequest(
        idempotency_key="d1", customer_id="john-wick", subscription_id="sub-john-wick", period_start=ts(when(1))))
    sep = await env.call("CreateDraft", pb.CreateDraftRequest(
        idempotency_key="d2", customer_id="john-wick", subscription_id="sub-2", period_start=ts(when(10, month=8))))
    assert [(i.code, i.quantity) for i in aug.line_items if i.code == "output_tokens"] == [("output_tokens", "100")]
    assert [(i.code, i.quantity) for i in sep.line_items if i.code == "output_tokens"] == [("output_tokens", "7")]


async def test_random_changes_never_bill_an_event_twice(env: InvoiceEnv) -> None:
    """Seeded: random creates, plan changes and cancellations (each accepted or refused by the service),
    then one event per meter every 13 hours, and a draft of every period of every subscription: each
    meter's usage over all drafts is at most what was ingested, and every refusal changed nothing."""
    await seed_catalog(env)
    await _plans(env)
    rng = random.Random(4242)
    plans = ["chatppt-pro", "in-only", "out-only", "seats"]
    subs = ["sub-john-wick"]
    start = when(1)
    outcomes: list[str] = []
    for n in range(24):
        phases = await env.count("subscription_phases")
        at = start + timedelta(days=rng.randint(0, 80))
        verb = rng.choice(["create", "create", "update", "update", "cancel"])
        try:
            if verb == "create":
                await env.call("CreateSubscription", _sub(f"s{n}", rng.choice(plans), at))
                subs.append(f"s{n}")
            elif verb == "update":
                await env.call("UpdateSubscription", pb.UpdateSubscriptionRequest(
                    idempotency_key=f"u{n}", subscription_id=rng.choice(subs), effective_at=ts(at),
                    plan_id=rng.choice(plans)))
            else:
                await env.call("CancelSubscription", pb.CancelSubscriptionRequest(
                    idempotency_key=f"c{n}", subscription_id=rng.choice(subs), at=ts(at + timedelta(days=30))))
            outcomes.append(verb)
        except grpc.aio.AioRpcError as err:
            outcomes.append(f"{verb} refused")
            assert err.code() in (REFUSED, grpc.StatusCode.INVALID_ARGUMENT), err.details()
            assert await env.count("subscription_phases") == phases
    events = [event(f"{m}-{k}", m, "1", start + timedelta(hours=13 * k))
              for m in ("input_tokens", "output_tokens") for k in range(100 * 24 // 13)]
    for i in range(0, len(events), 100):
        await env.call("IngestEvents", pb.IngestEventsRequest(events=events[i:i + 100]))
    billed = {"input_tokens": Decimal(0), "output_tokens": Decimal(0)}
    drafts = 0
    for sub_id in subs:
        s = await env.call("GetSubscription", pb.GetSubscriptionRequest(subscription_id=sub_id))
        schedule = Schedule(s.anchor.ToDatetime(UTC), 1, None, False,
                            s.ends_at.ToDatetime(UTC) if s.HasField("ends_at") else None)
        for p in schedule.periods_until(start + timedelta(days=100), 12):
            inv = await env.call("CreateDraft", pb.CreateDraftRequest(
                idempotency_key=f"d-{sub_id}-{p.index}", customer_id="john-wick", subscription_id=sub_id,
                period_start=ts(p.start)))
            drafts += 1
            for item in inv.line_items:
                if item.kind == pb.USAGE:
                    billed[item.code] += Decimal(item.quantity)
    assert drafts >= 5 and len(subs) >= 3 and sum(billed.values()) > 0, (outcomes, subs, billed)
    assert billed["input_tokens"] <= len(events) // 2 and billed["output_tokens"] <= len(events) // 2, billed
    assert "create refused" in outcomes and "update refused" in outcomes
