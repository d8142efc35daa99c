"""WatchBalance against a real server and Postgres LISTEN/NOTIFY: a snapshot, then each committed
change with the next sequence; concurrent writers never produce a gap or a duplicate; a resume gets
exactly what it missed; a resume from too far back or ahead gets RESYNC; a rejected call notifies
nothing."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import grpc
import pytest
from credits.ledger.v1 import ledger_pb2 as pb

from tests.ledger.conftest import Ledger
from tests.ledger.requests_and_checks import charge


async def _debit(ledger: Ledger, key: str, amount: str = "1.00", account: str = "john") -> None:
    await ledger.stub.DebitCredits(pb.DebitCreditsRequest(
        idempotency_key=key, account_id=account, unit="USD", charges=[charge(amount)]), metadata=ledger.md)


_LEFT: dict[int, list[pb.BalanceChange]] = {}  # per stream: changes read but not yet taken


async def _take(stream: grpc.aio.UnaryStreamCall, n: int, wait_s: float = 10) -> list[pb.BalanceChange]:
    """The stream's next `n` changes: a message is itself, then each of its `following` (a coalesced backlog)."""
    out = _LEFT.pop(id(stream), [])
    while len(out) < n:
        message = await asyncio.wait_for(stream.read(), wait_s)
        out.extend([message, *message.following])
    if len(out) > n:
        _LEFT[id(stream)] = out[n:]
    return out[:n]


async def test_snapshot_then_every_change_in_sequence(ledger: Ledger) -> None:
    await ledger.account("john")
    await ledger.grant("john", "100.00", key="g1")
    stream = ledger.stub.WatchBalance(pb.WatchBalanceRequest(account_id="john", include_entries=True),
                                      metadata=ledger.md)
    (snap,) = await _take(stream, 1)
    assert snap.type == pb.CHANGE_SNAPSHOT and snap.sequence == 1
    assert [(b.unit, b.available, b.held) for b in snap.balances] == [("USD", "100.00", "0.00")]
    await _debit(ledger, "d1", "2.50")
    await ledger.stub.ReserveCredits(pb.ReserveCreditsRequest(
        idempotency_key="r1", hold_key="h1", account_id="john", unit="USD", charges=[charge("10.00")]),
        metadata=ledger.md)
    with pytest.raises(grpc.aio.AioRpcError):  # refused: writes nothing, so no change is sent
        await _debit(ledger, "d-too-much", "1000.00")
    await ledger.stub.ReleaseHold(pb.ReleaseHoldRequest(idempotency_key="x1", hold_key="h1"), metadata=ledger.md)
    changes = await _take(stream, 3)
    assert [c.sequence for c in changes] == [2, 3, 4]
    assert all(c.type == pb.CHANGE_UPDATE for c in changes)
    assert [(c.balances[0].available, c.balances[0].held) for c in changes] == [
        ("97.50", "0.00"), ("87.50", "10.00"), ("97.50", "0.00")]
    assert [e.kind for e in changes[0].entries] == [pb.DEBIT]
    stream.cancel()


async def test_concurrent_writers_no_gap_no_duplicate_and_resume(ledger: Ledger) -> None:
    await ledger.account("john")
    await ledger.grant("john", "1000.00", key="g1")
    watchers = [ledger.stub.WatchBalance(pb.WatchBalanceRequest(account_id="john"), metadata=ledger.md)
                for _ in range(5)]
    for w in watchers:
        (snap,) = await _take(w, 1)
        assert snap.sequence == 1
    await asyncio.gather(*(_debit(ledger, f"d{i}", "0.01") for i in range(60)))
    # each debit batch is one or more changes; every watcher sees the same contiguous run
    seen: list[list[int]] = []
    for w in watchers:
        got: list[pb.BalanceChange] = []
        while not got or Decimal(got[-1].balances[0].available) != Decimal("999.40"):
            got.extend(await _take(w, 1))
        seqs = [c.sequence for c in got]
        assert seqs == list(range(2, 2 + len(seqs)))
        seen.append(seqs)
        w.cancel()
    assert all(s == seen[0] for s in seen)
    last = seen[0][-1]
    # resume from the middle: exactly the rest, with the same balances
    middle = 1 + len(seen[0]) // 2  # the snapshot was 1; resume half-way through what followed
    resumed = ledger.stub.WatchBalance(pb.WatchBalanceRequest(account_id="john", after_sequence=middle),
                                       metadata=ledger.md)
    rest = await _take(resumed, last - middle)
    assert [c.sequence for c in rest] == list(range(middle + 1, last + 1))
    assert rest[-1].balances[0].available == "999.40"
    await _debit(ledger, "after", "0.40")
    (next_change,) = await _take(resumed, 1)
    assert next_change.sequence == last + 1 and next_change.balances[0].available == "999.00"
    resumed.cancel()
    ahead = ledger.stub.WatchBalance(pb.WatchBalanceRequest(account_id="john", after_sequence=last + 50),
                                     metadata=ledger.md)
    (resync,) = await _take(ahead, 1)
    assert resync.type == pb.CHANGE_RESYNC and resync.sequence == last + 1 and "ahead" in resync.reason
    ahead.cancel()


async def test_unknown_account_and_bad_sequence(ledger: Ledger) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _take(ledger.stub.WatchBalance(pb.WatchBalanceRequest(account_id="nobody"), metadata=ledger.md), 1)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "account_id" in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _take(ledger.stub.WatchBalance(pb.WatchBalanceRequest(account_id="john", after_sequence=-1),
                                             metadata=ledger.md), 1)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "after_sequence" in (info.value.details() or "")


async def test_resume_on_a_fresh_server_channel_reads_the_journal(ledger: Ledger) -> None:
    """No stream watches the account while it changes: a resume replays from the journal, balances included."""
    await ledger.account("john")
    await ledger.grant("john", "10.00", key="g1")
    for i in range(4):
        await _debit(ledger, f"d{i}", "1.00")
    resumed = ledger.stub.WatchBalance(pb.WatchBalanceRequest(account_id="john", after_sequence=2,
                                                              include_entries=True), metadata=ledger.md)
    message = await asyncio.wait_for(resumed.read(), 10)  # what it missed comes as one message
    got = [message, *message.following]
    assert [(c.sequence, c.balances[0].available) for c in got] == [(3, "8.00"), (4, "7.00"), (5, "6.00")]
    assert all(c.type == pb.CHANGE_UPDATE and len(c.entries) == 1 and not c.following for c in got[1:])
    assert message.type == pb.CHANGE_UPDATE and len(message.entries) == 1
    resumed.cancel()


def test_a_backlog_is_one_message_per_256_changes_packed_once() -> None:
    """Coalescing (operations/balance_watch.py): contiguous changes go out as messages of up to
    MAX_PER_MESSAGE changes; the joined bytes parse as the first change with the rest in `following`,
    each change's bytes packed once whichever stream sends them."""
    from datetime import UTC, datetime

    from ledger_service.api.packing import balance_change, balance_change_bytes
    from ledger_service.operations.balance_watch import MAX_PER_MESSAGE, Kind, Message, _updates
    from ledger_service.storage.balance_feed import Change

    at = datetime(2026, 12, 7, tzinfo=UTC)
    changes = [Change(seq, at, {"USD": (10_000 - seq, seq % 3)}) for seq in range(1, 2 * MAX_PER_MESSAGE + 5)]
    messages = list(_updates(changes))
    assert [1 + len(m.following) for m in messages] == [MAX_PER_MESSAGE, MAX_PER_MESSAGE, 4]
    assert [c.seq for m in messages for c in (m.change, *m.following)] == [c.seq for c in changes]
    scales = {"USD": 2}
    for m in messages:
        parsed = pb.BalanceChange.FromString(balance_change_bytes("acct", m, scales, False))
        expected = balance_change("acct", m, scales, False)
        expected.following.extend(balance_change("acct", Message(Kind.UPDATE, c), scales, False) for c in m.following)
        assert parsed == expected
    again = list(_updates(changes[MAX_PER_MESSAGE:]))  # another stream, another cut: same bytes per change
    first = again[0]
    assert balance_change_bytes("acct", first, scales, False).startswith(messages[1].change.packed[
        (Kind.UPDATE, False, "")])  # type: ignore[arg-type]
    assert all(("following", False) in c.packed for m in messages for c in m.following)
