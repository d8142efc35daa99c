"""The hot path's shortcuts give exactly what the plain code gives (seeded; no database needed).

- `Effects.move` applies a precomputed form of `journal.deltas`: lots and delta rows must match the rule;
- a flush's JSON memo must encode every distinct charges/allocations value as `json.dumps` would;
- `_columns` formats bytes and instants like `_text`;
- `packing.hold` reuses the last instant's Timestamp: each hold still carries its own instants.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from ledger_service.api import packing
from ledger_service.domain.journal import BUCKETS, EntryKind, deltas
from ledger_service.domain.model import Allocation, Charge, ChargeKind, Hold, HoldStatus, Lot, LotType, Scope
from ledger_service.storage.effects import (
    _NULL,
    _SEP,
    Effects,
    EntryContext,
    _allocations_json,
    _charges_json,
    _columns,
    _JsonMemo,
    _text,
)
from service_runtime.proto_time import to_timestamp

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _lot(lot_id: str, rng: random.Random) -> Lot:
    return Lot(lot_id=lot_id, account_id="a", lot_type=LotType.PURCHASED, unit="token", amount=10**9, priority=0,
               effective_at=NOW, expires_at=None, scope=Scope(frozenset(), frozenset()), cost_basis=Decimal(0),
               seq=1, usable_until=None, granted=10**9, reinstated=0, available=10**9 - rng.randrange(10**6),
               held=rng.randrange(10**6))


def test_move_changes_lots_and_delta_rows_as_the_rule_says() -> None:
    rng = random.Random(17)
    fx = Effects("t", NOW)
    lots = {f"l{i}": _lot(f"l{i}", rng) for i in range(4)}
    expected = {i: {b: getattr(x, b) for b in BUCKETS} for i, x in lots.items()}
    expected_rows = {i: [0] * (len(BUCKETS) + 1) for i in lots}
    for _ in range(500):
        lot_id = rng.choice(list(lots))
        kind = rng.choice([EntryKind.DEBIT, EntryKind.HOLD, EntryKind.RELEASE, EntryKind.POST, EntryKind.GRANT])
        source = {"DEBIT": "available", "HOLD": "available", "RELEASE": "held", "POST": "held"}.get(kind.value)
        room = getattr(lots[lot_id], source) if source else 10**6
        if room <= 0:
            continue
        amount = rng.randint(1, min(room, 1000))
        fx.move(lots[lot_id], kind, amount, EntryContext())
        for bucket, change in deltas(kind, amount).items():
            expected[lot_id][bucket] += change
            expected_rows[lot_id][BUCKETS.index(bucket)] += change
        expected_rows[lot_id][-1] += 1
    for lot_id, lot in lots.items():
        assert {b: getattr(lot, b) for b in BUCKETS} == expected[lot_id]
        if expected_rows[lot_id][-1]:
            assert fx.lot_deltas[lot_id] == expected_rows[lot_id]


def test_the_json_memo_encodes_each_value_as_json_dumps_would() -> None:
    rng = random.Random(18)
    memo = _JsonMemo()
    for _ in range(300):
        start = NOW - timedelta(seconds=rng.randrange(3))
        charges = [Charge(rng.choice(["0", "1", "c"]), rng.choice(list(ChargeKind)), rng.choice(["", "gpt", "x\"y"]),
                          rng.randrange(1, 4), start, start + timedelta(seconds=rng.randrange(2)))
                   for _ in range(rng.randint(1, 3))]
        allocations = [Allocation(p, "0", rng.choice(["l1", "l2"]), rng.randrange(1, 3), rng.choice(list(LotType)))
                       for p in range(rng.randint(1, 3))]
        assert memo.charges(charges) == _charges_json(charges)
        assert memo.allocations(allocations) == _allocations_json(allocations)


def test_columns_format_bytes_and_instants_like_text() -> None:
    later = NOW + timedelta(microseconds=1)
    rows = [(b"\x00\xff", NOW, None), (b"ab", later, True), (b"", NOW, 3)]
    cols = _columns(rows, 3)
    assert cols[0] == _SEP + _SEP.join(_text(r[0]) for r in rows)
    assert cols[1] == _SEP + _SEP.join(_text(r[1]) for r in rows)
    assert cols[2] == _SEP + _SEP.join([_NULL, "t", "3"])


def test_packed_holds_keep_their_own_instants() -> None:
    holds = []
    for i in range(3):
        at = NOW + timedelta(seconds=i)
        h = Hold(hold_key=f"h{i}", account_id="a", unit="token", requested=1, reserved=1, allocations=[],
                 policy_version=0, release_on_ttl=False, ttl_expires_at=at + timedelta(seconds=i), created_at=at,
                 reference="", up_to=False, charges=[], status=HoldStatus.COMMITTED, posted=1, resolved_at=at)
        holds.append(h)
    for h in holds + holds[::-1]:
        packed = packing.hold(h, 0)
        assert packed.created_at == to_timestamp(h.created_at)
        assert packed.ttl_expires_at == to_timestamp(h.ttl_expires_at)
        assert packed.resolved_at == to_timestamp(h.resolved_at)
