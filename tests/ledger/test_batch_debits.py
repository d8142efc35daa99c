"""BatchDebitCredits' column path (operations/batch_debits.py) gives what DebitCredits gives, debit by
debit in request order (seeded random batches over gRPC, two tenants with the same accounts and lots):

- each debit's answer: the same Hold (instants aside, lots mapped by grant order) or the same error;
- the same balances and the same journal (kind, amount, lot, hold key, reference, in order);
- a replayed batch answers byte for byte what it answered first, and changes nothing;
- and, without a database, `packing.DebitWire` builds exactly the bytes `packing.hold` serializes to.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from credits.ledger.v1 import ledger_pb2 as pb
from google.protobuf.timestamp_pb2 import Timestamp

from ledger_service.api import packing
from ledger_service.domain.holds import settle_as_debit
from ledger_service.domain.model import Allocation, Charge, ChargeKind, Hold, LotType
from tests.ledger.conftest import Ledger
from tests.tenancy import add_tenant_key

ACCOUNTS = ["acme", "beta", "gamma"]
KINDS = [pb.USAGE, pb.ADD_ON, pb.FIXED_FEE]


def _ts(at: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(at)
    return t


async def _setup(ledger: Ledger, key: str, rng: random.Random) -> dict[str, int]:
    """The same accounts and lots (types, priorities, expiries, scopes) in the tenant of `key`; lot id ->
    its grant's position."""
    md = [("x-api-key", key)]
    for account in ACCOUNTS:
        await ledger.stub.CreateAccount(pb.CreateAccountRequest(idempotency_key=f"a-{account}", account_id=account),
                                        metadata=md)
    soon = datetime.now(UTC) + timedelta(days=rng.randint(1, 30))
    lots: dict[str, int] = {}
    for n in range(9):
        account = ACCOUNTS[n % 3]
        req = pb.GrantCreditsRequest(idempotency_key=f"g{n}", account_id=account, unit="USD",
                                     amount=f"{rng.randint(1, 40)}.{rng.randint(0, 99):02d}",
                                     type=rng.choice([pb.PURCHASED, pb.PROMOTIONAL]), priority=rng.randint(1, 100))
        if rng.random() < 0.4:
            req.expires_at.CopyFrom(_ts(soon + timedelta(hours=n)))
        if rng.random() < 0.3:
            req.scope.kinds.append(rng.choice(KINDS))
        lots[(await ledger.stub.GrantCredits(req, metadata=md)).lot_id] = n
    return lots


def _debit(rng: random.Random, n: int, used: list[pb.DebitCreditsRequest]) -> pb.DebitCreditsRequest:
    roll = rng.random()
    if used and roll < 0.08:  # the same request again: a replay
        return used[rng.randrange(len(used))]
    if used and roll < 0.12:  # a used key with another request: ALREADY_EXISTS
        again = pb.DebitCreditsRequest()
        again.CopyFrom(used[rng.randrange(len(used))])
        again.charges[0].amount = "0.01" if again.charges[0].amount != "0.01" else "0.02"
        return again
    account = rng.choice([*ACCOUNTS, *ACCOUNTS, "nobody"])
    shape = rng.randrange(4)  # few shapes, so debits share them (the path unpacks each shape once)
    req = pb.DebitCreditsRequest(idempotency_key=f"d{n}" if rng.random() > 0.03 else "", account_id=account,
                                 unit="USD" if rng.random() > 0.03 else "NOPE", reference=f"ref-{shape}",
                                 up_to=shape == 3)
    for c in range(1 + shape % 2):
        amount = rng.choice(["0.50", "1.00", "2.25", "7.00", f"{rng.randint(1, 900)}.00", "1.001"])
        req.charges.add(charge_id=f"c{c}" if shape else "", kind=KINDS[(shape + c) % 3], amount=amount)
    used.append(req)
    return req


def _outcome(hold: pb.Hold | None, code: int, message: str, lot_index: dict[str, int]) -> Any:
    if hold is None:
        return code, message
    h = pb.Hold()
    h.CopyFrom(hold)
    for field in ("created_at", "ttl_expires_at", "resolved_at"):
        h.ClearField(field)  # type: ignore[arg-type]
    for a in h.allocations:
        a.lot_id = str(lot_index[a.lot_id])
    return h.SerializeToString(deterministic=True)


async def _journal(ledger: Ledger, md: list[tuple[str, str]], lot_index: dict[str, int]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for account in ACCOUNTS:
        token = ""
        while True:
            page = await ledger.stub.ListEntries(pb.ListEntriesRequest(account_id=account, page_size=1000,
                                                                       page_token=token), metadata=md)
            out += [(e.account_id, lot_index[e.lot_id], e.kind, e.amount, e.hold_key, e.reference)
                    for e in page.entries]
            token = page.next_page_token
            if not token:
                break
    return out


async def test_batches_do_what_the_same_debits_one_by_one_do(ledger: Ledger) -> None:
    key_b = await add_tenant_key(ledger.dsn, "tenant-b")
    md_a, md_b = ledger.md, [("x-api-key", key_b)]
    index_a = await _setup(ledger, ledger.key, random.Random(7))
    index_b = await _setup(ledger, key_b, random.Random(7))
    rng = random.Random(1717)
    used: list[pb.DebitCreditsRequest] = []
    n = 0
    batches = []
    last = pb.BatchDebitCreditsResponse()
    seen: set[int] = set()
    for _ in range(12):
        size = rng.choice([1, 2, 5, 20, 60])
        batch = []
        for _ in range(size):
            batch.append(_debit(rng, n, used))
            n += 1
        batches.append(batch)
        got = await ledger.stub.BatchDebitCredits(pb.BatchDebitCreditsRequest(debits=batch), metadata=md_a)
        assert len(got.results) == len(batch)
        for i, (req, res) in enumerate(zip(batch, got.results, strict=True)):
            try:
                one = _outcome(await ledger.stub.DebitCredits(req, metadata=md_b), 0, "", index_b)
            except grpc.aio.AioRpcError as err:
                one = (err.code().value[0], err.details())
            mine = _outcome(res.hold if res.HasField("hold") else None, res.error.code, res.error.message, index_a)
            if isinstance(mine, tuple) and f"debits[{i}]." in mine[1]:  # refused while unpacking: named in place
                mine = (mine[0], mine[1].replace(f"debits[{i}].", "", 1))
            assert mine == one, (i, req, mine, one)
            seen.add(mine[0] if isinstance(mine, tuple) else 0)
        last = got
    assert seen == {0, *(c.value[0] for c in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND,
                                             grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.INVALID_ARGUMENT))}
    for account in ACCOUNTS:
        a = await ledger.stub.GetBalance(pb.GetBalanceRequest(account_id=account), metadata=md_a)
        b = await ledger.stub.GetBalance(pb.GetBalanceRequest(account_id=account), metadata=md_b)
        assert [(t.unit, t.available, t.consumed, t.held) for t in a.totals] == \
            [(t.unit, t.available, t.consumed, t.held) for t in b.totals]
    journal = await _journal(ledger, md_a, index_a)
    assert journal == await _journal(ledger, md_b, index_b)
    assert sum(1 for e in journal if e[2] == pb.DEBIT) > 50  # the seed makes plenty of debits succeed

    # a replayed batch answers what it answered first (a debit refused first is tried again), and the
    # debits that went through write nothing again
    again = await ledger.stub.BatchDebitCredits(pb.BatchDebitCreditsRequest(debits=batches[-1]), metadata=md_a)
    for before, after in zip(last.results, again.results, strict=True):
        if before.HasField("hold"):
            assert after.hold.SerializeToString() == before.hold.SerializeToString()
        else:
            assert after.error.code == before.error.code
    assert any(r.HasField("hold") for r in again.results)
    # the keys are DebitCredits' own: the unary call replays what the batch answered
    for req, res in zip(batches[-1], last.results, strict=True):
        if res.HasField("hold"):
            assert (await ledger.stub.DebitCredits(req, metadata=md_a)) == res.hold
    assert await _journal(ledger, md_a, index_a) == journal
    v = await ledger.stub.VerifyJournal(pb.VerifyJournalRequest(), metadata=md_a)
    assert v.ok, v.violations


def test_debit_wire_bytes_are_the_packed_hold() -> None:
    rng = random.Random(29)
    wire = packing.DebitWire()
    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    for _ in range(300):
        charges = [Charge(str(i), rng.choice(list(ChargeKind)), rng.choice(["", "gpt"]), rng.randint(1, 10**12),
                          now, now) for i in range(rng.randint(1, 3))]
        allocations = [Allocation(p, rng.choice([c.charge_id for c in charges]), f"lot-{rng.randrange(9)}",
                                  rng.randint(1, 10**12), rng.choice(list(LotType))) for p in range(rng.randint(0, 3))]
        key = "debit:" + "k" * rng.choice([1, 10, 100, 121, 122, 150, 200])
        fields = dict(account_id=rng.choice(["a", "acct-" * 10]), unit=rng.choice(["USD", "token"]),
                      requested=sum(c.amount for c in charges), reserved=sum(a.amount for a in allocations),
                      allocations=allocations, policy_version=rng.randint(0, 3), release_on_ttl=False,
                      ttl_expires_at=now, created_at=now, reference=rng.choice(["", "r" * 150]), charges=charges)
        keyless, keyed = Hold(hold_key="", **fields), Hold(hold_key=key, **fields)  # type: ignore[arg-type]
        settle_as_debit(keyless, now)
        settle_as_debit(keyed, now)
        scale = rng.choice([0, 2])
        expected = packing.hold(keyed, scale).SerializeToString()
        assert wire.keyed(key, wire.tail(keyless, scale)) == expected


async def test_concurrent_batches_on_one_account_never_overspend(ledger: Ledger) -> None:
    """Batches in flight together on one account (they may share a transaction) take exactly what exists."""
    await ledger.account("hot")
    await ledger.grant("hot", "500", unit="token")

    async def batch(w: int) -> list[bool]:
        debits = [pb.DebitCreditsRequest(idempotency_key=f"w{w}-{i}", account_id="hot", unit="token",
                                         charges=[pb.Charge(kind=pb.USAGE, amount="1")]) for i in range(200)]
        got = await ledger.stub.BatchDebitCredits(pb.BatchDebitCreditsRequest(debits=debits), metadata=ledger.md)
        for r in got.results:
            assert r.HasField("hold") or r.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0], r
        return [r.HasField("hold") for r in got.results]

    results = await asyncio.gather(*(batch(w) for w in range(4)))
    assert sum(sum(r) for r in results) == 500
    b = await ledger.stub.GetBalance(pb.GetBalanceRequest(account_id="hot"), metadata=ledger.md)
    assert (b.totals[0].available, b.totals[0].consumed) == ("0", "500")
    v = await ledger.stub.VerifyJournal(pb.VerifyJournalRequest(), metadata=ledger.md)
    assert v.ok, v.violations
