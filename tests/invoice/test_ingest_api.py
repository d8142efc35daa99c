"""Usage ingestion over real gRPC: dedupe (also under concurrency), grace window, frozen periods."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import grpc
from credits.invoice.v1 import invoice_pb2 as pb

from invoice_service.domain.periods import period_containing
from tests.invoice.conftest import InvoiceEnv, event, seed_catalog, start_env, ts, when
from tests.invoice.test_catalog_api import expect_error


async def test_single_and_batch_ingestion_report_duplicates(env: InvoiceEnv) -> None:
    await seed_catalog(env)
    one = await env.call("IngestEvent", pb.IngestEventRequest(event=event("e1", "input_tokens", "5", when(2))))
    assert one.result.status == pb.ACCEPTED
    again = await env.call("IngestEvent", pb.IngestEventRequest(event=event("e1", "input_tokens", "7", when(3))))
    assert again.result.status == pb.DUPLICATE
    batch = await env.call("IngestEvents", pb.IngestEventsRequest(events=[
        event("e1", "input_tokens", "5", when(2)), event("e2", "input_tokens", "1.5", when(2)),
        event("e2", "input_tokens", "1.5", when(2)), event("e3", "output_tokens", "", when(4))]))
    assert [r.status for r in batch.results] == [pb.DUPLICATE, pb.ACCEPTED, pb.DUPLICATE, pb.ACCEPTED]
    assert (batch.accepted, batch.duplicates) == (2, 2)
    draft = await env.call("CreateDraft", pb.CreateDraftRequest(idempotency_key="d", customer_id="john-wick",
                                                                period_start=ts(when(1))))
    assert [i.quantity for i in draft.line_items] == ["6.5", "1"]  # "" counts as 1


async def test_concurrent_duplicate_batches_count_each_event_once(env: InvoiceEnv) -> None:
    await seed_catalog(env)
    events = [event(f"dup-{n}", "input_tokens", "1", when(2) + timedelta(minutes=n)) for n in range(300)]

    async def send(seed: int) -> int:
        batch = events[:]
        random.Random(seed).shuffle(batch)
        response = await env.call("IngestEvents", pb.IngestEventsRequest(events=batch))
        assert response.accepted + response.duplicates == 300
        return int(response.accepted)

    accepted = await asyncio.gather(*(send(seed) for seed in range(8)))
    assert sum(accepted) == 300
    assert await env.count("usage_events") == 300
    draft = await env.call("CreateDraft", pb.CreateDraftRequest(idempotency_key="d", customer_id="john-wick",
                                                                period_start=ts(when(1))))
    assert draft.line_items[0].quantity == "300"


async def test_bad_events_name_the_field_and_write_nothing(env: InvoiceEnv) -> None:
    await seed_catalog(env)
    await env.call("CreateMeter", pb.CreateMeterRequest(idempotency_key="u", meter_code="users",
                                                        aggregation=pb.UNIQUE_COUNT, property="user_id"))
    good = event("ok", "input_tokens", "1", when(2))
    bad = grpc.StatusCode.INVALID_ARGUMENT
    future = datetime.now(UTC) + timedelta(hours=1)
    cases = [
        (event("x", "nope", "1", when(2)), grpc.StatusCode.NOT_FOUND, "events[1].meter_code"),
        (event("x", "input_tokens", "1", when(2), customer_id="ghost"), grpc.StatusCode.NOT_FOUND,
         "events[1].customer_id"),
        (event("x", "input_tokens", "-1", when(2)), bad, "events[1].quantity"),
        (event("x", "input_tokens", "1e5", when(2)), bad, "events[1].quantity"),
        (event("x", "input_tokens", "0.0000000001", when(2)), bad, "events[1].quantity"),
        (event("x", "input_tokens", "1", future), bad, "events[1].timestamp"),
        (event("bad id", "input_tokens", "1", when(2)), bad, "events[1].event_id"),
        (event("x", "users", "1", when(2)), bad, "events[1].properties"),
        (pb.UsageEvent(event_id="x", customer_id="john-wick", meter_code="input_tokens"), bad, "events[1].timestamp"),
        (event("x", "input_tokens", "1", when(2, month=7)), grpc.StatusCode.FAILED_PRECONDITION,
         "events[1].timestamp"),  # before the subscription anchor
    ]
    for ev, code, field in cases:
        await expect_error(env, "IngestEvents", pb.IngestEventsRequest(events=[good, ev]), code, field)
    await expect_error(env, "IngestEvents", pb.IngestEventsRequest(events=[]), bad, "events")
    assert await env.count("usage_events") == 0


async def test_unique_count_max_and_count_meters(env: InvoiceEnv) -> None:
    for code, agg, prop in (("users", pb.UNIQUE_COUNT, "user_id"), ("peak_gb", pb.MAX, ""),
                            ("requests", pb.COUNT, ""), ("credits_used", pb.SUM, "cost")):
        await env.call("CreateMeter", pb.CreateMeterRequest(idempotency_key=code, meter_code=code, aggregation=agg,
                                                            property=prop))
    price = pb.Price(model=pb.PER_UNIT, unit_amount="2")
    plan = pb.CreatePlanRequest(idempotency_key="p", plan_id="p", currency="EUR", usage_charges=[
        pb.UsageCharge(meter_code=m, price=price) for m in ("users", "peak_gb", "requests", "credits_used")])
    await env.call("CreatePlan", plan)
    await seed_catalog(env, plan=plan)
    events = [event(f"u{n}", "users", "", when(2 + n), user_id=f"user-{n % 3}") for n in range(7)]
    events += [event(f"g{n}", "peak_gb", q, when(3, n)) for n, q in enumerate(["1.5", "7.25", "3"])]
    events += [event(f"r{n}", "requests", "999", when(4, n)) for n in range(4)]
    events += [event(f"c{n}", "credits_used", "", when(5, n), cost=c) for n, c in enumerate(["0.5", "0.25"])]
    await env.call("IngestEvents", pb.IngestEventsRequest(events=events))
    draft = await env.call("CreateDraft", pb.CreateDraftRequest(idempotency_key="d", customer_id="john-wick",
                                                                period_start=ts(when(1))))
    assert [(i.code, i.quantity, i.amount) for i in draft.line_items] == [
        ("users", "3", "6.00"), ("peak_gb", "7.25", "14.50"), ("requests", "4", "8.00"),
        ("credits_used", "0.75", "1.50")]
    # users first seen on Aug 2, 3, 4: a cut on the 3rd puts 1 before and 2 after
    split = await env.call("SplitDraft", pb.SplitDraftRequest(invoice_id=draft.invoice_id, split_at=[ts(when(3))]))
    users = [(c.charge_id, c.quantity, c.amount) for c in split.charges if c.name == "users"]
    assert users == [("L001#1", "1", "2.00"), ("L001#2", "2", "4.00")]


async def test_negative_quantities_only_where_the_meter_allows_them(env: InvoiceEnv) -> None:
    await env.call("CreateMeter", pb.CreateMeterRequest(idempotency_key="m", meter_code="storage",
                                                        aggregation=pb.SUM, allow_negative=True))
    plan = pb.CreatePlanRequest(idempotency_key="p", plan_id="p", currency="USD", usage_charges=[
        pb.UsageCharge(meter_code="storage", price=pb.Price(model=pb.PER_UNIT, unit_amount="1"))])
    await env.call("CreatePlan", plan)
    await seed_catalog(env, plan=plan)
    await env.call("IngestEvents", pb.IngestEventsRequest(events=[
        event("a", "storage", "10", when(2)), event("b", "storage", "-3.5", when(3))]))
    draft = await env.call("CreateDraft", pb.CreateDraftRequest(idempotency_key="d", customer_id="john-wick",
                                                                period_start=ts(when(1))))
    assert (draft.line_items[0].quantity, draft.line_items[0].amount) == ("6.5", "6.50")


@asynccontextmanager
async def env_with_grace(grace_s: int) -> AsyncIterator[InvoiceEnv]:
    e, server = await start_env(grace_s=grace_s)
    try:
        yield e
    finally:
        await server.stop(None)
        await e.close()


async def test_late_events_count_inside_the_grace_window_only() -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    anchor = (now - timedelta(days=75)).replace(day=10)
    current = period_containing(anchor, 1, now)
    previous = period_containing(anchor, 1, current.start - timedelta(seconds=1))
    # The grace window keeps the previous period open for one more hour; the one before it is closed.
    grace_s = int((now - current.start).total_seconds()) + 3600
    async with env_with_grace(grace_s) as env:
        await seed_catalog(env, anchor=anchor)
        late = event("late", "input_tokens", "1", previous.start + timedelta(days=3))
        assert (await env.call("IngestEvent", pb.IngestEventRequest(event=late))).result.status == pb.ACCEPTED
        too_late = event("too-late", "input_tokens", "1", previous.start - timedelta(days=3))
        details = await expect_error(env, "IngestEvent", pb.IngestEventRequest(event=too_late),
                                     grpc.StatusCode.FAILED_PRECONDITION, "event.timestamp")
        assert "closed" in details
        assert await env.count("usage_events") == 1


async def test_events_for_a_frozen_period_are_refused_until_it_reopens(env: InvoiceEnv) -> None:
    await seed_catalog(env)
    await env.call("IngestEvent", pb.IngestEventRequest(event=event("a", "input_tokens", "100", when(2))))
    draft = await env.call("CreateDraft", pb.CreateDraftRequest(idempotency_key="d", customer_id="john-wick",
                                                                period_start=ts(when(1))))
    await env.call("PrepareFinalize", pb.PrepareFinalizeRequest(idempotency_key="p1", invoice_id=draft.invoice_id))
    late = pb.IngestEventRequest(event=event("b", "input_tokens", "1", when(20)))
    details = await expect_error(env, "IngestEvent", late, grpc.StatusCode.FAILED_PRECONDITION, "event.timestamp")
    assert "PREPARED" in details
    # the next period is not affected
    nxt = pb.IngestEventRequest(event=event("c", "input_tokens", "1", when(2, month=9)))
    assert (await env.call("IngestEvent", nxt)).result.status == pb.ACCEPTED
    await env.call("AbortFinalize", pb.AbortFinalizeRequest(idempotency_key="a1", invoice_id=draft.invoice_id))
    assert (await env.call("IngestEvent", late)).result.status == pb.ACCEPTED
    await env.call("PrepareFinalize", pb.PrepareFinalizeRequest(idempotency_key="p2", invoice_id=draft.invoice_id))
    final = await env.call("CommitFinalize", pb.CommitFinalizeRequest(idempotency_key="c2",
                                                                      invoice_id=draft.invoice_id))
    assert final.line_items[0].quantity == "101"
    later = pb.IngestEventRequest(event=event("d", "input_tokens", "1", when(21)))
    details = await expect_error(env, "IngestEvent", later, grpc.StatusCode.FAILED_PRECONDITION, "timestamp")
    assert "FINALIZED" in details
