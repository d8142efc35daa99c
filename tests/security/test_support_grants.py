"""Support grant limits and the two-person rule, over real gRPC (rules: service_runtime/permissions.py)."""

from __future__ import annotations

import asyncio
import hashlib
import itertools

import asyncpg
import grpc
import pytest
from credits.ledger.v1 import ledger_pb2 as pb
from credits.ledger.v1 import ledger_pb2_grpc

from ledger_service.server import create_ledger_server
from ledger_service.storage import grant_approvals as approvals
from service_runtime.settings import Settings
from tests.security.conftest import TENANT_A, TENANT_B, Stack, code_of

_n = itertools.count()


def md(key: str) -> list[tuple[str, str]]:
    return [("x-api-key", key)]


async def setup_unit(stack: Stack, per_grant: str | None = "10", per_day: str | None = "25") -> tuple[str, str]:
    """A fresh unit (scale 2) and account in tenant A, with support limits (None: the defaults)."""
    n = next(_n)
    unit, account = f"cr{n}", f"acct-{n}"
    admin = md(stack.keys[TENANT_A]["admin"])
    await stack.ledger.DefineUnit(pb.DefineUnitRequest(idempotency_key=f"u{n}", code=unit, scale=2), metadata=admin)
    await stack.ledger.CreateAccount(pb.CreateAccountRequest(idempotency_key=f"a{n}", account_id=account),
                                     metadata=admin)
    if per_grant is not None and per_day is not None:
        await stack.ledger.SetSupportGrantLimits(pb.SetSupportGrantLimitsRequest(
            idempotency_key=f"l{n}", unit=unit, max_per_grant=per_grant, max_per_day=per_day),
            metadata=md(stack.keys[TENANT_A]["finance"]))
    return unit, account


def grant(account: str, unit: str, amount: str, key: str = "", **kw: object) -> pb.GrantCreditsRequest:
    fields: dict[str, object] = {"type": pb.COMPENSATORY, "reason_code": "outage", "incident_id": "INC-1", **kw}
    return pb.GrantCreditsRequest(idempotency_key=key or f"g{next(_n)}", account_id=account, unit=unit,
                                  amount=amount, **fields)  # type: ignore[arg-type]


async def lots_of(stack: Stack, account: str) -> list[pb.Lot]:
    out = await stack.ledger.ListLots(pb.ListLotsRequest(account_id=account, include_empty=True),
                                      metadata=md(stack.keys[TENANT_A]["admin"]))
    return list(out.lots)


async def test_support_grant_within_limits_creates_the_lot(stack: Stack) -> None:
    unit, account = await setup_unit(stack)
    support = await stack.key(TENANT_A, "support")
    req = grant(account, unit, "10")
    lot = await stack.ledger.GrantCredits(req, metadata=md(support))
    assert lot.lot_id and not lot.HasField("grant_request")
    assert lot.granted_by == support.split(".")[0][3:] and lot.reason_code == "outage"
    assert await stack.ledger.GrantCredits(req, metadata=md(support)) == lot  # replay
    assert [x.lot_id for x in await lots_of(stack, account)] == [lot.lot_id]


async def test_support_grant_over_the_per_grant_limit_is_pending_with_no_lot(stack: Stack) -> None:
    unit, account = await setup_unit(stack)
    support = await stack.key(TENANT_A, "support")
    req = grant(account, unit, "10.01")
    out = await stack.ledger.GrantCredits(req, metadata=md(support))
    assert out.lot_id == "" and out.grant_request.status == pb.PENDING_APPROVAL
    assert out.grant_request.limit_exceeded == "max_per_grant" and out.grant_request.grant.amount == "10.01"
    assert await stack.ledger.GrantCredits(req, metadata=md(support)) == out  # a retry asks once
    assert await lots_of(stack, account) == []
    got = await stack.ledger.GetGrantRequest(pb.GetGrantRequestRequest(request_id=out.grant_request.request_id),
                                             metadata=md(support))
    assert got.status == pb.PENDING_APPROVAL and got.requested_by == support.split(".")[0][3:]
    listed = await stack.ledger.ListGrantRequests(pb.ListGrantRequestsRequest(status=pb.PENDING_APPROVAL,
                                                                              account_id=account),
                                                  metadata=md(stack.keys[TENANT_A]["finance"]))
    assert [r.request_id for r in listed.requests] == [out.grant_request.request_id]
    code, details, _ = await code_of(stack.ledger.GrantCredits(grant(account, unit, "1", key=req.idempotency_key),
                                                               metadata=md(support)))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "idempotency_key" in details


async def test_the_daily_limit_counts_one_support_keys_grants_of_the_last_day(stack: Stack) -> None:
    unit, account = await setup_unit(stack)
    support, colleague = await stack.key(TENANT_A, "support"), await stack.key(TENANT_A, "support")
    for amount in ("10", "10", "5"):
        assert (await stack.ledger.GrantCredits(grant(account, unit, amount), metadata=md(support))).lot_id
    over = await stack.ledger.GrantCredits(grant(account, unit, "0.01"), metadata=md(support))
    assert over.lot_id == "" and over.grant_request.limit_exceeded == "max_per_day"
    assert len(await lots_of(stack, account)) == 3
    # Another support key has its own allowance; finance has none to respect.
    assert (await stack.ledger.GrantCredits(grant(account, unit, "10"), metadata=md(colleague))).lot_id
    assert (await stack.ledger.GrantCredits(grant(account, unit, "1000"),
                                            metadata=md(stack.keys[TENANT_A]["finance"]))).lot_id


async def test_concurrent_support_grants_never_exceed_the_daily_limit(stack: Stack) -> None:
    unit, account = await setup_unit(stack, per_grant="10", per_day="25")
    support = await stack.key(TENANT_A, "support")
    outs = await asyncio.gather(*(stack.ledger.GrantCredits(grant(account, unit, "10"), metadata=md(support))
                                  for _ in range(6)))
    assert sum(1 for o in outs if o.lot_id) == 2
    assert sum(1 for o in outs if o.grant_request.status == pb.PENDING_APPROVAL) == 4
    assert len(await lots_of(stack, account)) == 2


async def test_support_may_grant_only_compensatory_credit_with_reason_and_incident(stack: Stack) -> None:
    unit, account = await setup_unit(stack)
    support = md(await stack.key(TENANT_A, "support"))
    cases = [
        (grant(account, unit, "1", type=pb.PROMOTIONAL), grpc.StatusCode.PERMISSION_DENIED, "COMPENSATORY"),
        (grant(account, unit, "1", type=pb.PURCHASED), grpc.StatusCode.PERMISSION_DENIED, "COMPENSATORY"),
        (grant(account, unit, "1", reason_code=""), grpc.StatusCode.INVALID_ARGUMENT, "reason_code"),
        (grant(account, unit, "1", incident_id=""), grpc.StatusCode.INVALID_ARGUMENT, "incident_id"),
        (grant(account, unit, "1", cost_basis="1"), grpc.StatusCode.INVALID_ARGUMENT, "cost_basis"),
        (grant("no-such-account", unit, "50"), grpc.StatusCode.NOT_FOUND, "account_id"),
    ]
    for req, status, field in cases:
        code, details, _ = await code_of(stack.ledger.GrantCredits(req, metadata=support))
        assert (code, field in details) == (status, True), (req, details)
    assert await lots_of(stack, account) == []
    assert await stack.ledger.ListGrantRequests(pb.ListGrantRequestsRequest(account_id="no-such-account"),
                                                metadata=support) == pb.ListGrantRequestsResponse()


async def test_finance_approval_creates_the_lot_exactly_once(stack: Stack) -> None:
    unit, account = await setup_unit(stack)
    support = await stack.key(TENANT_A, "support")
    req = grant(account, unit, "40", expires_at=None)
    pending = (await stack.ledger.GrantCredits(req, metadata=md(support))).grant_request
    request_id = pending.request_id
    finance, admin = stack.keys[TENANT_A]["finance"], stack.keys[TENANT_A]["admin"]
    code, details, _ = await code_of(stack.ledger.ApproveGrantRequest(
        pb.ApproveGrantRequestRequest(idempotency_key="ap-s", request_id=request_id), metadata=md(support)))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "support" in details
    approvals_ = await asyncio.gather(*(stack.ledger.ApproveGrantRequest(
        pb.ApproveGrantRequestRequest(idempotency_key=f"ap-{i}", request_id=request_id, reason="ok"),
        metadata=md(key)) for i, key in enumerate((finance, finance, admin))))
    assert {a.status for a in approvals_} == {pb.APPROVED}
    assert len({a.lot_id for a in approvals_}) == 1 and len({a.decided_by for a in approvals_}) == 1
    lots = await lots_of(stack, account)
    assert [x.lot_id for x in lots] == [approvals_[0].lot_id]
    assert lots[0].amount == "40.00" and lots[0].incident_id == "INC-1"
    assert lots[0].granted_by == approvals_[0].decided_by != pending.requested_by
    code, details, _ = await code_of(stack.ledger.RejectGrantRequest(
        pb.RejectGrantRequestRequest(idempotency_key="rj", request_id=request_id, reason="no"), metadata=md(finance)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "APPROVED" in details
    # The original call, retried, still answers what it answered: the request it created.
    assert (await stack.ledger.GrantCredits(req, metadata=md(support))).grant_request.request_id == request_id
    assert len(await lots_of(stack, account)) == 1


async def test_a_rejected_request_creates_no_lot(stack: Stack) -> None:
    unit, account = await setup_unit(stack)
    support = await stack.key(TENANT_A, "support")
    request_id = (await stack.ledger.GrantCredits(grant(account, unit, "99"),
                                                  metadata=md(support))).grant_request.request_id
    finance = md(stack.keys[TENANT_A]["finance"])
    code, details, _ = await code_of(stack.ledger.RejectGrantRequest(
        pb.RejectGrantRequestRequest(idempotency_key="rj0", request_id=request_id), metadata=finance))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "reason" in details
    rejected = await stack.ledger.RejectGrantRequest(
        pb.RejectGrantRequestRequest(idempotency_key="rj1", request_id=request_id, reason="too much"), metadata=finance)
    assert rejected.status == pb.REJECTED and rejected.decision_reason == "too much" and not rejected.lot_id
    code, details, _ = await code_of(stack.ledger.ApproveGrantRequest(
        pb.ApproveGrantRequestRequest(idempotency_key="ap", request_id=request_id), metadata=finance))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "REJECTED" in details
    assert await lots_of(stack, account) == []


async def test_the_key_that_asked_cannot_decide_its_own_request(stack: Stack) -> None:
    """Even with a finance role (a key whose role changed), the requester's key id may not decide."""
    unit, account = await setup_unit(stack)
    support = await stack.key(TENANT_A, "support")
    request_id = (await stack.ledger.GrantCredits(grant(account, unit, "99"),
                                                  metadata=md(support))).grant_request.request_id
    conn = await asyncpg.connect(stack.ledger_dsn)
    try:
        await conn.execute("UPDATE api_keys SET role = 'finance' WHERE key_id = $1", support.split(".")[0][3:])
    finally:
        await conn.close()
    server, port, pool = await create_ledger_server(stack.ledger_dsn, "127.0.0.1:0", Settings())  # no key cache
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        for call in (stub.ApproveGrantRequest(pb.ApproveGrantRequestRequest(idempotency_key="self",
                                                                            request_id=request_id),
                                              metadata=md(support)),
                     stub.RejectGrantRequest(pb.RejectGrantRequestRequest(idempotency_key="self2",
                                                                          request_id=request_id, reason="x"),
                                             metadata=md(support))):
            code, details, _ = await code_of(call)
            assert code == grpc.StatusCode.PERMISSION_DENIED and "two-person rule" in details
    finally:
        await channel.close()
        await server.stop(0)
        await pool.close()
    got = await stack.ledger.GetGrantRequest(pb.GetGrantRequestRequest(request_id=request_id),
                                             metadata=md(stack.keys[TENANT_A]["readonly"]))
    assert got.status == pb.PENDING_APPROVAL and await lots_of(stack, account) == []


async def test_an_interrupted_approval_finishes_with_the_same_lot(stack: Stack) -> None:
    """The lot was committed but the process died before recording the decision."""
    from ledger_service.api import packing
    from ledger_service.domain.model import Lot, LotType, Scope
    from ledger_service.operations.grants import write_lot
    from ledger_service.storage.account_writer import AccountWriter, Operation

    unit, account = await setup_unit(stack)
    support = await stack.key(TENANT_A, "support")
    pending = (await stack.ledger.GrantCredits(grant(account, unit, "99"), metadata=md(support))).grant_request
    pool = await asyncpg.create_pool(stack.ledger_dsn, min_size=1, max_size=2)
    try:
        from datetime import UTC, datetime
        from decimal import Decimal

        now = datetime.now(UTC)
        lot = Lot(lot_id="lot_interrupted", account_id=account, lot_type=LotType.COMPENSATORY, unit=unit,
                  amount=9900, priority=50, effective_at=now, expires_at=None, scope=Scope(frozenset(), frozenset()),
                  cost_basis=Decimal(0), seq=0, usable_until=None, incident_id="INC-1", reason_code="outage")
        raw = pending.grant.SerializeToString()
        await AccountWriter(pool).submit(TENANT_A, account, Operation(
            "/credits.ledger.v1.LedgerService/ApproveGrantRequest", approvals.approval_key(pending.request_id),
            hashlib.sha256(raw).digest(), write_lot(lot), lambda x: packing.lot(x, 2)))
    finally:
        await pool.close()
    finance = md(stack.keys[TENANT_A]["finance"])
    code, _, _ = await code_of(stack.ledger.RejectGrantRequest(
        pb.RejectGrantRequestRequest(idempotency_key="r", request_id=pending.request_id, reason="x"), metadata=finance))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    done = await stack.ledger.ApproveGrantRequest(
        pb.ApproveGrantRequestRequest(idempotency_key="a", request_id=pending.request_id), metadata=finance)
    assert done.status == pb.APPROVED and done.lot_id == "lot_interrupted"
    assert [x.lot_id for x in await lots_of(stack, account)] == ["lot_interrupted"]


async def test_limits_are_set_by_finance_and_default_from_the_environment(stack: Stack,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    unit, account = await setup_unit(stack, per_grant=None, per_day=None)
    readonly, support = md(stack.keys[TENANT_A]["readonly"]), md(await stack.key(TENANT_A, "support"))
    got = await stack.ledger.GetSupportGrantLimits(pb.GetSupportGrantLimitsRequest(unit=unit), metadata=readonly)
    assert (got.max_per_grant, got.max_per_day, got.is_default) == ("100.00", "500.00", True)
    monkeypatch.setenv("CREDITS_SUPPORT_MAX_GRANT", "2")
    monkeypatch.setenv("CREDITS_SUPPORT_MAX_DAILY", "3")
    assert (await stack.ledger.GrantCredits(grant(account, unit, "2"), metadata=support)).lot_id
    assert (await stack.ledger.GrantCredits(grant(account, unit, "2"), metadata=support)).grant_request.status \
        == pb.PENDING_APPROVAL
    req = pb.SetSupportGrantLimitsRequest(idempotency_key=f"lim-{unit}", unit=unit, max_per_grant="5",
                                          max_per_day="50")
    for role in ("support", "operator", "service", "readonly"):
        code, _, _ = await code_of(stack.ledger.SetSupportGrantLimits(req, metadata=md(stack.keys[TENANT_A][role])))
        assert code == grpc.StatusCode.PERMISSION_DENIED
    bad = pb.SetSupportGrantLimitsRequest(idempotency_key="bad", unit=unit, max_per_grant="60", max_per_day="50")
    finance = md(stack.keys[TENANT_A]["finance"])
    code, details, _ = await code_of(stack.ledger.SetSupportGrantLimits(bad, metadata=finance))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_per_grant" in details
    out = await stack.ledger.SetSupportGrantLimits(req, metadata=finance)
    assert (out.max_per_grant, out.max_per_day, out.is_default) == ("5.00", "50.00", False)
    assert (await stack.ledger.GrantCredits(grant(account, unit, "5"), metadata=support)).lot_id
    # Another tenant has no such unit: refused like any unknown unit, nothing of tenant A's shown.
    code, details, _ = await code_of(stack.ledger.GetSupportGrantLimits(
        pb.GetSupportGrantLimitsRequest(unit=unit), metadata=md(stack.keys[TENANT_B]["admin"])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "unit" in details


async def test_operator_may_grant_only_outage_compensation(stack: Stack) -> None:
    unit, account = await setup_unit(stack)
    operator = md(stack.keys[TENANT_A]["operator"])
    code, details, _ = await code_of(stack.ledger.GrantCredits(grant(account, unit, "1", type=pb.PROMOTIONAL),
                                                               metadata=operator))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "operator" in details
    lot = await stack.ledger.GrantCredits(grant(account, unit, "5", reason_code=""), metadata=operator)
    assert lot.lot_id  # within the limits (10 per grant, 25 a day): the CompensateOutage saga's grants
    # Above them, as for support keys (finding 5 of #16): a request for a second person, no lot.
    pending = await stack.ledger.GrantCredits(grant(account, unit, "1000", reason_code=""), metadata=operator)
    assert not pending.lot_id and pending.grant_request.limit_exceeded == "max_per_grant"
