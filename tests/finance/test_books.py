"""The books' invariants on seeded random ledger histories (pure: no database).

Random grants (paid and free, currencies and tokens), debits, holds posted or released, reversals,
transfers and their reversals, voids and expiries → every entry balances per currency; per lot
deferred at grant = recognized + breakage + still deferred + transferred out + voided; the deferred
revenue account equals Σ lots' money remaining; AT_EXPIRY and PROPORTIONAL end equal per lot.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from finance.domain.books import Books, LedgerEntry, Line, LotGrant, money_at_grant, round_half_up, unbalanced
from finance.domain.rules import Breakage, BreakageMethod, Gl, Rules, UnitValue, parse_rules, rules_json
from service_runtime.rejections import Rejection

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SCALES = {"USD": 2, "EUR": 2, "JPY": 0}


@dataclass
class SimLot:
    grant: LotGrant
    available: int
    held: int = 0
    consumed: int = 0


class Sim:
    """A tiny ledger that writes the same entry kinds the real one does."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.entries: list[tuple[LedgerEntry, LotGrant | None]] = []
        self.lots: dict[str, SimLot] = {}
        self.holds: dict[str, list[tuple[str, int]]] = {}
        self.posted: dict[str, list[tuple[str, int]]] = {}
        self.transfers: dict[str, list[tuple[str, str, int]]] = {}
        self.now = T0
        self.n = 0

    def entry(self, kind: str, lot: str, amount: int, **kw: str) -> None:
        self.n += 1
        self.now += timedelta(hours=self.rng.randint(1, 48))
        e = LedgerEntry(self.n, kind, lot, self.lots[lot].grant.account_id, amount, self.now, self.now, **kw)
        self.entries.append((e, self.lots[lot].grant if kind == "GRANT" else None))

    def grant(self, origin: str = "", amount: int = 0, ref: str = "") -> str:
        r = self.rng
        lot_id = f"lot{len(self.lots) + 1}"
        if origin:
            src = self.lots[origin].grant
            g = LotGrant(lot_id, f"acct{r.randint(1, 3)}", src.lot_type, src.unit, src.unit_scale, amount,
                         src.cost_basis, src.campaign_id, src.source, origin, src.lot_type)
        else:
            kind = r.choice(["PURCHASED", "PURCHASED", "PROMOTIONAL", "COMPENSATORY"])
            unit = r.choice(["USD", "EUR", "JPY", "token"])
            scale = {"USD": 2, "EUR": 2, "JPY": 0, "token": 0}[unit]
            cb = Decimal(r.choice(["1", "0.8", "0.333333333", "0.000015"])) if kind == "PURCHASED" else Decimal(0)
            g = LotGrant(lot_id, f"acct{r.randint(1, 3)}", kind, unit, scale, r.randint(1, 100_000), cb,
                         r.choice(["", "spring", "fall"]), "purchase" if cb else "marketing")
        self.lots[lot_id] = SimLot(g, g.amount)
        self.entry("GRANT", lot_id, g.amount, reference=ref)
        return lot_id

    def step(self) -> None:
        r = self.rng
        live = [k for k, x in self.lots.items() if x.available > 0]
        op = r.random()
        if not live or op < 0.15:
            self.grant()
            return
        lot = r.choice(live)
        x = self.lots[lot]
        take = r.randint(1, x.available)
        if op < 0.40:
            x.available -= take
            x.consumed += take
            key = f"debit:{self.n}"
            self.posted[key] = [(lot, take)]
            self.entry("DEBIT", lot, take, hold_key=key, reference=f"inv-{self.n}")
        elif op < 0.55:
            key = f"hold-{self.n}"
            x.available -= take
            x.held += take
            self.holds[key] = [(lot, take)]
            self.entry("HOLD", lot, take, hold_key=key)
        elif op < 0.70 and self.holds:
            key = r.choice(sorted(self.holds))
            (hl, amount), = self.holds.pop(key)
            h = self.lots[hl]
            post = r.randint(0, amount)
            h.held -= amount
            h.consumed += post
            h.available += amount - post
            if post:
                self.entry("POST", hl, post, hold_key=key, reference=f"inv-{key}")
                self.posted[key] = [(hl, post)]
            if amount - post:
                self.entry("RELEASE", hl, amount - post, hold_key=key)
        elif op < 0.78 and self.posted:
            key = r.choice(sorted(self.posted))
            for pl, amount in self.posted.pop(key):
                self.lots[pl].consumed -= amount
                self.lots[pl].available += amount
                self.entry("REINSTATE", pl, amount, hold_key=key, reference=f"inv-{key}", reason="invoice voided")
        elif op < 0.86:
            tid = f"transfer/x{self.n}"
            x.available -= take
            self.entry("TRANSFER_OUT", lot, take, reference=tid)
            dest = self.grant(origin=lot, amount=take, ref=tid)
            self.transfers[tid] = [(lot, dest, take)]
        elif op < 0.90 and self.transfers:
            tid = r.choice(sorted(self.transfers))
            (src, dst, amount), = self.transfers[tid]
            if self.lots[dst].available < amount:
                return
            del self.transfers[tid]
            self.lots[dst].available -= amount
            self.lots[src].available += amount
            self.entry("TRANSFER_OUT", dst, amount, reference=tid, reason="transfer reversed")
            self.entry("REINSTATE", src, amount, reference=tid, reason="transfer reversed")
        elif op < 0.95:
            x.available -= take
            self.entry("EXPIRE", lot, take)
        else:
            x.available -= take
            self.entry("VOID", lot, take)

    def settle_all(self) -> None:
        """Release every hold, then expire whatever is left: every lot ends empty."""
        for key in sorted(self.holds):
            for hl, amount in self.holds.pop(key):
                self.lots[hl].held -= amount
                self.lots[hl].available += amount
                self.entry("RELEASE", hl, amount, hold_key=key)
        for lot_id, x in self.lots.items():
            if x.available:
                amount, x.available = x.available, 0
                self.entry("EXPIRE", lot_id, amount)


def run(sim: Sim, rules: Rules) -> tuple[Books, list[Line]]:
    books = Books(rules, SCALES)
    lines: list[Line] = []
    for entry, grant in sim.entries:
        lines += books.apply(entry, grant)
    return books, lines


def proportional() -> Rules:
    return Rules(breakage=Breakage(BreakageMethod.PROPORTIONAL, Decimal("0.25")),
                 breakage_by_campaign={"fall": Breakage(BreakageMethod.PROPORTIONAL, Decimal("0.6"))},
                 units={"token": UnitValue("USD", Decimal("0.0004"))})


def check(books: Books, lines: list[Line]) -> None:
    assert unbalanced(lines) == {}
    for book in books.lots.values():
        assert book.violations() == []
    deferred: dict[str, int] = {}
    for x in lines:
        if x.gl is Gl.DEFERRED_REVENUE:
            deferred[x.currency] = deferred.get(x.currency, 0) + x.credit - x.debit
    for currency, balance in deferred.items():
        assert balance == sum(b.money_remaining for b in books.lots.values() if b.paid and b.currency == currency)
    for x in lines:
        assert (x.debit > 0) != (x.credit > 0), x
        if x.lot_type != "PURCHASED" and books.lots[x.lot_id].deferred_at_grant and not books.lots[x.lot_id].paid:
            assert x.gl not in (Gl.REVENUE, Gl.BREAKAGE_REVENUE), "free credit is never revenue"


@pytest.mark.parametrize("seed", range(12))
def test_random_histories_keep_the_books(seed: int) -> None:
    sim = Sim(seed)
    for _ in range(400):
        sim.step()
        if sim.rng.random() < 0.05:
            for rules in (Rules(units={"token": UnitValue("USD", Decimal("0.0004"))}), proportional()):
                check(*run(sim, rules))
    at_expiry_rules = Rules(units={"token": UnitValue("USD", Decimal("0.0004"))})
    check(*run(sim, at_expiry_rules))
    check(*run(sim, proportional()))
    sim.settle_all()
    a, a_lines = run(sim, at_expiry_rules)
    p, p_lines = run(sim, proportional())
    check(a, a_lines)
    check(p, p_lines)
    assert any(b.method is BreakageMethod.PROPORTIONAL for b in p.lots.values())
    for lot_id, book in a.lots.items():  # both methods converge once every lot settled
        other = p.lots[lot_id]
        assert book.units_remaining == other.units_remaining == 0
        assert (book.recognized, book.breakage, book.transferred_out, book.voided) == (
            other.recognized, other.breakage, other.transferred_out, other.voided), lot_id
        assert other.advance == 0


def test_proportional_breakage_is_recognized_with_use_and_trued_up_at_expiry() -> None:
    rules = Rules(breakage=Breakage(BreakageMethod.PROPORTIONAL, Decimal("0.2")))
    books = Books(rules, SCALES)
    g = LotGrant("L", "a", "PURCHASED", "USD", 2, 10_000, Decimal("0.9"))
    at = T0
    books.apply(LedgerEntry(1, "GRANT", "L", "a", 10_000, at, at), g)  # 100.00 credit for 90.00
    lines = books.apply(LedgerEntry(2, "DEBIT", "L", "a", 4_000, at, at))  # 40.00 used: 36.00 revenue
    assert [(x.gl, x.debit, x.credit) for x in lines] == [
        (Gl.DEFERRED_REVENUE, 3600, 0), (Gl.REVENUE, 0, 3600),
        (Gl.EXPECTED_BREAKAGE, 900, 0), (Gl.BREAKAGE_REVENUE, 0, 900)]  # 36 * 0.2/0.8 = 9.00
    lines = books.apply(LedgerEntry(3, "EXPIRE", "L", "a", 6_000, at, at))  # 60.00 expire: 54.00 breakage
    assert [(x.gl, x.debit, x.credit) for x in lines] == [
        (Gl.DEFERRED_REVENUE, 5400, 0), (Gl.BREAKAGE_REVENUE, 0, 5400),
        (Gl.BREAKAGE_REVENUE, 900, 0), (Gl.EXPECTED_BREAKAGE, 0, 900)]
    book = books.lots["L"]
    assert (book.recognized, book.breakage, book.still_deferred) == (3600, 5400, 0)


def test_free_credit_is_booked_at_face_value_never_as_revenue() -> None:
    books = Books(Rules(free_treatment={"PROMOTIONAL": Rules().free_treatment["PROMOTIONAL"]}), SCALES)
    g = LotGrant("P", "a", "PROMOTIONAL", "USD", 2, 5_000, Decimal(0), "spring")
    assert books.apply(LedgerEntry(1, "GRANT", "P", "a", 5_000, T0, T0), g) == []
    lines = books.apply(LedgerEntry(2, "POST", "P", "a", 1_234, T0, T0, hold_key="h", reference="inv-1"))
    assert [(x.gl_code, x.debit, x.credit) for x in lines] == [("6100", 1234, 0), ("1100", 0, 1234)]
    assert lines[0].campaign_id == "spring" and lines[0].hold_key == "h" and lines[0].reference == "inv-1"
    assert books.apply(LedgerEntry(3, "EXPIRE", "P", "a", 3_766, T0, T0)) == []


def test_rounding_half_up_and_exact_money_at_grant() -> None:
    from fractions import Fraction

    assert [round_half_up(Fraction(n, 2)) for n in (1, 3, 5, -1)] == [1, 2, 3, -1]
    assert money_at_grant(1_000_000, 0, Decimal("0.000015"), 2) == 1500  # 1M tokens at $0.000015
    assert money_at_grant(333, 2, Decimal("0.333333333"), 2) == 111


def test_rules_are_data_round_trip_and_refuse_bad_fields() -> None:
    rules = parse_rules('{"breakage": {"method": "PROPORTIONAL", "expected_rate": "0.1"},'
                        ' "free_treatment": {"PROMOTIONAL": "CONTRA_REVENUE"}, "chart": {"REVENUE": "4010"},'
                        ' "units": {"token": {"currency": "EUR", "face_value": "0.001"}}}')
    assert parse_rules(rules_json(rules)) == rules
    assert rules.code(Gl.REVENUE) == "4010" and rules.money_of("token") == UnitValue("EUR", Decimal("0.001"))
    for bad, field in [('{"free_treatment": {"PROMOTIONAL": "DEFERRED_REVENUE"}}', "rules.free_treatment.PROMOTIONAL"),
                       ('{"breakage": {"method": "PROPORTIONAL", "expected_rate": "1"}}',
                        "rules.breakage.expected_rate"),
                       ('{"nope": 1}', "rules.nope"), ('[1]', "rules"),
                       ('{"units": {"token": {"currency": "XXQ"}}}', "rules.units.token.currency")]:
        with pytest.raises(Rejection) as e:
            parse_rules(bad)
        assert e.value.field == field


def test_proportional_rate_estimated_from_the_tenants_history() -> None:
    from finance.domain.rules import MIN_HISTORY_LOTS, estimated_rate

    assert estimated_rate(300, 1000, MIN_HISTORY_LOTS - 1) is None  # too little history: the configured rate
    assert estimated_rate(300, 1000, MIN_HISTORY_LOTS) == Decimal("0.3")
    assert estimated_rate(999, 1000, 50) == Decimal("0.95")  # capped
    rules = parse_rules('{"breakage": {"method": "PROPORTIONAL", "expected_rate": "0.1", "estimate": true}}')
    assert rules.estimates and parse_rules(rules_json(rules)) == rules
    g = LotGrant("L", "a", "PURCHASED", "USD", 2, 10_000, Decimal(1))
    fresh = Books(rules, SCALES)
    fresh.apply(LedgerEntry(1, "GRANT", "L", "a", 10_000, T0, T0), g)
    assert fresh.lots["L"].expected_rate == Decimal("0.1")
    seasoned = Books(rules, SCALES, history={"PURCHASED": Decimal("0.3")})
    seasoned.apply(LedgerEntry(1, "GRANT", "L", "a", 10_000, T0, T0), g)
    assert seasoned.lots["L"].expected_rate == Decimal("0.3")  # kept for the lot's life
    with pytest.raises(Rejection) as e:
        parse_rules('{"breakage": {"method": "AT_EXPIRY", "estimate": true}}')
    assert e.value.field == "rules.breakage.estimate"
