"""The finance projector: ledger journal -> finance books, incrementally, exactly once, gap-safe.

Asynchronous, not in the ledger's write transaction: the hot path (the AccountWriter's group
commit) stays as it was, and the books catch up within a second (the ledger server runs
`project_forever`; every finance read and close first catches up itself).

Gap safety (see migration 0013): a cursor on entry_id alone is not safe (a bigserial is taken at
insert and committed in any order), so entries are read in entry_id order only up to a safe mark
(`safe_mark`): the journal sequence's last value S, read before the projector takes a transaction
id P of its own, becomes safe once the oldest running transaction is >= P (`pg_snapshot_xmin`) --
every transaction that took an id <= S had its transaction id before S was read (the journal's
statement trigger makes sure of it), so below P, and has ended, so no entry can appear behind the
cursor later. (Not a snapshot's xmax, as migration 0013 says: xmax is one past the latest
*completed* transaction, so a writer that is the newest transaction running is not below it, and
a mark taken while it held an entry id passed that entry -- a GRANT skipped, its lot's next HOLD
then met a lot the books never saw.) entry_id order is the
ledger's own order per lot (ids are taken under the account's lock), so a lot's book sees its
entries as they happened. A long write transaction holds the mark back until it ends.

Exactly once: one transaction per batch writes the lines, one finance_entries row per ledger entry
(primary key (tenant, entry_id)) and the cursor, under the cursor row's lock; two projectors of one
tenant take turns, and a crash loses the whole batch or nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from finance.domain.books import Books, LedgerEntry, Line, LotBook, LotGrant, Posting, TransferMoney
from finance.domain.reports import TRANSFER_REFERENCES, is_transfer
from finance.domain.rules import DEFAULT_RULES, BreakageMethod, Gl, Rules, Treatment, estimated_rate, parse_rules
from ledger_service.storage.catalog import BUILTIN_UNITS
from service_runtime.currencies import CURRENCY_SCALES
from service_runtime.row_security import current_tenant

log = logging.getLogger(__name__)

WINDOW = 5000  # entry ids per batch (the batch holds the tenant's entries among them)
PROJECT_INTERVAL_S = 0.5

ENSURE_CURSOR = "INSERT INTO finance_cursors (tenant_id) VALUES ($1) ON CONFLICT (tenant_id) DO NOTHING"
# `copy`: may this session COPY into the books (row security does not apply to it: the owner, as the
# ledger server's background projector connects; COPY FROM is refused where a row policy applies).
LOCK_CURSOR = """
SELECT entry_id, entries_projected, closed_through,
       NOT (row_security_active('finance_lines') OR row_security_active('finance_entries')) AS copy
FROM finance_cursors WHERE tenant_id = $1 FOR UPDATE
"""
LAST_ENTRY_ID = "SELECT coalesce(pg_sequence_last_value('journal_entry_id_seq'), 0)"
# A transaction id taken now: greater than that of every transaction already running (a snapshot's xmax
# is not: it is one past the latest completed one). Its commit need not wait for the disk.
SYNC_OFF = "SET LOCAL synchronous_commit = off"
OWN_XID = "SELECT pg_current_xact_id()::text::numeric"
SNAPSHOT_XMIN = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::numeric"
# A window of entry ids at a time, whatever tenants they belong to: each batch costs O(window) on the
# primary key, never a scan (and sort) of everything still ahead of the cursor.
PENDING = """
SELECT entry_id, kind, lot_id, account_id, amount, effective_at, recorded_at, reference, hold_key, reason
FROM journal
WHERE entry_id > $2 AND entry_id <= $3 AND tenant_id = $1
ORDER BY entry_id
"""
# What a GRANT needs of its lot (joined apart: a join on every entry misleads the planner on a fresh table).
GRANTED_LOTS = """
SELECT l.lot_id, l.lot_type, l.unit, u.scale AS unit_scale, l.cost_basis, l.campaign_id, l.source,
       coalesce(l.origin_lot_id, '') AS origin_lot_id, coalesce(o.lot_type, '') AS origin_type
FROM lots l
LEFT JOIN units u ON u.tenant_id = l.tenant_id AND u.code = l.unit
LEFT JOIN lots o ON o.tenant_id = l.tenant_id AND o.lot_id = l.origin_lot_id
WHERE l.tenant_id = $1 AND l.lot_id = ANY($2::text[])
"""
# The tenant's own breakage history by lot type: settled lots (nothing left), transfer copies excluded.
HISTORY = """
SELECT lot_type, sum(units_expired)::bigint AS expired, sum(units_granted)::bigint AS granted, count(*) AS lots
FROM finance_lots WHERE tenant_id = $1 AND units_remaining = 0 AND origin_lot_id = '' GROUP BY lot_type
"""
LATEST_RULES = "SELECT version, rules FROM finance_rules WHERE tenant_id = $1 ORDER BY version DESC LIMIT 1"
LOAD_LOTS = "SELECT * FROM finance_lots WHERE tenant_id = $1 AND lot_id = ANY($2::text[])"
LOAD_LEGS = """
SELECT reference, from_lot_id, from_origin_lot_id, units, money FROM finance_transfer_legs
WHERE tenant_id = $1 AND reference = ANY($2::text[]) AND NOT matched
"""

_LOT_COLUMNS = [f.name for f in fields(LotBook)]
UPSERT_LOTS = """
INSERT INTO finance_lots (tenant_id, lot_id, account_id, lot_type, campaign_id, source, origin_lot_id, currency,
    treatment, breakage_method, expected_rate, rules_version, granted_at, deferred_at_grant, units_granted,
    units_remaining, recognized, breakage, advance, transferred_out, voided, units_consumed, units_expired,
    first_consumed_at, unit)
SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
    $9::text[], $10::text[], $11::numeric[], $12::integer[], $13::timestamptz[], $14::bigint[], $15::bigint[],
    $16::bigint[], $17::bigint[], $18::bigint[], $19::bigint[], $20::bigint[], $21::bigint[], $22::bigint[],
    $23::bigint[], $24::timestamptz[], $25::text[])
ON CONFLICT (tenant_id, lot_id) DO UPDATE SET units_remaining = EXCLUDED.units_remaining,
    recognized = EXCLUDED.recognized, breakage = EXCLUDED.breakage, advance = EXCLUDED.advance,
    transferred_out = EXCLUDED.transferred_out, voided = EXCLUDED.voided, units_consumed = EXCLUDED.units_consumed,
    units_expired = EXCLUDED.units_expired, first_consumed_at = EXCLUDED.first_consumed_at
"""
INSERT_LEGS = """
INSERT INTO finance_transfer_legs (tenant_id, reference, from_lot_id, from_origin_lot_id, units, money)
SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[])
"""
MATCH_LEGS = """
UPDATE finance_transfer_legs SET matched = true
WHERE tenant_id = $1 AND (reference, from_lot_id) IN (SELECT * FROM unnest($2::text[], $3::text[]))
"""
# Lines and entries travel as one JSON array of rows each (asyncpg's array encoding of 17 columns
# of tens of thousands of rows costs more than the whole derivation; COPY is refused under row security).
INSERT_ENTRIES = """
INSERT INTO finance_entries (tenant_id, entry_id, kind, lot_id, account_id, units, money, effective_at, posting_at)
SELECT $1, (x->>0)::bigint, x->>1, x->>2, x->>3, (x->>4)::bigint, (x->>5)::bigint, (x->>6)::timestamptz,
       (x->>7)::timestamptz
FROM jsonb_array_elements($2::jsonb) x
"""
INSERT_LINES = """
INSERT INTO finance_lines (tenant_id, entry_id, line_no, posting_at, effective_at, gl_account, gl_code, debit, credit,
    currency, account_id, lot_id, lot_type, campaign_id, entry_kind, hold_key, reference, memo)
SELECT $1, (x->>0)::bigint, (x->>1)::smallint, (x->>2)::timestamptz, (x->>3)::timestamptz, x->>4, x->>5,
       (x->>6)::bigint, (x->>7)::bigint, x->>8, x->>9, x->>10, x->>11, x->>12, x->>13, x->>14, x->>15, x->>16
FROM jsonb_array_elements($2::jsonb) x
"""
UPSERT_DAY_SUMS = """
INSERT INTO finance_day_sums AS s (tenant_id, day, account_id, lot_type, currency, gl_account, entry_kind, transfer,
    memo, breakage_method, debit, credit, lines)
SELECT $1, (x->>0)::date, x->>1, x->>2, x->>3, x->>4, x->>5, (x->>6)::boolean, x->>7, x->>8, (x->>9)::bigint,
       (x->>10)::bigint, (x->>11)::bigint
FROM jsonb_array_elements($2::jsonb) x
ON CONFLICT (tenant_id, day, account_id, lot_type, currency, gl_account, entry_kind, transfer, memo, breakage_method)
DO UPDATE SET debit = s.debit + EXCLUDED.debit, credit = s.credit + EXCLUDED.credit, lines = s.lines + EXCLUDED.lines
"""
UPSERT_MONEY_SUMS = """
INSERT INTO finance_money_sums AS s (tenant_id, day, account_id, lot_type, currency, paid, money_in, money_out)
SELECT $1, (x->>0)::date, x->>1, x->>2, x->>3, (x->>4)::boolean, (x->>5)::bigint, (x->>6)::bigint
FROM jsonb_array_elements($2::jsonb) x
ON CONFLICT (tenant_id, day, account_id, lot_type, currency, paid)
DO UPDATE SET money_in = s.money_in + EXCLUDED.money_in, money_out = s.money_out + EXCLUDED.money_out
"""
# The overlapped path (the default) writes a batch's entries and lines chunk by chunk, each chunk in one
# statement, so the database stores one chunk while the books derive the next.
INSERT_CHUNK = """
WITH x AS MATERIALIZED (SELECT value AS x FROM jsonb_array_elements($2::jsonb)),
entries AS (
    INSERT INTO finance_entries (tenant_id, entry_id, kind, lot_id, account_id, units, money, effective_at, posting_at)
    SELECT $1, (x->>0)::bigint, x->>1, x->>2, x->>3, (x->>4)::bigint, (x->>5)::bigint, (x->>6)::timestamptz,
           (x->>7)::timestamptz
    FROM x)
INSERT INTO finance_lines (tenant_id, entry_id, line_no, posting_at, effective_at, gl_account, gl_code, debit, credit,
    currency, account_id, lot_id, lot_type, campaign_id, entry_kind, hold_key, reference, memo)
SELECT $1, (x->>0)::bigint, p.n, (x->>7)::timestamptz, (x->>6)::timestamptz, p.v->>0, p.v->>1, (p.v->>2)::bigint,
       (p.v->>3)::bigint, x->>8, x->>14, x->>2, x->>9, x->>10, x->>1, x->>11, x->>12, p.v->>4
FROM x, jsonb_array_elements(x->13) WITH ORDINALITY AS p(v, n)
"""
# Each batch with entries, for the record: what a from-scratch re-derivation needs (migration 0018).
RECORD_BATCH = """
INSERT INTO finance_batches (tenant_id, after_entry_id, upto_entry_id, rules_version, closed_through, entries)
VALUES ($1, $2, $3, $4, $5, $6)
"""
ADVANCE_CURSOR = """
UPDATE finance_cursors SET entry_id = $2, entries_projected = entries_projected + $3, updated_at = now()
WHERE tenant_id = $1
"""


@dataclass(frozen=True, slots=True)
class Cursor:
    entry_id: int
    entries_projected: int
    closed_through: datetime | None
    copy: bool = False  # the session may COPY into the books (see LOCK_CURSOR)


def _book(row: Any) -> LotBook:
    return LotBook(
        row["lot_id"], row["account_id"], row["lot_type"], row["campaign_id"], row["source"], row["origin_lot_id"],
        row["currency"], Treatment(row["treatment"]), BreakageMethod(row["breakage_method"]),
        Decimal(row["expected_rate"]), row["rules_version"], row["granted_at"], row["deferred_at_grant"],
        row["units_granted"], row["units_remaining"], row["recognized"], row["breakage"], row["advance"],
        row["transferred_out"], row["voided"], row["units_consumed"], row["units_expired"], row["first_consumed_at"],
        row["unit"])


def _entry(row: Any, lots: dict[str, Any], closed: datetime | None) -> tuple[LedgerEntry, LotGrant | None]:
    """The entry, posting when it was recorded, or at the start of the first open period if that is later."""
    entry_id, kind, lot_id, account_id, amount, effective_at, recorded, reference, hold_key, reason = row  # PENDING
    posting_at = recorded if closed is None or recorded >= closed else closed
    entry = LedgerEntry(entry_id, kind, lot_id, account_id, amount, effective_at, recorded, reference, hold_key, reason,
                        posting_at)
    if kind != "GRANT":
        return entry, None
    lot = lots[row["lot_id"]]
    scale = lot["unit_scale"] if lot["unit_scale"] is not None else BUILTIN_UNITS.get(lot["unit"], 0)
    return entry, LotGrant(row["lot_id"], row["account_id"], lot["lot_type"], lot["unit"], scale,
                           row["amount"], Decimal(lot["cost_basis"]), lot["campaign_id"], lot["source"],
                           lot["origin_lot_id"], lot["origin_type"])


async def rules_of(conn: asyncpg.Connection, tenant_id: str) -> Rules:
    """The tenant's rules in force (the defaults until it sets some)."""
    row = await conn.fetchrow(LATEST_RULES, tenant_id)
    return parse_rules(row["rules"], row["version"]) if row else DEFAULT_RULES


async def history_rates(conn: asyncpg.Connection, tenant_id: str) -> dict[str, Decimal]:
    """Breakage rates the tenant's settled lots show, by lot type (only types with enough history)."""
    out = {}
    for r in await conn.fetch(HISTORY, tenant_id):
        rate = estimated_rate(r["expired"], r["granted"], r["lots"])
        if rate is not None:
            out[r["lot_type"]] = rate
    return out


async def lock_cursor(conn: asyncpg.Connection, tenant_id: str) -> Cursor:
    """The tenant's cursor, locked until the transaction ends (projectors and closes take turns)."""
    await conn.execute(ENSURE_CURSOR, tenant_id)
    row = await conn.fetchrow(LOCK_CURSOR, tenant_id)
    return Cursor(row["entry_id"], row["entries_projected"], row["closed_through"], row["copy"])


async def safe_mark(conn: asyncpg.Connection, wait_s: float = 10.0) -> int | None:
    """The highest entry id below which no entry can still appear (None: not within `wait_s`)."""
    last = await conn.fetchval(LAST_ENTRY_ID)
    async with conn.transaction():  # ends before the wait: the projector's own id must not hold xmin back
        await conn.execute(SYNC_OFF)
        own = await conn.fetchval(OWN_XID)
    deadline = asyncio.get_running_loop().time() + wait_s
    delay = 0.002
    while await conn.fetchval(SNAPSHOT_XMIN) < own:
        if asyncio.get_running_loop().time() > deadline:
            return None
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
    return int(last)


async def _load(conn: asyncpg.Connection, tenant_id: str, rows: list[Any], books: Books) -> dict[str, Any]:
    """Loads the books of the lots the batch touches; returns the lot rows of its GRANTs."""
    granted = {r["lot_id"]: r for r in await conn.fetch(
        GRANTED_LOTS, tenant_id, sorted({r["lot_id"] for r in rows if r["kind"] == "GRANT"}))}
    lot_ids = {r["lot_id"] for r in rows if r["kind"] != "GRANT"}
    lot_ids |= {r["origin_lot_id"] for r in granted.values() if r["origin_lot_id"]}
    for r in await conn.fetch(LOAD_LOTS, tenant_id, sorted(lot_ids)):
        books.lots[r["lot_id"]] = _book(r)
    refs = sorted({r["reference"] for r in rows if r["reference"].startswith(("transfer/", "rollover/"))})
    if refs:
        for r in await conn.fetch(LOAD_LEGS, tenant_id, refs):
            books.transfers[(r["reference"], r["from_lot_id"])] = TransferMoney(
                r["from_origin_lot_id"], r["units"], r["money"])
    return granted


def _columns(items: Iterable[Any], names: list[str]) -> list[list[Any]]:
    items = list(items)
    return [[getattr(x, n) for x in items] for n in names]


MONEY_IN = frozenset({"GRANT", "REINSTATE"})


@dataclass
class _Batch:
    """What one batch writes, built entry by entry: rows as JSON-ready tuples (instants formatted once
    per entry), and the day sums of its lines and money."""

    entries: list[Any] = field(default_factory=list)  # tuples (JSON paths) or COPY text rows
    lines: list[Any] = field(default_factory=list)
    days: dict[tuple[Any, ...], list[int]] = field(default_factory=dict)
    money: dict[tuple[Any, ...], list[int]] = field(default_factory=dict)
    touched: set[str] = field(default_factory=set)
    # COPY path: what a line takes of its lot (COPY text of its columns, then account, lot type, currency,
    # breakage method, paid: fixed at grant), and of its GL account (role, COPY text of role and code)
    lot_texts: dict[str, tuple[str, str, str, str, str, bool]] = field(default_factory=dict)
    gl_texts: dict[Gl, tuple[str, str]] = field(default_factory=dict)
    last_at: datetime | None = None  # the last posting instant formatted, and its text
    last_posting: str = ""

    def add_postings(self, entry: LedgerEntry, postings: list[Posting], books: Books) -> None:
        """`add` from the books' postings (`Books.postings`), for `INSERT_CHUNK`: one row per entry in
        `entries` with its lines nested (what a line repeats of its entry and lot travels once)."""
        at = entry.posting_at
        assert at is not None
        posting = at.isoformat()
        effective = posting if entry.effective_at == at else entry.effective_at.isoformat()
        day = posting[:10] if at.tzinfo is UTC else at.astimezone(UTC).date().isoformat()
        book = books.lots[entry.lot_id]
        method, codes, kind = book.method.value, books.rules.codes, entry.kind
        transfer = is_transfer(entry.reference)
        lines = []
        for gl, debit, credit, memo in postings:
            value = gl.value
            lines.append((value, codes[value], debit, credit, memo))
            key = (day, book.account_id, book.lot_type, book.currency, value, kind, transfer, memo, method)
            acc = self.days.get(key)
            if acc is None:
                self.days[key] = [debit, credit, 1]
            else:
                acc[0] += debit
                acc[1] += credit
                acc[2] += 1
        moved = books.moved
        self.entries.append((entry.entry_id, kind, entry.lot_id, entry.account_id, entry.amount, moved, effective,
                             posting, book.currency, book.lot_type, book.campaign_id, entry.hold_key, entry.reference,
                             lines, book.account_id))
        if moved:
            money = self.money.setdefault((day, entry.account_id, book.lot_type, book.currency, book.paid), [0, 0])
            money[0 if kind in MONEY_IN else 1] += moved
        self.touched.add(entry.lot_id)

    def add_copy_text(self, tenant: str, entry: LedgerEntry, postings: list[Posting], books: Books) -> None:
        """`add_postings` for text `COPY` (`_copy_chunk`): one text row per line into `lines` and per entry
        into `entries`, columns in `LINE_COLUMNS` / `ENTRY_COLUMNS` order, values escaped (`copy_text`);
        what a line repeats of its entry and lot formatted once per entry (its lot's part once per lot)."""
        at = entry.posting_at
        assert at is not None
        if at == self.last_at:  # entries of one ledger batch share their instant: formatted once
            posting = self.last_posting
        else:
            posting = at.isoformat()
            self.last_at, self.last_posting = at, posting
        effective = posting if entry.effective_at == at else entry.effective_at.isoformat()
        day = posting[:10] if at.tzinfo is UTC else at.astimezone(UTC).date().isoformat()
        kind, entry_id, lot_id = entry.kind, entry.entry_id, entry.lot_id
        lot = self.lot_texts.get(lot_id)
        if lot is None:
            b = books.lots[lot_id]
            lot = self.lot_texts[lot_id] = ("\t".join(copy_text(x) for x in (
                b.currency, b.account_id, lot_id, b.lot_type, b.campaign_id)), b.account_id, b.lot_type, b.currency,
                b.method.value, b.paid)
        text, account_id, lot_type, currency, method, paid = lot
        transfer = entry.reference.startswith(TRANSFER_REFERENCES)
        head = f"{tenant}\t{entry_id}\t"
        mid = f"\t{posting}\t{effective}\t"
        tail = f"\t{text}\t{kind}\t{copy_text(entry.hold_key)}\t{copy_text(entry.reference)}\t"
        lines, days, gls, memos = self.lines, self.days, self.gl_texts, MEMO_TEXTS
        for n, (gl, debit, credit, memo) in enumerate(postings, 1):
            value, gl_text = gls[gl]
            lines.append(f"{head}{n}{mid}{gl_text}\t{debit}\t{credit}{tail}{memos[memo]}\n")
            key = (day, account_id, lot_type, currency, value, kind, transfer, memo, method)
            acc = days.get(key)
            if acc is None:
                days[key] = [debit, credit, 1]
            else:
                acc[0] += debit
                acc[1] += credit
                acc[2] += 1
        moved = books.moved
        self.entries.append(f"{head}{kind}\t{copy_text(lot_id)}\t{copy_text(entry.account_id)}\t"
                            f"{entry.amount}\t{moved}\t{effective}\t{posting}\n")
        if moved:
            money = self.money.setdefault((day, entry.account_id, lot_type, currency, paid), [0, 0])
            money[0 if kind in MONEY_IN else 1] += moved
        self.touched.add(lot_id)

    def add(self, entry: LedgerEntry, lines: list[Line], books: Books) -> None:
        assert entry.posting_at is not None
        posting, effective = entry.posting_at.isoformat(), entry.effective_at.isoformat()
        day = entry.posting_at.astimezone(UTC).date().isoformat()
        book = books.lots[entry.lot_id]
        method = book.method.value
        for x in lines:
            self.lines.append((x.entry_id, x.line_no, posting, effective, x.gl.value, x.gl_code, x.debit, x.credit,
                               x.currency, x.account_id, x.lot_id, x.lot_type, x.campaign_id, x.entry_kind,
                               x.hold_key, x.reference, x.memo))
            key = (day, x.account_id, x.lot_type, x.currency, x.gl.value, x.entry_kind, is_transfer(x.reference),
                   x.memo, method)
            acc = self.days.setdefault(key, [0, 0, 0])
            acc[0] += x.debit
            acc[1] += x.credit
            acc[2] += 1
        self.entries.append((entry.entry_id, entry.kind, entry.lot_id, entry.account_id, entry.amount, books.moved,
                             effective, posting))
        if books.moved:
            money = self.money.setdefault((day, entry.account_id, book.lot_type, book.currency, book.paid), [0, 0])
            money[0 if entry.kind in MONEY_IN else 1] += books.moved
        self.touched.add(entry.lot_id)


async def _write(conn: asyncpg.Connection, tenant_id: str, books: Books, legs_before: set[tuple[str, str]],
                 batch: _Batch) -> None:
    await _write_lots(conn, tenant_id, books, legs_before, batch.touched)
    await conn.execute(INSERT_ENTRIES, tenant_id, json.dumps(batch.entries))
    if batch.lines:
        await conn.execute(INSERT_LINES, tenant_id, json.dumps(batch.lines))
    await _write_sums(conn, tenant_id, batch)


async def _write_sums(conn: asyncpg.Connection, tenant_id: str, batch: _Batch) -> None:
    # days are ISO strings (the JSON paths) or dates (the COPY path): str() is the ISO form of both
    if batch.days:  # the day sums the reports read, in the same transaction as the lines
        await conn.execute(UPSERT_DAY_SUMS, tenant_id,
                           json.dumps([[str(k[0]), *k[1:], *v] for k, v in batch.days.items()]))
    if batch.money:
        await conn.execute(UPSERT_MONEY_SUMS, tenant_id,
                           json.dumps([[str(k[0]), *k[1:], *v] for k, v in batch.money.items()]))


async def _write_lots(conn: asyncpg.Connection, tenant_id: str, books: Books, legs_before: set[tuple[str, str]],
                      touched: set[str]) -> None:
    """The touched lots' books and the transfer legs that started or ended (before any line that joins them)."""
    lots = [books.lots[k] for k in sorted(touched)]
    cols = _columns(lots, _LOT_COLUMNS)
    cols[_LOT_COLUMNS.index("treatment")] = [b.treatment.value for b in lots]
    cols[_LOT_COLUMNS.index("method")] = [b.method.value for b in lots]
    await conn.execute(UPSERT_LOTS, tenant_id, *cols)
    new = sorted(set(books.transfers) - legs_before)
    if new:
        legs = [books.transfers[k] for k in new]
        await conn.execute(INSERT_LEGS, tenant_id, [k[0] for k in new], [k[1] for k in new],
                           [x.from_origin_lot_id for x in legs], [x.units for x in legs], [x.money for x in legs])
    matched = sorted(legs_before - set(books.transfers))
    if matched:
        await conn.execute(MATCH_LEGS, tenant_id, [k[0] for k in matched], [k[1] for k in matched])


CHUNK = 2000  # entries per statement on the overlapped path

# The columns of the COPY path's records (`_Batch.add_records`).
ENTRY_COLUMNS = ("tenant_id", "entry_id", "kind", "lot_id", "account_id", "units", "money", "effective_at",
                 "posting_at")
LINE_COLUMNS = ("tenant_id", "entry_id", "line_no", "posting_at", "effective_at", "gl_account", "gl_code", "debit",
                "credit", "currency", "account_id", "lot_id", "lot_type", "campaign_id", "entry_kind", "hold_key",
                "reference", "memo")


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_text(value: str) -> str:
    """A text value as COPY's text format reads it back unchanged (backslash, tab, newline, CR escaped)."""
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.translate(_COPY_ESCAPES)
    return value


class _Escaped(dict[str, str]):
    """`copy_text` of each key, computed once (the memos: a few strings the books write)."""

    def __missing__(self, key: str) -> str:
        value = self[key] = copy_text(key)
        return value


MEMO_TEXTS = _Escaped()


async def _bytes(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _copy_chunk(conn: asyncpg.Connection, entries: list[str], lines: list[str]) -> None:
    """One chunk's rows by text COPY: no JSON to parse and no statement per row in the database, and
    (unlike binary COPY, which encodes every value of every row) little to format here."""
    if lines:
        await conn.copy_to_table("finance_lines", source=_bytes("".join(lines).encode()), columns=LINE_COLUMNS,
                                 format="text")
    await conn.copy_to_table("finance_entries", source=_bytes("".join(entries).encode()), columns=ENTRY_COLUMNS,
                             format="text")


async def _project_overlapped(conn: asyncpg.Connection, tenant_id: str, rows: list[Any], granted: dict[str, Any],
                              closed: datetime | None, books: Books, legs_before: set[tuple[str, str]],
                              copy: bool) -> None:
    """The batch's books derived chunk by chunk (`Books.postings`: the one derivation) while the database
    stores the chunk before (one statement in flight at a time, all in the batch's transaction); the
    lots, legs and sums, small, at the end. `copy`: the rows go by text COPY (`_copy_chunk`), else as
    one JSON statement per chunk (`INSERT_CHUNK`, where row security refuses COPY). A derivation that
    fails lets the chunk in flight end first (the transaction then rolls back on an idle connection)."""
    batch = _Batch()
    in_flight: asyncio.Task[Any] | None = None
    tenant, codes = copy_text(tenant_id), books.rules.codes
    batch.gl_texts.update((gl, (gl.value, f"{copy_text(gl.value)}\t{copy_text(codes[gl.value])}")) for gl in Gl)
    add = batch.add_copy_text if copy else None
    try:
        for start in range(0, len(rows), CHUNK):
            batch.entries, batch.lines = [], []
            for row in rows[start:start + CHUNK]:
                entry, grant = _entry(row, granted, closed)
                if add is not None:
                    add(tenant, entry, books.postings(entry, grant), books)
                else:
                    batch.add_postings(entry, books.postings(entry, grant), books)
            if in_flight is not None:
                await in_flight
            in_flight = asyncio.create_task(
                _copy_chunk(conn, batch.entries, batch.lines) if copy
                else conn.execute(INSERT_CHUNK, tenant_id, json.dumps(batch.entries)))
            await asyncio.sleep(0)  # let it send its rows before the next chunk's derivation
    finally:
        if in_flight is not None:
            await asyncio.wait([in_flight])  # done whatever happened; its error, if any, is raised below
    if in_flight is not None:
        await in_flight
    await _write_lots(conn, tenant_id, books, legs_before, batch.touched)
    await _write_sums(conn, tenant_id, batch)


async def project_batch(conn: asyncpg.Connection, tenant_id: str, mark: int, window: int = WINDOW, *,
                        overlapped: bool = True, copy: bool = True) -> tuple[int, bool]:
    """Projects the tenant's entries among the next `window` ids up to the safe `mark`, in one
    transaction; returns (entries projected, whether the cursor reached the mark). `overlapped=False`:
    the earlier path (a `Line` per line, every row written after the whole batch is derived), kept as
    the bench's baseline; the same books. `copy=False`: the JSON statements even where COPY is allowed
    (the bench compares them)."""
    async with conn.transaction():
        cursor = await lock_cursor(conn, tenant_id)
        upper = min(mark, cursor.entry_id + window)
        if upper <= cursor.entry_id:
            return 0, True
        rows = await conn.fetch(PENDING, tenant_id, cursor.entry_id, upper)
        if not rows:
            await conn.execute(ADVANCE_CURSOR, tenant_id, upper, 0)
            return 0, upper >= mark
        rules = await rules_of(conn, tenant_id)
        books = Books(rules, dict(CURRENCY_SCALES))
        if rules.estimates:
            books.history = await history_rates(conn, tenant_id)
        granted = await _load(conn, tenant_id, rows, books)
        legs_before = set(books.transfers)
        if overlapped:
            await _project_overlapped(conn, tenant_id, rows, granted, cursor.closed_through, books, legs_before,
                                      cursor.copy and copy)
        else:
            batch = _Batch()
            for row in rows:
                entry, grant = _entry(row, granted, cursor.closed_through)
                batch.add(entry, books.apply(entry, grant), books)
            await _write(conn, tenant_id, books, legs_before, batch)
        await conn.execute(RECORD_BATCH, tenant_id, cursor.entry_id, upper, rules.version, cursor.closed_through,
                           len(rows))
        await conn.execute(ADVANCE_CURSOR, tenant_id, upper, len(rows))
        return len(rows), upper >= mark


async def project(pool: asyncpg.Pool, tenant_id: str, *, window: int = WINDOW, mark: int | None = None,
                  wait_s: float = 10.0, overlapped: bool = True) -> int:
    """Catches the tenant's books up with every entry up to the safe mark; returns how many it projected."""
    total = 0
    async with pool.acquire() as conn:
        if mark is None:
            mark = await safe_mark(conn, wait_s)
            if mark is None:
                return 0
        done = False
        while not done:
            n, done = await project_batch(conn, tenant_id, mark, window, overlapped=overlapped)
            total += n
    return total


# Which tenants a round must visit, in O(entries since the lowest cursor) on the journal's primary key:
# not an EXISTS per tenant, which the planner answers with a scan of the whole journal (every round,
# 1M entries: seconds of lag). Tenants with no entry in (lowest cursor, mark] then have their cursor moved
# to the mark (nothing of theirs can appear below it), so an idle tenant does not hold the lowest back --
# once the lowest is `idle_slack` ids behind, so idle cursors are written once per that many ids, not
# every round.
LOWEST_CURSOR = """
SELECT coalesce(min(coalesce(c.entry_id, 0)), 0) FROM tenants t LEFT JOIN finance_cursors c ON c.tenant_id = t.tenant_id
"""
TENANTS_WITH_ENTRIES = "SELECT DISTINCT tenant_id FROM journal WHERE entry_id > $1 AND entry_id <= $2"
SKIP_IDLE = """
INSERT INTO finance_cursors AS c (tenant_id, entry_id)
SELECT t.tenant_id, $1 FROM tenants t WHERE NOT (t.tenant_id = ANY($2::text[]))
ON CONFLICT (tenant_id) DO UPDATE SET entry_id = EXCLUDED.entry_id, updated_at = now()
WHERE c.entry_id < EXCLUDED.entry_id
"""


IDLE_SLACK = WINDOW


async def project_all(owner_pool: asyncpg.Pool, idle_slack: int = IDLE_SLACK) -> int:
    """One round over every tenant with entries not yet projected (owner pool: sees every tenant)."""
    total = 0
    async with owner_pool.acquire() as conn:
        mark = await safe_mark(conn)
        if mark is None:
            return 0
        lowest = await conn.fetchval(LOWEST_CURSOR)
        if lowest >= mark:
            return 0
        behind = [r["tenant_id"] for r in await conn.fetch(TENANTS_WITH_ENTRIES, lowest, mark)]
        if mark - lowest > idle_slack:
            await conn.execute(SKIP_IDLE, mark, behind)
    for tenant_id in behind:
        token = current_tenant.set(tenant_id)
        try:
            total += await project(owner_pool, tenant_id, mark=mark)
        finally:
            current_tenant.reset(token)
    return total


async def project_forever(owner_pool: asyncpg.Pool, interval_s: float = PROJECT_INTERVAL_S) -> None:
    """The ledger server's background projector: a round every `interval_s`, errors logged and retried."""
    while True:
        try:
            await project_all(owner_pool)
        except asyncio.CancelledError:
            raise
        except Exception:  # a database restart, a bug in one batch: log, keep the server up, retry
            log.exception("finance projection round failed")
        await asyncio.sleep(interval_s)


@dataclass
class BackgroundProjector:
    """The books following the journal beside a ledger server: its own small owner pool (it reads
    every tenant) and the `project_forever` task; `stop()` ends both."""

    pool: asyncpg.Pool
    task: asyncio.Task[None]

    @classmethod
    async def start(cls, owner_dsn: str, interval_s: float = PROJECT_INTERVAL_S) -> BackgroundProjector:
        pool = await asyncpg.create_pool(owner_dsn, min_size=1, max_size=2)
        return cls(pool, asyncio.create_task(project_forever(pool, interval_s)))

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task
        await self.pool.close()
