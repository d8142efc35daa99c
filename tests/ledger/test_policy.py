"""Consumption order (SPEC §3): the default policy, a per-account override, and ExplainAllocation."""

from datetime import UTC, datetime, timedelta

from credits.ledger.v1 import ledger_pb2 as pb

from tests.ledger.conftest import Ledger
from tests.ledger.requests_and_checks import charge, ts


async def test_default_order_and_account_override_with_explain(ledger: Ledger) -> None:
    await ledger.account("acme")
    soon = ts(datetime.now(UTC) + timedelta(days=3))
    later = ts(datetime.now(UTC) + timedelta(days=30))
    paid = await ledger.grant("acme", "5", type=pb.PURCHASED, cost_basis="1", key="g1")
    promo_late = await ledger.grant("acme", "5", type=pb.PROMOTIONAL, expires_at=later, key="g2")
    promo_soon = await ledger.grant("acme", "5", type=pb.PROMOTIONAL, expires_at=soon, key="g3")
    urgent = await ledger.grant("acme", "5", type=pb.PURCHASED, priority=1, key="g4")
    narrow = await ledger.grant("acme", "5", type=pb.PROMOTIONAL, expires_at=soon, key="g5",
                                scope=pb.Scope(kinds=[pb.USAGE], names=["gpt"]))

    async def order(key: str) -> list[str]:
        hold = await ledger.stub.ReserveCredits(pb.ReserveCreditsRequest(
            idempotency_key=key, hold_key=key, account_id="acme", unit="USD",
            charges=[charge("25", name="gpt")]), metadata=ledger.md)
        await ledger.stub.ReleaseHold(pb.ReleaseHoldRequest(idempotency_key=f"{key}-rel", hold_key=key),
                                      metadata=ledger.md)
        return [a.lot_id for a in hold.allocations]

    # priority first; then soonest expiry; narrowest scope breaks the tie; purchased (no expiry) last.
    assert await order("h1") == [urgent.lot_id, narrow.lot_id, promo_soon.lot_id, promo_late.lot_id, paid.lot_id]
    policy = await ledger.stub.SetConsumptionPolicy(pb.SetConsumptionPolicyRequest(
        idempotency_key="p", account_id="acme", sort_keys=[pb.TYPE_ORDER, pb.CREATION_ORDER],
        type_order=[pb.PURCHASED, pb.PROMOTIONAL]), metadata=ledger.md)
    assert policy.version == 1
    assert await order("h2") == [paid.lot_id, urgent.lot_id, promo_late.lot_id, promo_soon.lot_id, narrow.lot_id]
    hold = await ledger.stub.GetHold(pb.GetHoldRequest(hold_key="h2"), metadata=ledger.md)
    assert {a.policy_version for a in hold.allocations} == {1}
    ex = await ledger.stub.ExplainAllocation(pb.ExplainAllocationRequest(hold_key="h2"), metadata=ledger.md)
    assert ex.policy.version == 1
    (c,) = ex.charges
    assert [lot.lot_id for lot in c.lots][:2] == [paid.lot_id, urgent.lot_id]
    assert c.lots[0].allocated == "5.00" and c.lots[0].sort_values[0].startswith("type_order=PURCHASED")
    # Another account still uses the tenant default.
    got = await ledger.stub.GetConsumptionPolicy(pb.GetConsumptionPolicyRequest(), metadata=ledger.md)
    assert got.version == 0 and got.sort_keys[0] == pb.PRIORITY_ASC


async def test_explain_says_why_a_lot_was_skipped(ledger: Ledger) -> None:
    await ledger.account("acme")
    addon_only = await ledger.grant("acme", "5", type=pb.PROMOTIONAL, scope=pb.Scope(kinds=[pb.ADD_ON]))
    await ledger.grant("acme", "5", type=pb.PURCHASED)
    await ledger.stub.ReserveCredits(pb.ReserveCreditsRequest(
        idempotency_key="r", hold_key="h", account_id="acme", unit="USD",
        charges=[charge("3", kind=pb.USAGE, name="gpt")]), metadata=ledger.md)
    ex = await ledger.stub.ExplainAllocation(pb.ExplainAllocationRequest(hold_key="h"), metadata=ledger.md)
    skipped = next(lot for lot in ex.charges[0].lots if lot.lot_id == addon_only.lot_id)
    assert not skipped.eligible and "scope" in skipped.why and skipped.allocated == "0.00"
