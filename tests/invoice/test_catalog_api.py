"""Catalog over real gRPC: creation, idempotency, bad input naming the field with nothing written."""

from __future__ import annotations

import grpc
import pytest
from credits.invoice.v1 import invoice_pb2 as pb

from invoice_service.api.permissions import PERMISSIONS, SERVICE_NAME
from tests.invoice.conftest import InvoiceEnv, seed_catalog, ts, when
from tests.tenancy import add_tenant_key


async def expect_error(env: InvoiceEnv, method: str, request: object, code: grpc.StatusCode, field: str,
                       key: str | None = None) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.call(method, request, key)
    assert err.value.code() == code, err.value.details()
    assert field in (err.value.details() or "")
    return err.value.details() or ""


def per_unit(meter: str, amount: str = "1") -> pb.UsageCharge:
    return pb.UsageCharge(meter_code=meter, price=pb.Price(model=pb.PER_UNIT, unit_amount=amount))


async def test_every_rpc_has_a_permission_entry() -> None:
    methods = pb.DESCRIPTOR.services_by_name["InvoiceService"].methods_by_name
    assert set(PERMISSIONS) == {f"/{SERVICE_NAME}/{m}" for m in methods}


async def test_catalog_round_trip(env: InvoiceEnv) -> None:
    await seed_catalog(env, anchor=when(1, 9))
    customer = await env.call("GetCustomer", pb.GetCustomerRequest(customer_id="john-wick"))
    assert customer.ledger_account_id == "acct-john-wick"
    plan = await env.call("GetPlan", pb.GetPlanRequest(plan_id="chatppt-pro"))
    assert plan.currency == "USD" and plan.interval == pb.MONTHLY
    assert [u.price.unit_amount for u in plan.usage_charges] == ["0.00001", "0.00003"]
    sub = await env.call("GetSubscription", pb.GetSubscriptionRequest(subscription_id="sub-john-wick"))
    assert sub.anchor == ts(when(1, 9))
    meter = await env.call("GetMeter", pb.GetMeterRequest(meter_code="input_tokens"))
    assert meter.aggregation == pb.SUM


async def test_same_key_same_request_replays_and_different_request_conflicts(env: InvoiceEnv) -> None:
    req = pb.CreateCustomerRequest(idempotency_key="k1", customer_id="c1", name="A", ledger_account_id="a1")
    first = await env.call("CreateCustomer", req)
    assert await env.call("CreateCustomer", req) == first
    other = pb.CreateCustomerRequest(idempotency_key="k1", customer_id="c1", name="B", ledger_account_id="a1")
    await expect_error(env, "CreateCustomer", other, grpc.StatusCode.ALREADY_EXISTS, "idempotency_key")
    again = pb.CreateCustomerRequest(idempotency_key="k2", customer_id="c1", name="A", ledger_account_id="a1")
    await expect_error(env, "CreateCustomer", again, grpc.StatusCode.ALREADY_EXISTS, "customer_id")
    assert await env.count("customers") == 1


async def test_bad_catalog_input_names_the_field_and_writes_nothing(env: InvoiceEnv) -> None:
    bad = grpc.StatusCode.INVALID_ARGUMENT
    await expect_error(env, "CreateCustomer", pb.CreateCustomerRequest(
        idempotency_key="k", customer_id="bad id!", ledger_account_id="a"), bad, "customer_id")
    await expect_error(env, "CreateCustomer", pb.CreateCustomerRequest(
        idempotency_key="k", customer_id="c" * 65, ledger_account_id="a"), bad, "customer_id")
    await expect_error(env, "CreateCustomer", pb.CreateCustomerRequest(
        customer_id="c", ledger_account_id="a"), bad, "idempotency_key")
    await expect_error(env, "CreateMeter", pb.CreateMeterRequest(
        idempotency_key="k", meter_code="m"), bad, "aggregation")
    await expect_error(env, "CreateMeter", pb.CreateMeterRequest(
        idempotency_key="k", meter_code="m", aggregation=pb.UNIQUE_COUNT), bad, "property")
    await expect_error(env, "CreateMeter", pb.CreateMeterRequest(
        idempotency_key="k", meter_code="m", aggregation=pb.MAX, allow_negative=True), bad, "allow_negative")
    await env.call("CreateMeter", pb.CreateMeterRequest(idempotency_key="m", meter_code="m", aggregation=pb.SUM))

    def plan(**kw: object) -> pb.CreatePlanRequest:
        base: dict[str, object] = {"idempotency_key": "p", "plan_id": "p", "currency": "USD",
                                   "usage_charges": [per_unit("m")]}
        base.update(kw)
        return pb.CreatePlanRequest(**base)  # type: ignore[arg-type]

    await expect_error(env, "CreatePlan", plan(currency=""), bad, "currency")
    await expect_error(env, "CreatePlan", plan(currency="XYZ"), bad, "currency")
    await expect_error(env, "CreatePlan", plan(usage_charges=[per_unit("nope")]), grpc.StatusCode.NOT_FOUND,
                       "usage_charges[0].meter_code")
    await expect_error(env, "CreatePlan", plan(usage_charges=[per_unit("m"), per_unit("m")]), bad,
                       "usage_charges[1].meter_code")
    overlapping = pb.Price(model=pb.GRADUATED, tiers=[
        pb.Tier(up_to="100", unit_amount="1"), pb.Tier(up_to="50", unit_amount="1"), pb.Tier(unit_amount="1")])
    await expect_error(env, "CreatePlan", plan(usage_charges=[pb.UsageCharge(meter_code="m", price=overlapping)]),
                       bad, "usage_charges[0].price.tiers[1].up_to")
    await expect_error(env, "CreatePlan", plan(usage_charges=[pb.UsageCharge(meter_code="m")]), bad,
                       "usage_charges[0].price")
    await expect_error(env, "CreatePlan", plan(fixed_fees=[pb.FixedFee(code="f", amount="-1")]), bad,
                       "fixed_fees[0].amount")
    assert await env.count("plans") == 0

    await env.call("CreatePlan", plan(add_ons=[pb.AddOn(code="sso", unit_amount="5")]))
    await env.call("CreateCustomer", pb.CreateCustomerRequest(idempotency_key="c", customer_id="c",
                                                              ledger_account_id="a"))

    def sub(**kw: object) -> pb.CreateSubscriptionRequest:
        base: dict[str, object] = {"idempotency_key": "s", "subscription_id": "s", "customer_id": "c",
                                   "plan_id": "p", "anchor": ts(when(1))}
        base.update(kw)
        return pb.CreateSubscriptionRequest(**base)  # type: ignore[arg-type]

    await expect_error(env, "CreateSubscription", sub(customer_id="ghost"), grpc.StatusCode.NOT_FOUND, "customer_id")
    await expect_error(env, "CreateSubscription", sub(plan_id="ghost"), grpc.StatusCode.NOT_FOUND, "plan_id")
    await expect_error(env, "CreateSubscription", sub(anchor=None), bad, "anchor")
    await expect_error(env, "CreateSubscription", sub(add_ons=[pb.Quantity(code="seat", quantity=1)]), bad,
                       "add_ons[0].code")
    await expect_error(env, "CreateSubscription", sub(add_ons=[pb.Quantity(code="sso", quantity=-1)]), bad,
                       "add_ons[0].quantity")
    assert await env.count("subscriptions") == 0
    first = await env.call("CreateSubscription", sub())
    # several subscriptions per customer (issue #19); the subscription id stays unique, the key idempotent;
    # a second one may not price meter m too (tests/invoice/test_double_pricing_api.py)
    await env.call("CreatePlan", plan(idempotency_key="p2", plan_id="p2", usage_charges=[],
                                      add_ons=[pb.AddOn(code="sso", unit_amount="5")]))
    second = await env.call("CreateSubscription", sub(idempotency_key="s2", subscription_id="s2", plan_id="p2"))
    assert second.customer_id == first.customer_id and second.subscription_id == "s2"
    assert await env.call("CreateSubscription", sub(idempotency_key="s2", subscription_id="s2",
                                                    plan_id="p2")) == second
    await expect_error(env, "CreateSubscription", sub(idempotency_key="s3", subscription_id="s2"),
                       grpc.StatusCode.ALREADY_EXISTS, "subscription_id")


async def test_tenants_are_isolated_and_roles_are_enforced(env: InvoiceEnv) -> None:
    await seed_catalog(env)
    other = await add_tenant_key(env.dsn, "t2")
    await expect_error(env, "GetCustomer", pb.GetCustomerRequest(customer_id="john-wick"),
                       grpc.StatusCode.NOT_FOUND, "customer_id", key=other)
    readonly = await add_tenant_key(env.dsn, "t1", role="readonly")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.call("CreateMeter", pb.CreateMeterRequest(idempotency_key="x", meter_code="x",
                                                            aggregation=pb.SUM), readonly)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (await env.call("GetMeter", pb.GetMeterRequest(meter_code="input_tokens"), readonly)).meter_code
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.call("GetMeter", pb.GetMeterRequest(meter_code="input_tokens"), "ck_nope.nope")
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_due_periods_for_the_billing_cycle(env: InvoiceEnv) -> None:
    await seed_catalog(env, anchor=when(1, month=6))
    due = await env.call("ListDueSubscriptions", pb.ListDueSubscriptionsRequest(as_of=ts(when(15, month=9))))
    # with the 50-year test grace nothing has ended long enough ago; 60 years on, June..August are due
    assert list(due.periods) == []
    later = await env.call("ListDueSubscriptions", pb.ListDueSubscriptionsRequest(
        as_of=ts(when(15, month=9, year=2086))))
    starts = [p.period_start for p in later.periods][:3]
    assert starts == [ts(when(1, month=6)), ts(when(1, month=7)), ts(when(1, month=8))]
    assert later.periods[0].customer_id == "john-wick" and later.periods[0].period_end == ts(when(1, month=7))


async def test_due_periods_page_with_a_cursor(env: InvoiceEnv) -> None:
    """Pages of any size walk the same periods as one page, in (customer, start) order, each once —
    across customers and inside one customer's months; a finalized-elsewhere period never shows."""
    await seed_catalog(env, customer_id="c-a", anchor=when(1, month=3))   # 6 periods due
    plan = pb.CreatePlanRequest(plan_id="chatppt-pro")
    for customer, month in (("c-b", 7), ("c-c", 8), ("c-d", 5)):          # 2, 1 and 4 periods due
        await seed_catalog(env, plan=plan, customer_id=customer, anchor=when(1, month=month))
    as_of = ts(when(15, month=9, year=2076))  # minus the 50-year test grace: September 28th, 2026
    everything = await env.call("ListDueSubscriptions", pb.ListDueSubscriptionsRequest(as_of=as_of, page_size=1000))
    expected = [(p.customer_id, p.period_start.seconds) for p in everything.periods]
    assert len(expected) == 13 and expected == sorted(expected) and everything.next_page_token == ""
    for size in (1, 2, 5, 6, 13):
        walked: list[tuple[str, int]] = []
        token, pages = "", 0
        while True:
            page = await env.call("ListDueSubscriptions", pb.ListDueSubscriptionsRequest(
                as_of=as_of, page_size=size, page_token=token))
            assert len(page.periods) <= size
            walked += [(p.customer_id, p.period_start.seconds) for p in page.periods]
            token, pages = page.next_page_token, pages + 1
            if not token:
                break
        assert walked == expected, size
        assert pages <= len(expected) // size + 2


async def test_concurrent_requests_with_one_key_apply_once(env: InvoiceEnv) -> None:
    import asyncio

    req = pb.CreateMeterRequest(idempotency_key="race", meter_code="race", aggregation=pb.COUNT)
    results = await asyncio.gather(*(env.call("CreateMeter", req) for _ in range(8)))
    assert all(r == results[0] for r in results)
    assert await env.count("meters") == 1
