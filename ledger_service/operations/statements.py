"""GetStatement and ExportStatement: an account's period as the customer reads it, reconciled with
the ledger on every call (`ledger_service.domain.statements` states the invariant).

Every figure of one call comes from one REPEATABLE READ snapshot. A statement pages its lines by a
token carrying the last entry id and the running position there; each page checks that position
against the journal (a token that does not match is INVALID_ARGUMENT), and the last page checks
that its running balance ends on the closing balance.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TypeVar

import asyncpg

from ledger_service.domain import statements as rules
from ledger_service.domain.journal import Entry
from ledger_service.domain.statements import Line, LotInfo, Position, StatementMismatch, TypeTotals
from ledger_service.operations.context import Ledger
from ledger_service.storage import statements as rows
from service_runtime.pages import decode_token, encode_token
from service_runtime.rejections import invalid

T = TypeVar("T")
DEFAULT_TRAILING_DAYS = 30
MAX_TRAILING_DAYS = 366


@dataclass(frozen=True, slots=True)
class StatementQuery:
    account_id: str
    unit: str
    start: datetime | None
    end: datetime | None  # None: now
    limit: int = 100
    page_token: str = ""
    trailing_days: int = DEFAULT_TRAILING_DAYS


@dataclass
class StatementView:
    """One page of a statement and its totals, in minor units of `unit` (scale `scale`)."""

    account_id: str
    unit: str
    scale: int
    start: datetime | None
    end: datetime
    opening: Position
    closing: Position
    credits_in: int
    credits_out: int
    entries: int
    by_type: list[TypeTotals]
    timeline: list[tuple[datetime, str, rules.LotType, int]]
    trailing_days: int
    trailing_consumption: int
    days_until_depletion: Decimal | None
    lots: dict[str, LotInfo]
    lines: list[Line] = field(default_factory=list)
    next_page_token: str = ""


@dataclass
class _Snapshot:
    unit: str
    end: datetime
    lots: dict[str, LotInfo]
    opening: dict[str, Position]
    closing: dict[str, Position]
    head: int
    view: StatementView | None = None


def _decode(token: str) -> tuple[int, Position] | None:
    parts = decode_token(token, 3)
    if parts is None:
        return None
    try:
        after, balance, available = (int(p) for p in parts)
    except ValueError as exc:
        raise invalid("page_token", "is not a page token this service issued") from exc
    if after <= 0:
        raise invalid("page_token", "is not a page token this service issued")
    return after, Position(balance, available)


async def _snapshot(ledger: Ledger, conn: asyncpg.Connection, tenant_id: str, q: StatementQuery) -> _Snapshot:
    """Opening, closing and the period's totals; raises StatementMismatch unless they reconcile."""
    unit = await rows.unit_of(conn, tenant_id, q.account_id, q.unit)
    scale = await ledger.scale(tenant_id, unit) if unit else 0
    now = ledger.now()
    end = q.end or now
    head = await rows.head_entry(conn, tenant_id, q.account_id)
    lots = await rows.lots_of(conn, tenant_id, q.account_id, unit)
    before, _ = await rows.sums(conn, tenant_id, q.account_id, unit, None, q.start, head) if q.start else ([], 0)
    during, count = await rows.sums(conn, tenant_id, q.account_id, unit, q.start, q.end, head)
    opening = rules.positions(before)
    if q.end is None:  # closing: the projection itself, an account independent of the journal sums
        closing = {lot: Position(a + h, a) for lot, (a, h) in
                   (await rows.projection(conn, tenant_id, q.account_id, unit)).items()}
    else:
        upto, _ = await rows.sums(conn, tenant_id, q.account_id, unit, None, q.end, head)
        closing = rules.positions(upto)
    rules.reconcile(opening, rules.positions(during), closing)
    flows = rules.flows(during)
    days = q.trailing_days
    used = await rows.consumed(conn, tenant_id, q.account_id, unit, end - timedelta(days=days), end)
    close = rules.total(closing)
    view = StatementView(
        q.account_id, unit, scale, q.start, end, rules.total(opening), close,
        sum(i for i, _ in flows.values()), sum(o for _, o in flows.values()), count,
        rules.by_type(lots, opening, flows, closing), rules.expiry_timeline(lots, closing), days, used,
        rules.days_until_depletion(close.available, used, days), lots)
    return _Snapshot(unit, end, lots, opening, closing, head, view)


async def _start_of_page(conn: asyncpg.Connection, tenant_id: str, q: StatementQuery, snap: _Snapshot,
                         token: tuple[int, Position] | None) -> tuple[int, Position]:
    """Where this page's lines start: (after entry id, running position), the token checked."""
    opening = rules.total(snap.opening)
    if token is None:
        return 0, opening
    after, claimed = token
    upto, _ = await rows.sums(conn, tenant_id, q.account_id, snap.unit, q.start, q.end, after)
    moved = rules.total(rules.positions(upto))
    actual = Position(opening.balance + moved.balance, opening.available + moved.available)
    if (actual.balance, actual.available) != (claimed.balance, claimed.available):
        raise invalid("page_token", "does not belong to this statement")
    return after, claimed


async def _attach_items(conn: asyncpg.Connection, tenant_id: str, lines: list[Line]) -> None:
    keys = sorted({ln.hold_key for ln in lines if ln.movement == rules.Movement.CONSUMPTION and ln.hold_key})
    items = await rows.consumption_items(conn, tenant_id, keys)
    for ln in lines:
        if ln.movement == rules.Movement.CONSUMPTION:
            ln.items = items.get(ln.hold_key, [])


async def get_statement(ledger: Ledger, tenant_id: str, q: StatementQuery, pack: Callable[[StatementView], T]) -> T:
    """One page of the statement with its totals; raises StatementMismatch (INTERNAL) if the ledger
    and the statement disagree."""
    token = _decode(q.page_token)
    async with ledger.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        snap = await _snapshot(ledger, conn, tenant_id, q)
        view = snap.view
        assert view is not None
        after, start = await _start_of_page(conn, tenant_id, q, snap, token)
        fetch = min(q.limit * 8, 10_000)
        found = [e for e in await rows.page(conn, tenant_id, q.account_id, snap.unit, q.start, q.end, after, fetch)
                 if e.entry_id <= snap.head]
        fetched_all = len(found) < fetch
        found = rules.complete_groups(found, fetched_all)
        lines = rules.group(found, start)
        more = len(lines) > q.limit or not fetched_all
        if len(lines) > q.limit:
            lines = lines[:q.limit]
        if not more:
            _check_ends(lines, start, view.closing)
        await _attach_items(conn, tenant_id, lines)
        view.lines = lines
        if more and lines:
            last = lines[-1]
            view.next_page_token = encode_token(last.last_entry_id, last.after.balance, last.after.available)
        return pack(view)


def _check_ends(lines: list[Line], start: Position, closing: Position) -> None:
    end = lines[-1].after if lines else start
    if (end.balance, end.available) != (closing.balance, closing.available):
        raise StatementMismatch(f"statement lines end at {end}, the ledger's closing balance is {closing}")


# --- exports ----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ExportProgress:
    """What one streamed chunk covers."""

    rows: list[Line] | list[Entry]
    entries_done: int
    entries_total: int
    view: StatementView
    last: bool = False


async def export(ledger: Ledger, tenant_id: str, q: StatementQuery, raw: bool,
                 batch: int = 2000) -> AsyncIterator[ExportProgress]:
    """The whole statement (lines) or transaction log (`raw`: entries), in keyset batches from one
    snapshot; the statement's lines are checked to end on the closing balance."""
    async with ledger.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        snap = await _snapshot(ledger, conn, tenant_id, q)
        view = snap.view
        assert view is not None
        running = rules.total(snap.opening)
        done = 0
        pending: list[Entry] = []  # a group that may continue in the next batch
        async for chunk in rows.entries(conn, tenant_id, q.account_id, snap.unit, q.start, q.end, snap.head, batch):
            done += len(chunk)
            if raw:
                yield ExportProgress(chunk, done, view.entries, view)
                continue
            ready = rules.complete_groups(pending + chunk, False)
            pending = (pending + chunk)[len(ready):]
            lines = rules.group(ready, running)
            if lines:
                running = lines[-1].after
                await _attach_items(conn, tenant_id, lines)
            yield ExportProgress(lines, done - len(pending), view.entries, view)
        lines = rules.group(pending, running) if not raw else []
        if lines:
            await _attach_items(conn, tenant_id, lines)
            running = lines[-1].after
        if not raw:
            _check_ends([], running, view.closing)
        yield ExportProgress(lines, done, view.entries, view, last=True)
