"""Past balances from checkpoints (migration 0014): seeded random histories, then the balance as of
random instants read from the checkpoints equals the full replay of the journal up to the instant.

Thousands of entries per lot (BatchDebitCredits), so every lot crosses several checkpoints; the
instants include each checkpoint's own instant and the microsecond before it. VerifyJournal proves
the checkpoints equal replay, and reports a checkpoint that does not.
"""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from credits.ledger.v1 import ledger_pb2 as pb

from ledger_service.domain.journal import BUCKETS, Buckets, EntryKind
from ledger_service.storage.effects import CHECKPOINT_EVERY
from ledger_service.storage.reads import SELECT_JOURNAL_AS_OF, SELECT_LOT_JOURNAL_AS_OF, balances_as_of
from tests.ledger.conftest import Ledger
from tests.ledger.requests_and_checks import charge, ts

UNITS = ["token", "request", "compute_minute"]  # one lot per unit, scale 0
FULL_REPLAY = """
SELECT lot_id, kind, sum(amount)::bigint AS amount FROM journal
WHERE tenant_id = $1 AND account_id = $2 AND recorded_at <= $3 GROUP BY lot_id, kind
"""


async def _full_replay(pool: asyncpg.Pool, account: str, at: datetime) -> dict[str, Buckets]:
    out: dict[str, Buckets] = defaultdict(Buckets)
    for r in await pool.fetch(FULL_REPLAY, "tenant-a", account, at):
        out[r["lot_id"]].apply(EntryKind(r["kind"]), r["amount"])
    return dict(out)


async def _random_history(ledger: Ledger, rng: random.Random, seed: int) -> list[datetime]:
    """Grants, batches of debits and holds on three lots; returns instants taken between steps."""
    await ledger.account("acct")
    for unit in UNITS:
        await ledger.grant("acct", "1000000000", unit=unit, key=f"g-{seed}-{unit}")
    instants = [datetime.now(UTC)]
    for step in range(14):
        unit = rng.choice(UNITS)
        if rng.random() < 0.75:
            n = rng.randint(150, 900)
            batch = pb.BatchDebitCreditsRequest(debits=[
                pb.DebitCreditsRequest(idempotency_key=f"d-{seed}-{step}-{i}", account_id="acct", unit=unit,
                                       charges=[charge(str(rng.randint(1, 50)))]) for i in range(n)])
            resp = await ledger.stub.BatchDebitCredits(batch, metadata=ledger.md)
            assert all(r.HasField("hold") for r in resp.results)
        else:
            hold = f"h-{seed}-{step}"
            await ledger.stub.ReserveCredits(pb.ReserveCreditsRequest(
                idempotency_key=f"r-{hold}", hold_key=hold, account_id="acct", unit=unit,
                charges=[charge(str(rng.randint(1, 500)))]), metadata=ledger.md)
            if rng.random() < 0.5:
                await ledger.stub.CommitHold(pb.CommitHoldRequest(idempotency_key=f"c-{hold}", hold_key=hold),
                                             metadata=ledger.md)
            else:
                await ledger.stub.ReleaseHold(pb.ReleaseHoldRequest(idempotency_key=f"x-{hold}", hold_key=hold),
                                              metadata=ledger.md)
        instants.append(datetime.now(UTC))
    return instants


@pytest.mark.parametrize("seed", [7, 8])
async def test_as_of_from_checkpoints_equals_full_replay(ledger: Ledger, seed: int) -> None:
    rng = random.Random(seed)
    instants = await _random_history(ledger, rng, seed)
    pool = await asyncpg.create_pool(ledger.dsn, min_size=1, max_size=2)
    try:
        checkpoints = await pool.fetch("SELECT lot_id, at, entries FROM lot_checkpoints ORDER BY at")
        assert len(checkpoints) >= 3, "the history should cross several checkpoints"
        per_lot: dict[str, list[int]] = defaultdict(list)
        for r in checkpoints:
            per_lot[r["lot_id"]].append(r["entries"] // CHECKPOINT_EVERY)
        assert all(marks == sorted(set(marks)) for marks in per_lot.values())  # one per crossing of N
        probes = [instants[0] - timedelta(days=1), *instants]
        probes += [r["at"] for r in checkpoints] + [r["at"] - timedelta(microseconds=1) for r in checkpoints]
        probes += [instants[0] + (instants[-1] - instants[0]) * rng.random() for _ in range(40)]
        for at in probes:
            expected = await _full_replay(pool, "acct", at)
            got = await balances_as_of(pool, SELECT_JOURNAL_AS_OF, "tenant-a", "acct", at)
            assert {k: v.as_tuple() for k, v in got.items()} == {k: v.as_tuple() for k, v in expected.items()}, at
            for lot_id, buckets in expected.items():
                one = await balances_as_of(pool, SELECT_LOT_JOURNAL_AS_OF, "tenant-a", lot_id, at)
                assert one[lot_id].as_tuple() == buckets.as_tuple()
        # and through the API: GetBalance(as_of) agrees with the replay at a random instant
        at = rng.choice(instants[1:])
        expected_total = await _full_replay(pool, "acct", at)
        balance = await ledger.stub.GetBalance(pb.GetBalanceRequest(account_id="acct", as_of=ts(at)),
                                               metadata=ledger.md)
        lots = {r["lot_id"]: r["unit"] for r in await pool.fetch("SELECT lot_id, unit FROM lots")}
        for row in balance.totals:
            consumed = sum(b.consumed for lot, b in expected_total.items() if lots[lot] == row.unit)
            assert int(row.consumed) == consumed

        verified = await ledger.stub.VerifyJournal(pb.VerifyJournalRequest(), metadata=ledger.md)
        assert verified.ok, verified.violations

        # a checkpoint that disagrees with the replay is reported (written as the owner, bypassing the app)
        first = checkpoints[0]
        row = await pool.fetchrow("SELECT * FROM lot_checkpoints WHERE lot_id = $1 ORDER BY through_entry_id LIMIT 1",
                                  first["lot_id"])
        values = {b: row[b] for b in BUCKETS}
        values["available"] -= 1
        values["consumed"] += 1
        await pool.execute(
            f"INSERT INTO lot_checkpoints (tenant_id, lot_id, account_id, through_entry_id, at, entries, "
            f"{', '.join(BUCKETS)}) VALUES ($1, $2, $3, $4, $5, $6, {', '.join(f'${i}' for i in range(7, 15))})",
            "tenant-a", row["lot_id"], row["account_id"], row["through_entry_id"] - 1, row["at"], row["entries"] - 1,
            *values.values())
        broken = await ledger.stub.VerifyJournal(pb.VerifyJournalRequest(), metadata=ledger.md)
        assert not broken.ok
        assert any("checkpoint through entry" in v for v in broken.violations), broken.violations

        # and so is an entry after a checkpoint recorded before its instant: the new entry follows every
        # checkpoint of the lot (the one written above included) and precedes the instants of them all
        lot_checkpoints = {r["through_entry_id"] for r in await pool.fetch(
            "SELECT through_entry_id FROM lot_checkpoints WHERE lot_id = $1", row["lot_id"])}
        await pool.execute(
            "INSERT INTO journal (tenant_id, account_id, lot_id, kind, amount, unit, effective_at, recorded_at) "
            "SELECT tenant_id, account_id, lot_id, kind, amount, unit, effective_at, "
            "$2::timestamptz - interval '1 microsecond' FROM journal WHERE entry_id = $1",
            row["through_entry_id"], row["at"])
        late = await ledger.stub.VerifyJournal(pb.VerifyJournalRequest(), metadata=ledger.md)
        out_of_order = {int(v.split("through entry ")[1].split(":")[0])
                        for v in late.violations if "recorded out of order" in v}
        assert out_of_order == lot_checkpoints and len(lot_checkpoints) >= 2, late.violations
    finally:
        await pool.close()
