"""Templated debits (`Effects.debit_by_template`, the batch path's rows) write exactly what plain entries
and debit rows write, in the same order — also when plain entries come before or after them in one flush.

Seeded random schedules on a real database: the same steps go once through plain `move_as` + debit rows
(account "plain") and once with every debit step through a template (account "tmpl"), then the two
accounts' journals (in entry order), debits rows, lot balances and alert consumption sums must match.
Most flushes have only templated debits (as a batch of debits does); some mix in plain entries.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest

from ledger_service.domain.journal import EntryKind
from ledger_service.domain.model import Lot, LotType, Scope
from ledger_service.storage.alert_watch import _Change
from ledger_service.storage.effects import DebitTemplate, Effects
from ledger_service.storage.state import load_state
from tests.ledger.conftest import Ledger

TENANT = "tenant-a"


def _template(account: str, lots: list[Lot], takes: list[tuple[int, int]], reference: str) -> DebitTemplate:
    reserved = sum(a for _, a in takes)
    return DebitTemplate(account_id=account, unit="USD", takes=tuple((lots[i].lot_id, a) for i, a in takes),
                         actor="key-1", reference=reference, policy_version=0, requested=reserved, reserved=reserved,
                         up_to=False, charges_json='[{"c": 1}]', allocations_json=f'[{takes}]')


def _schedule(rng: random.Random) -> list[tuple[str, list[tuple[int, int]], str]]:
    """Steps: ("debit", takes, reference) through a template, or ("entry", [(lot, amount)], reason) plain."""
    shapes = [[(rng.randrange(3), rng.randint(1, 50)) for _ in range(rng.randint(1, 3))] for _ in range(4)]
    steps: list[tuple[str, list[tuple[int, int]], str]] = []
    plain_share = rng.choice([0.0, 0.0, 0.2])  # a batch of debits flushes no plain entries: mostly none
    for _ in range(rng.randint(20, 80)):
        if rng.random() < plain_share:
            steps.append(("entry", [(rng.randrange(3), rng.randint(1, 50))], rng.choice(["", "why"])))
        else:
            steps.append(("debit", rng.choice(shapes), rng.choice(["", "ref-1", "ref-2"])))
    return steps


async def _write(conn: asyncpg.Connection, account: str, steps: list[tuple[str, list[tuple[int, int]], str]],
                 templated: bool, round_: int) -> dict[tuple[str, str], int]:
    async with conn.transaction():
        state = await load_state(conn, TENANT, account, hold_keys=[], lot_ids=[], idempotency_keys=[])
        lots = sorted(state.lots.values(), key=lambda lot: lot.seq)
        fx = Effects(TENANT, datetime.now(UTC))
        memo: dict[tuple[tuple[int, int], ...], int] = {}
        for n, (kind, takes, text) in enumerate(steps):
            hold_key = f"debit:{account}-{round_}-{n}"
            if kind == "entry":
                (i, amount), = takes
                fx.move_as(lots[i], EntryKind.DEBIT, amount, fx.now, "key-1", text, "", f"x:{account}-{round_}-{n}", 0)
                continue
            template = _template(account, lots, takes, text)
            if templated:
                t = memo.get(tuple(takes))
                if t is None or fx.templates[t].reference != text:
                    t = memo[tuple(takes)] = fx.add_template(template)
                fx.debit_by_template(t, hold_key, [lots[i] for i, _ in takes])
            else:
                for i, amount in takes:
                    fx.move_as(lots[i], EntryKind.DEBIT, amount, fx.now, "key-1", "", text, hold_key, 0)
                fx.debit_rows.append(template.debit_row(hold_key))
        consumed = dict(_Change(fx).consumed)
        await fx.flush(conn)
    return {(a, u): v for (a, u), v in consumed.items()}


Rows = list[tuple[object, ...]]


async def _rows(conn: asyncpg.Connection, account: str) -> tuple[Rows, Rows, Rows]:
    lots = {r["lot_id"]: n for n, r in enumerate(await conn.fetch(
        "SELECT lot_id FROM lots WHERE tenant_id = $1 AND account_id = $2 ORDER BY seq", TENANT, account))}
    journal: Rows = [(lots[r["lot_id"]], r["kind"], r["amount"], r["unit"], r["actor"], r["reason"], r["reference"],
                r["hold_key"].replace(account, "A"), r["policy_version"], r["effective_at"] == r["recorded_at"])
               for r in await conn.fetch("SELECT * FROM journal WHERE tenant_id = $1 AND account_id = $2 AND "
                                         "kind = 'DEBIT' ORDER BY entry_id", TENANT, account)]
    debits: Rows = [(r[0].replace(account, "A"), *r[1:]) for r in await conn.fetch(
        "SELECT hold_key, unit, requested, reserved, up_to, reference, policy_version, charges, allocations "
        "FROM debits WHERE tenant_id = $1 AND account_id = $2 ORDER BY hold_key", TENANT, account)]
    balances: Rows = [tuple(r) for r in await conn.fetch(
        "SELECT available, consumed, entries FROM lot_balances b JOIN lots l USING (tenant_id, lot_id) "
        "WHERE b.tenant_id = $1 AND b.account_id = $2 ORDER BY l.seq", TENANT, account)]
    return journal, debits, balances


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_templated_debits_write_what_plain_rows_write(ledger: Ledger, seed: int) -> None:
    rng = random.Random(seed)
    for account in ("plain", "tmpl"):
        await ledger.account(account)
        for n in range(3):
            await ledger.grant(account, "100000", key=f"g-{account}-{n}")
    conn = await asyncpg.connect(ledger.dsn)
    try:
        for round_ in range(3):  # later flushes continue the lots' entry counts
            steps = _schedule(rng)
            plain = await _write(conn, "plain", steps, templated=False, round_=round_)
            tmpl = await _write(conn, "tmpl", steps, templated=True, round_=round_)
            assert plain[("plain", "USD")] == tmpl[("tmpl", "USD")] > 0
        journal, debits, balances = await _rows(conn, "plain")
        assert (journal, debits, balances) == await _rows(conn, "tmpl")
        assert len(journal) > len(debits) > 0 and all(same for *_, same in journal)
    finally:
        await conn.close()


def test_a_template_queued_after_entries_is_written_as_entries() -> None:
    """No flush carries both: templated debits queued after entries, or entries after templated debits,
    become plain rows in the order they were queued."""
    now = datetime(2026, 12, 7, tzinfo=UTC)
    lot = Lot(lot_id="l1", account_id="a", lot_type=LotType.PURCHASED, unit="USD", amount=100, priority=1,
              effective_at=now, expires_at=None, scope=Scope(frozenset(), frozenset()), cost_basis=Decimal(0), seq=1,
              usable_until=None, granted=100, reinstated=0, available=100, held=0)
    fx = Effects(TENANT, now)
    t = fx.add_template(_template("a", [lot], [(0, 5)], ""))
    fx.debit_by_template(t, "debit:1", [lot])
    assert fx.templated_keys == ["debit:1"] and not fx.entries
    fx.move_as(lot, EntryKind.DEBIT, 7, now, "key-1", "", "", "x", 0)
    fx.debit_by_template(t, "debit:2", [lot])
    assert not fx.templated and fx.template_uses == [0]
    assert [(e[3], e[9]) for e in fx.entries] == [(5, "debit:1"), (7, "x"), (5, "debit:2")]
    assert [r[0] for r in fx.debit_rows] == ["debit:1", "debit:2"]
    assert lot.available == 100 - 17 and lot.consumed == 17
