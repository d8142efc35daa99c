"""Findings 5 and 7 of the hardening pass, over real gRPC:

- 5: an operator key (the worker, automation) granted unbounded COMPENSATORY credit. Now its grants
  fall under the support limits (per grant, per day, per key), with the same approval path above
  them; and every grant, whoever asks, above the tenant's approval threshold needs a second person.
- 7: the two-person rule compared key ids, so one person with two keys approved their own request;
  now it compares the keys' owners. A charge without a kind (CHARGE_KIND_UNSPECIFIED) was accepted
  by DebitCredits; now it is INVALID_ARGUMENT naming `charges[i].kind`.
"""

from __future__ import annotations

import grpc
from credits.ledger.v1 import ledger_pb2 as pb

from tests.ledger.requests_and_checks import table_counts
from tests.security.conftest import TENANT_A, Stack, code_of
from tests.security.test_support_grants import grant, lots_of, md, setup_unit


async def _approve(stack: Stack, key: str, request_id: str, n: str) -> tuple[grpc.StatusCode, str, object]:
    return await code_of(stack.ledger.ApproveGrantRequest(pb.ApproveGrantRequestRequest(
        idempotency_key=f"approve-{n}", request_id=request_id, reason="checked"), metadata=md(key)))


async def test_an_operator_key_cannot_grant_unbounded_compensatory_credit(stack: Stack) -> None:
    unit, account = await setup_unit(stack, per_grant="10", per_day="25")
    operator = await stack.key(TENANT_A, "operator", owner="system:automation")
    huge = await stack.ledger.GrantCredits(grant(account, unit, "999999999"), metadata=md(operator))
    assert not huge.lot_id and huge.grant_request.status == pb.PENDING_APPROVAL
    assert huge.grant_request.limit_exceeded == "max_per_grant"
    assert huge.grant_request.requested_by_owner == "system:automation"
    assert await lots_of(stack, account) == []
    first = await stack.ledger.GrantCredits(grant(account, unit, "10"), metadata=md(operator))
    second = await stack.ledger.GrantCredits(grant(account, unit, "10"), metadata=md(operator))
    third = await stack.ledger.GrantCredits(grant(account, unit, "10"), metadata=md(operator))
    assert first.lot_id and second.lot_id and not third.lot_id  # 30 > 25 a day, per key
    assert third.grant_request.limit_exceeded == "max_per_day"
    finance = await stack.key(TENANT_A, "finance", owner="fiona@tenant-a.example")
    code, _, approved = await _approve(stack, finance, third.grant_request.request_id, "op-third")
    assert code == grpc.StatusCode.OK and approved.lot_id  # type: ignore[attr-defined]
    assert sorted(lot.amount for lot in await lots_of(stack, account)) == ["10.00", "10.00", "10.00"]


async def test_every_grant_above_the_tenants_threshold_needs_a_second_person(stack: Stack) -> None:
    unit, account = await setup_unit(stack, per_grant=None, per_day=None)
    alice_finance = await stack.key(TENANT_A, "finance", owner="alice@tenant-a.example")
    alice_admin = await stack.key(TENANT_A, "admin", owner="alice@tenant-a.example")
    bob = await stack.key(TENANT_A, "finance", owner="bob@tenant-a.example")
    limits = await stack.ledger.SetSupportGrantLimits(pb.SetSupportGrantLimitsRequest(
        idempotency_key=f"threshold-{unit}", unit=unit, max_per_grant="10", max_per_day="25",
        approval_threshold="50"), metadata=md(bob))
    assert limits.approval_threshold == "50.00"
    got = await stack.ledger.GetSupportGrantLimits(pb.GetSupportGrantLimitsRequest(unit=unit), metadata=md(bob))
    assert (got.approval_threshold, got.is_default) == ("50.00", False)
    within = await stack.ledger.GrantCredits(grant(account, unit, "50", type=pb.PURCHASED), metadata=md(alice_finance))
    assert within.lot_id  # finance and admin have no limits, and 50 is not above the threshold
    above = await stack.ledger.GrantCredits(grant(account, unit, "60", type=pb.PURCHASED), metadata=md(alice_finance))
    assert not above.lot_id and above.grant_request.limit_exceeded == "approval_threshold"
    request_id = above.grant_request.request_id
    code, details, _ = await _approve(stack, alice_admin, request_id, "alice-admin")
    assert code == grpc.StatusCode.PERMISSION_DENIED and "two-person rule" in details and "alice@" in details
    code, _, approved = await _approve(stack, bob, request_id, "bob")
    assert code == grpc.StatusCode.OK
    assert approved.status == pb.APPROVED and approved.decided_by_owner == "bob@tenant-a.example"  # type: ignore
    assert sorted(lot.amount for lot in await lots_of(stack, account)) == ["50.00", "60.00"]


async def test_one_person_with_two_keys_cannot_approve_their_own_request(stack: Stack) -> None:
    unit, account = await setup_unit(stack, per_grant="10", per_day="25")
    carol_support = await stack.key(TENANT_A, "support", owner="carol@tenant-a.example")
    carol_finance = await stack.key(TENANT_A, "finance", owner="carol@tenant-a.example")
    dave = await stack.key(TENANT_A, "finance", owner="dave@tenant-a.example")
    pending = await stack.ledger.GrantCredits(grant(account, unit, "99"), metadata=md(carol_support))
    request_id = pending.grant_request.request_id
    assert pending.grant_request.requested_by_owner == "carol@tenant-a.example"
    for n, verb in enumerate(("ApproveGrantRequest", "RejectGrantRequest")):
        request_type = getattr(pb, f"{verb}Request")
        code, details, _ = await code_of(getattr(stack.ledger, verb)(request_type(
            idempotency_key=f"carol-{n}", request_id=request_id, reason="mine"), metadata=md(carol_finance)))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "two-person rule" in details
    assert await lots_of(stack, account) == []
    code, _, approved = await _approve(stack, dave, request_id, "dave")
    assert code == grpc.StatusCode.OK and approved.lot_id  # type: ignore[attr-defined]


async def test_a_charge_without_a_kind_is_refused_naming_it(stack: Stack) -> None:
    admin = md(stack.keys[TENANT_A]["admin"])
    await stack.ledger.CreateAccount(pb.CreateAccountRequest(idempotency_key="kindless", account_id="kindless"),
                                     metadata=admin)
    await stack.ledger.GrantCredits(pb.GrantCreditsRequest(idempotency_key="kindless-g", account_id="kindless",
                                                           unit="USD", amount="10", type=pb.PURCHASED), metadata=admin)
    before = await table_counts(stack.ledger_dsn)
    charges = [pb.Charge(charge_id="a", kind=pb.USAGE, amount="1"), pb.Charge(charge_id="b", amount="1")]
    for call in (stack.ledger.DebitCredits(pb.DebitCreditsRequest(
                     idempotency_key="kindless-d", account_id="kindless", unit="USD", charges=charges), metadata=admin),
                 stack.ledger.ReserveCredits(pb.ReserveCreditsRequest(
                     idempotency_key="kindless-r", hold_key="kindless-h", account_id="kindless", unit="USD",
                     charges=charges), metadata=admin)):
        code, details, _ = await code_of(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("charges[1].kind"), details
    batch = await stack.ledger.BatchDebitCredits(pb.BatchDebitCreditsRequest(debits=[pb.DebitCreditsRequest(
        idempotency_key="kindless-b", account_id="kindless", unit="USD", charges=charges)]), metadata=admin)
    assert "charges[1].kind" in str(batch.results[0])
    assert await table_counts(stack.ledger_dsn) == before
