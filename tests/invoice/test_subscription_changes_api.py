"""Subscriptions that change, over real gRPC: plan versions and the explicit migrate verb, per-customer
price overrides, trials, calendar alignment, several subscriptions per customer, and bad input naming
the field with nothing changed."""

from __future__ import annotations

import grpc
from credits.invoice.v1 import invoice_pb2 as pb

from tests.invoice.conftest import InvoiceEnv, event, seed_catalog, ts, when
from tests.invoice.test_catalog_api import expect_error

FEE_PLAN = pb.CreatePlanRequest(idempotency_key="p-team", plan_id="team", currency="USD",
                                fixed_fees=[pb.FixedFee(code="platform", amount="31.00")],
                                licenses=[pb.License(code="seat", unit_amount="10.00")])


def _draft(customer: str, start: object, key: str, subscription: str = "") -> pb.CreateDraftRequest:
    return pb.CreateDraftRequest(idempotency_key=key, customer_id=customer, period_start=start,
                                 subscription_id=subscription)


def _amounts(inv: pb.Invoice) -> list[tuple[str, str]]:
    return [(i.code, i.amount) for i in inv.line_items]


async def test_plan_versions_stay_until_migrated_and_overrides_apply(env: InvoiceEnv) -> None:
    await env.call("CreatePlan", FEE_PLAN)
    await seed_catalog(env, plan=FEE_PLAN, licenses=[pb.Quantity(code="seat", quantity=2)])
    v2 = pb.CreatePlanRequest(idempotency_key="p-team-2", plan_id="team", currency="USD",
                              fixed_fees=[pb.FixedFee(code="platform", amount="62.00")],
                              licenses=[pb.License(code="seat", unit_amount="20.00")])
    plan = await env.call("CreatePlanVersion", v2)
    assert plan.version == 2 and await env.call("CreatePlanVersion", v2) == plan  # idempotent by key
    old = await env.call("GetPlan", pb.GetPlanRequest(plan_id="team", version=1))
    assert (old.version, old.fixed_fees[0].amount) == (1, "31")
    assert (await env.call("GetSubscription", pb.GetSubscriptionRequest(subscription_id="sub-john-wick"))
            ).plan_version == 1
    # August (31 days) stays on v1: 31.00 + 2 x 10.00
    aug = await env.call("CreateDraft", _draft("john-wick", ts(when(1)), "d-aug"))
    assert _amounts(aug) == [("platform", "31.00"), ("seat", "20.00")]
    # migrated to v2 on Sep 16 (15 of 30 days each), with this customer's own seat price 15.00 from then
    sub = await env.call("MigrateSubscription", pb.MigrateSubscriptionRequest(
        idempotency_key="mig", subscription_id="sub-john-wick", effective_at=ts(when(16, month=9))))
    assert sub.plan_version == 2
    sub = await env.call("UpdateSubscription", pb.UpdateSubscriptionRequest(
        idempotency_key="ovr", subscription_id="sub-john-wick", effective_at=ts(when(16, month=9)),
        price_overrides=[pb.PriceOverride(code="seat", amount="15.00")]))
    assert [(o.code, o.amount) for o in sub.price_overrides] == [("seat", "15")]
    sep = await env.call("CreateDraft", _draft("john-wick", ts(when(1, month=9)), "d-sep"))
    # v1 half: 15.50 + 10.00; v2 half: C = 15.50 + 31.00 -> 31.00; seats C = 10.00 + 15.00 -> 15.00
    assert _amounts(sep) == [("platform", "15.50"), ("seat", "10.00"), ("platform", "31.00"), ("seat", "15.00")]
    assert sep.subtotal == "71.50"


async def test_trial_calendar_alignment_and_several_subscriptions(env: InvoiceEnv) -> None:
    await env.call("CreatePlan", FEE_PLAN)
    await seed_catalog(env, plan=FEE_PLAN, licenses=[pb.Quantity(code="seat", quantity=1)])
    # A second subscription of the same customer: calendar-aligned from Aug 11 after a trial from Aug 4.
    await env.call("CreateSubscription", pb.CreateSubscriptionRequest(
        idempotency_key="s-2", subscription_id="sub-2", customer_id="john-wick", plan_id="team",
        anchor=ts(when(4)), trial_end=ts(when(11)), calendar_aligned=True))
    await expect_error(env, "CreateDraft", _draft("john-wick", ts(when(1)), "d-x"), grpc.StatusCode.INVALID_ARGUMENT,
                       "subscription_id")
    # the first period runs from the end of the trial to Sep 1: 21 of 31 days of 31.00 = 21.00
    first = await env.call("CreateDraft", _draft("john-wick", ts(when(11)), "d-2", "sub-2"))
    assert (first.period_end.ToDatetime().day, _amounts(first)) == (1, [("platform", "21.00")])
    await expect_error(env, "CreateDraft", _draft("john-wick", ts(when(4)), "d-3", "sub-2"),
                       grpc.StatusCode.INVALID_ARGUMENT, "period_start")
    other = await env.call("CreateDraft", _draft("john-wick", ts(when(1)), "d-1", "sub-john-wick"))
    assert _amounts(other) == [("platform", "31.00"), ("seat", "10.00")]
    # due periods page by (customer, subscription, period): as of 2076 minus the tests' 50-year grace
    # window (about Sep 13, 2026), the August periods of both subscriptions have ended, September's not
    as_of = ts(when(1, month=9, year=2076))
    pages = [await env.call("ListDueSubscriptions", pb.ListDueSubscriptionsRequest(as_of=as_of, page_size=1))]
    while pages[-1].next_page_token:
        pages.append(await env.call("ListDueSubscriptions", pb.ListDueSubscriptionsRequest(
            as_of=as_of, page_size=1, page_token=pages[-1].next_page_token)))
    listed = [(p.subscription_id, p.period_start.ToDatetime().strftime("%m-%d"), p.invoice_id) for page in pages
              for p in page.periods]
    assert listed == [("sub-2", "08-11", first.invoice_id), ("sub-john-wick", "08-01", other.invoice_id)]


async def test_bad_changes_name_the_field_and_change_nothing(env: InvoiceEnv) -> None:
    await env.call("CreatePlan", FEE_PLAN)
    await seed_catalog(env, plan=FEE_PLAN, licenses=[pb.Quantity(code="seat", quantity=2)])
    await env.call("CreatePlan", pb.CreatePlanRequest(idempotency_key="p-eur", plan_id="eur", currency="EUR",
                                                      fixed_fees=[pb.FixedFee(code="platform", amount="1")]))
    bad = grpc.StatusCode.INVALID_ARGUMENT
    upd = pb.UpdateSubscriptionRequest
    await expect_error(env, "UpdateSubscription", upd(idempotency_key="u1", subscription_id="sub-john-wick",
                                                      effective_at=ts(when(5))), bad, "plan_id")
    await expect_error(env, "UpdateSubscription", upd(idempotency_key="u2", subscription_id="sub-john-wick",
                                                      effective_at=ts(when(5)), plan_id="eur"), bad, "plan_id")
    await expect_error(env, "UpdateSubscription", upd(idempotency_key="u3", subscription_id="nope",
                                                      effective_at=ts(when(5)), plan_id="eur"),
                       grpc.StatusCode.NOT_FOUND, "subscription_id")
    await expect_error(env, "UpdateSubscription", upd(
        idempotency_key="u4", subscription_id="sub-john-wick", effective_at=ts(when(5)),
        licenses=[pb.Quantity(code="sso", quantity=1)]), bad, "licenses[0].code")
    await expect_error(env, "UpdateSubscription", upd(
        idempotency_key="u5", subscription_id="sub-john-wick", effective_at=ts(when(5)),
        price_overrides=[pb.PriceOverride(code="seat", price=pb.Price(model=pb.PER_UNIT, unit_amount="1"))]),
        bad, "price_overrides[0]")
    await expect_error(env, "UpdateSubscription", upd(idempotency_key="u6", subscription_id="sub-john-wick",
                                                      effective_at=ts(when(1, month=7)), plan_id="team"),
                       bad, "effective_at")
    await expect_error(env, "MigrateSubscription", pb.MigrateSubscriptionRequest(
        idempotency_key="m1", subscription_id="sub-john-wick", effective_at=ts(when(5)), version=7),
        grpc.StatusCode.NOT_FOUND, "version")
    await expect_error(env, "CreatePlanVersion", pb.CreatePlanRequest(
        idempotency_key="v1", plan_id="team", currency="EUR", fixed_fees=[pb.FixedFee(code="x", amount="1")]),
        bad, "currency")
    assert await env.count("subscription_phases") == 1 and await env.count("plan_versions") == 2
    # cancelled on Aug 20: later changes are refused; a frozen period refuses changes reaching into it
    sub = await env.call("CancelSubscription", pb.CancelSubscriptionRequest(
        idempotency_key="c1", subscription_id="sub-john-wick", at=ts(when(20))))
    assert sub.ends_at.ToDatetime().day == 20 and sub.HasField("canceled_at")
    await expect_error(env, "UpdateSubscription", upd(
        idempotency_key="u7", subscription_id="sub-john-wick", effective_at=ts(when(25)),
        licenses=[pb.Quantity(code="seat", quantity=3)]), grpc.StatusCode.FAILED_PRECONDITION, "effective_at")
    at_end = await env.call("CancelSubscription", pb.CancelSubscriptionRequest(
        idempotency_key="c2", subscription_id="sub-john-wick", at=ts(when(3)), at_period_end=True))
    assert at_end.ends_at.ToDatetime().day == 20  # the period holding Aug 3 now ends Aug 20


async def test_usage_across_a_change_is_priced_by_event_time(env: InvoiceEnv) -> None:
    await seed_catalog(env)
    await env.call("CreatePlan", pb.CreatePlanRequest(
        idempotency_key="p-cheap", plan_id="cheap", currency="USD",
        usage_charges=[pb.UsageCharge(meter_code="input_tokens",
                                      price=pb.Price(model=pb.PER_UNIT, unit_amount="0.000001"))]))
    await env.call("IngestEvents", pb.IngestEventsRequest(idempotency_key="ev", events=[
        event("e1", "input_tokens", "1000000", when(5)), event("e2", "input_tokens", "1000000", when(25))]))
    await env.call("UpdateSubscription", pb.UpdateSubscriptionRequest(
        idempotency_key="u", subscription_id="sub-john-wick", effective_at=ts(when(15)), plan_id="cheap"))
    inv = await env.call("CreateDraft", _draft("john-wick", ts(when(1)), "d"))
    # 1M tokens on Aug 5 at 0.00001 = 10.00; 1M on Aug 25 at 0.000001 = 1.00 (output_tokens: no events, 0)
    assert [(i.code, i.amount) for i in inv.line_items if i.amount != "0.00"] == [("input_tokens", "10.00"),
                                                                                 ("input_tokens", "1.00")]
    split = await env.call("SplitDraft", pb.SplitDraftRequest(invoice_id=inv.invoice_id, split_at=[ts(when(10)),
                                                                                                   ts(when(20))]))
    assert sorted((c.charge_id, c.amount) for c in split.charges) == [("L001#1", "10.00"), ("L003#2", "1.00")]


async def test_cancelling_cuts_an_open_draft_to_the_new_end(env: InvoiceEnv) -> None:
    await env.call("CreatePlan", FEE_PLAN)
    await seed_catalog(env, plan=FEE_PLAN, licenses=[pb.Quantity(code="seat", quantity=1)])
    before = await env.call("CreateDraft", _draft("john-wick", ts(when(1)), "d1"))
    assert (before.period_end.ToDatetime().month, before.subtotal) == (9, "41.00")
    await env.call("CancelSubscription", pb.CancelSubscriptionRequest(
        idempotency_key="c", subscription_id="sub-john-wick", at=ts(when(11))))
    after = await env.call("CreateDraft", _draft("john-wick", ts(when(1)), "d2"))
    # the same invoice, now Aug 1 to Aug 11 (10 of 31 days): 31.00 -> 10.00, 10.00 -> 3.23 (3.2258)
    assert after.invoice_id == before.invoice_id and after.period_end.ToDatetime().day == 11
    assert _amounts(after) == [("platform", "10.00"), ("seat", "3.23")] and after.subtotal == "13.23"


async def test_cancelling_abandons_drafts_of_periods_it_removes(env: InvoiceEnv) -> None:
    """A billing user cancelling expects the cancel to win over a draft made ahead of time: the draft of a
    period entirely after the new end is ABANDONED in the cancel's transaction (its period no longer
    exists), and it freezes nothing: later changes before the end and another subscription's usage in
    that time are still accepted."""
    await seed_catalog(env)  # sub-john-wick prices input_tokens and output_tokens, monthly from Aug 1
    aug = await env.call("CreateDraft", _draft("john-wick", ts(when(1)), "d-aug"))
    sep = await env.call("CreateDraft", _draft("john-wick", ts(when(1, month=9)), "d-sep"))
    sub = await env.call("CancelSubscription", pb.CancelSubscriptionRequest(
        idempotency_key="c", subscription_id="sub-john-wick", at=ts(when(20))))
    assert sub.ends_at == ts(when(20))
    gone = await env.call("GetInvoice", pb.GetInvoiceRequest(invoice_id=sep.invoice_id))
    assert gone.status == pb.ABANDONED and "subscription canceled" in gone.abandon_reason and not gone.number
    cut = await env.call("GetInvoice", pb.GetInvoiceRequest(invoice_id=aug.invoice_id))
    assert (cut.status, cut.period_end) == (pb.DRAFT, ts(when(20)))
    # the abandoned September blocks nothing: a change before the end, an earlier cancel ...
    await env.call("UpdateSubscription", pb.UpdateSubscriptionRequest(
        idempotency_key="u", subscription_id="sub-john-wick", effective_at=ts(when(10)),
        price_overrides=[pb.PriceOverride(code="input_tokens", price=pb.Price(model=pb.PER_UNIT, unit_amount="1"))]))
    await env.call("CancelSubscription", pb.CancelSubscriptionRequest(
        idempotency_key="c2", subscription_id="sub-john-wick", at=ts(when(18))))
    # ... and another subscription taking the meters from then bills September's events
    await env.call("CreateSubscription", pb.CreateSubscriptionRequest(
        idempotency_key="s-2", subscription_id="sub-2", customer_id="john-wick", plan_id="chatppt-pro",
        anchor=ts(when(18))))
    await env.call("IngestEvents", pb.IngestEventsRequest(events=[
        event("e-sep", "input_tokens", "5", when(5, month=9))]))
    later = await env.call("CreateDraft", _draft("john-wick", ts(when(18)), "d-2", "sub-2"))
    assert [(i.code, i.quantity) for i in later.line_items if i.code == "input_tokens"] == [("input_tokens", "5")]
    assert await env.count("invoices") == 3  # Aug (cut, DRAFT), Sep (ABANDONED), sub-2's first


async def test_reads_list_subscriptions_phases_and_plan_versions(env: InvoiceEnv) -> None:
    await env.call("CreatePlan", FEE_PLAN)
    await seed_catalog(env, plan=FEE_PLAN, licenses=[pb.Quantity(code="seat", quantity=2)])
    await seed_catalog(env, plan=FEE_PLAN, customer_id="ann")
    for n in range(3):  # john-wick's others: fee plans, no meter, so several may run at once
        await env.call("CreateSubscription", pb.CreateSubscriptionRequest(
            idempotency_key=f"s-x{n}", subscription_id=f"sub-x{n}", customer_id="john-wick", plan_id="team",
            anchor=ts(when(1))))
    pages = [await env.call("ListSubscriptions", pb.ListSubscriptionsRequest(customer_id="john-wick", page_size=3))]
    while pages[-1].next_page_token:
        pages.append(await env.call("ListSubscriptions", pb.ListSubscriptionsRequest(
            customer_id="john-wick", page_size=3, page_token=pages[-1].next_page_token)))
    assert [[s.subscription_id for s in p.subscriptions] for p in pages] == [
        ["sub-john-wick", "sub-x0", "sub-x1"], ["sub-x2"]]
    everyone = await env.call("ListSubscriptions", pb.ListSubscriptionsRequest())
    assert [(s.customer_id, s.subscription_id) for s in everyone.subscriptions][:2] == [("ann", "sub-ann"),
                                                                                       ("john-wick", "sub-john-wick")]
    assert not everyone.next_page_token and not everyone.subscriptions[0].phases
    await expect_error(env, "ListSubscriptions", pb.ListSubscriptionsRequest(customer_id="ghost"),
                       grpc.StatusCode.NOT_FOUND, "customer_id")
    await expect_error(env, "ListSubscriptions", pb.ListSubscriptionsRequest(page_token="nope!"),
                       grpc.StatusCode.INVALID_ARGUMENT, "page_token")
    # the phases: the first at the anchor, then each change, oldest first
    await env.call("CreatePlanVersion", pb.CreatePlanRequest(
        idempotency_key="v2", plan_id="team", currency="USD", fixed_fees=[pb.FixedFee(code="platform", amount="40")],
        licenses=[pb.License(code="seat", unit_amount="10.00")]))
    await env.call("MigrateSubscription", pb.MigrateSubscriptionRequest(
        idempotency_key="m", subscription_id="sub-john-wick", effective_at=ts(when(10))))
    await env.call("UpdateSubscription", pb.UpdateSubscriptionRequest(
        idempotency_key="u", subscription_id="sub-john-wick", effective_at=ts(when(20)),
        licenses=[pb.Quantity(code="seat", quantity=5)], price_overrides=[pb.PriceOverride(code="seat", amount="8")]))
    sub = await env.call("GetSubscription", pb.GetSubscriptionRequest(subscription_id="sub-john-wick"))
    assert [(p.effective_at.ToDatetime().day, p.plan_version, [(q.code, q.quantity) for q in p.licenses],
             [(o.code, o.amount) for o in p.price_overrides]) for p in sub.phases] == [
        (1, 1, [("seat", 2)], []), (10, 2, [("seat", 2)], []), (20, 2, [("seat", 5)], [("seat", "8")])]
    assert all(p.HasField("created_at") for p in sub.phases)
    versions = await env.call("ListPlanVersions", pb.ListPlanVersionsRequest(plan_id="team", page_size=1))
    assert [v.version for v in versions.versions] == [1] and versions.next_page_token
    rest = await env.call("ListPlanVersions", pb.ListPlanVersionsRequest(
        plan_id="team", page_token=versions.next_page_token))
    assert [(v.version, v.fixed_fees[0].amount) for v in rest.versions] == [(2, "40")] and not rest.next_page_token
    await expect_error(env, "ListPlanVersions", pb.ListPlanVersionsRequest(plan_id="ghost"),
                       grpc.StatusCode.NOT_FOUND, "plan_id")
