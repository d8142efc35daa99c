"""ReverseHold (formerly ReverseReference, kept as a deprecated alias): a committed hold's postings go
back to their original lots, once; both names are one verb with one idempotency."""

from __future__ import annotations

import asyncpg
import grpc
from credits.ledger.v1 import ledger_pb2 as pb

from tests.ledger.conftest import Ledger
from tests.ledger.requests_and_checks import charge, rejected, table_counts

REVERSE_REFERENCE = "/credits.ledger.v1.LedgerService/ReverseReference"


async def _committed_hold(ledger: Ledger) -> tuple[str, pb.Lot, pb.Lot]:
    await ledger.account("acme")
    promo = await ledger.grant("acme", "3.00", type=pb.PROMOTIONAL, priority=10)
    paid = await ledger.grant("acme", "20.00")
    await ledger.stub.ReserveCredits(pb.ReserveCreditsRequest(
        idempotency_key="r", hold_key="inv/INV-1/run-1", account_id="acme", unit="USD",
        charges=[charge("8.00", charge_id="L001#1")]), metadata=ledger.md)
    await ledger.stub.CommitHold(pb.CommitHoldRequest(idempotency_key="c", hold_key="inv/INV-1/run-1", amount="5.00"),
                                 metadata=ledger.md)
    return "inv/INV-1/run-1", promo, paid


async def test_reverse_hold_gives_the_posted_credit_back_to_its_lots(ledger: Ledger) -> None:
    hold_key, promo, paid = await _committed_hold(ledger)
    out = await ledger.stub.ReverseHold(pb.ReverseHoldRequest(idempotency_key="rev", hold_key=hold_key,
                                                              reason="refund"), metadata=ledger.md)
    assert out.hold_key == hold_key and out.expired_at_once == "0.00"
    assert {(a.lot_id, a.amount, a.charge_id) for a in out.reinstated} == {
        (promo.lot_id, "3.00", "L001#1"), (paid.lot_id, "2.00", "L001#1")}
    bal = (await ledger.stub.GetBalance(pb.GetBalanceRequest(account_id="acme"), metadata=ledger.md)).totals[0]
    assert (bal.available, bal.consumed, bal.reinstated) == ("23.00", "5.00", "5.00")  # consumed stays: journal
    await rejected(ledger.stub.ReverseHold(pb.ReverseHoldRequest(idempotency_key="rev2", hold_key=hold_key),
                                           metadata=ledger.md), grpc.StatusCode.FAILED_PRECONDITION, "already")
    assert (await ledger.stub.VerifyJournal(pb.VerifyJournalRequest(), metadata=ledger.md)).ok


async def test_both_names_are_one_verb_for_idempotency(ledger: Ledger) -> None:
    hold_key, _, _ = await _committed_hold(ledger)
    fields = dict(idempotency_key="rev", hold_key=hold_key, reason="refund")
    old = await ledger.stub.ReverseReference(pb.ReverseReferenceRequest(**fields), metadata=ledger.md)
    before = await table_counts(ledger.dsn)
    new = await ledger.stub.ReverseHold(pb.ReverseHoldRequest(**fields), metadata=ledger.md)
    assert new.SerializeToString() == old.SerializeToString()
    assert await table_counts(ledger.dsn) == before  # a replay, not a second reversal
    await rejected(ledger.stub.ReverseHold(pb.ReverseHoldRequest(**{**fields, "reason": "other"}), metadata=ledger.md),
                   grpc.StatusCode.ALREADY_EXISTS, "idempotency_key")


async def test_keys_stored_under_the_old_name_replay_on_both(ledger: Ledger) -> None:
    """A key stored before the rename (method ReverseReference) replays through ReverseHold: an
    in-flight saga that reversed under the old name may retry under the new one."""
    hold_key, _, _ = await _committed_hold(ledger)
    req = pb.ReverseHoldRequest(idempotency_key="rev", hold_key=hold_key, reason="refund")
    first = await ledger.stub.ReverseHold(req, metadata=ledger.md)
    conn = await asyncpg.connect(ledger.dsn)
    try:
        await conn.execute("UPDATE idempotency_keys SET method = $1 WHERE key = 'rev'", REVERSE_REFERENCE)
    finally:
        await conn.close()
    before = await table_counts(ledger.dsn)
    assert await ledger.stub.ReverseHold(req, metadata=ledger.md) == first
    alias = await ledger.stub.ReverseReference(pb.ReverseReferenceRequest.FromString(req.SerializeToString()),
                                               metadata=ledger.md)
    assert alias.SerializeToString() == first.SerializeToString()
    assert await table_counts(ledger.dsn) == before


async def test_support_limits_of_a_builtin_unit_can_be_set(ledger: Ledger) -> None:
    """Built-in units have no `units` row; their support limits used to fail a foreign key (INTERNAL)."""
    out = await ledger.stub.SetSupportGrantLimits(pb.SetSupportGrantLimitsRequest(
        idempotency_key="lim", unit="JPY", max_per_grant="1000", max_per_day="5000"), metadata=ledger.md)
    assert (out.unit, out.max_per_grant, out.max_per_day, out.is_default) == ("JPY", "1000", "5000", False)
    got = await ledger.stub.GetSupportGrantLimits(pb.GetSupportGrantLimitsRequest(unit="JPY"), metadata=ledger.md)
    assert got == out
