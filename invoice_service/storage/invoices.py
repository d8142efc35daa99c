"""Invoice verbs — CreateDraft, SplitDraft and the two-phase finalize/void — one transaction each.

Lock order, everywhere: customer row, then invoice row. PrepareFinalize locks the customer FOR
UPDATE, which waits for in-flight ingest batches (they hold FOR KEY SHARE) and blocks new ones, so
the events it freezes are exactly the events it priced.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from invoice_service.domain import invoices as billing
from invoice_service.domain.catalog import Plan, overrides_from_json
from invoice_service.domain.invoices import (
    Aggregation,
    Application,
    ChargeKind,
    InvoiceView,
    LineItem,
    Piece,
    PlanTerms,
)
from invoice_service.domain.lifecycle import (
    BilledPeriod,
    Phase,
    Schedule,
    SegmentTerms,
    apply_overrides,
    segmented_line_items,
    segments,
    usage_by_segment,
)
from invoice_service.domain.money import currency_scale
from invoice_service.domain.periods import INTERVAL_MONTHS
from invoice_service.domain.pricing import Price
from invoice_service.domain.splitting import normalize_instants
from invoice_service.domain.states import Status, Transition, Verb, transition
from invoice_service.domain.unit_credits import UnitCover, left_to_pay, unit_charges, value_covers
from invoice_service.storage import invoice_sql as sql
from invoice_service.storage.catalog import CatalogOperations
from service_runtime.amounts import parse_minor
from service_runtime.idempotency import Guard, burn_key
from service_runtime.rates import applied_minor
from service_runtime.rejections import invalid, not_found, precondition

_Apply = Callable[[asyncpg.Connection, asyncpg.Record], Awaitable[None]]
_NoOp = Callable[[asyncpg.Connection], Awaitable[None]]


@dataclass(frozen=True)
class ApplicationIn:
    """A credit application as the coordinator sends it (amount still a decimal string)."""

    charge_id: str
    lot_id: str
    lot_type: str
    amount: str           # a lot in the invoice currency ("" for a usage-unit lot: the service values it)
    unit: str = ""        # "" = the invoice currency; else the lot's usage unit
    units: Decimal = Decimal(0)
    rate: Decimal | None = None  # a credit-unit lot at a published rate (currency per unit)
    rate_version: int = 0

    @property
    def converted(self) -> bool:
        return self.rate_version > 0


@dataclass(frozen=True)
class Computed:
    items: list[LineItem]
    pieces: list[Piece]
    digest: str
    prices: dict[str, Price]  # usage line code (meter) -> its price: to value units covered
    scale: int

    def value(self, covers: Sequence[UnitCover], field: str) -> list[Application]:
        return value_covers(self.items, self.pieces, self.prices, self.scale, covers, field)


@dataclass(frozen=True)
class Split:
    """A draft cut at instants: its view, what is left to pay per charge in the currency after the
    usage-unit lots' `unit_applications`, and the unit charges those lots may cover."""

    view: InvoiceView
    digest: str
    charges: list[Piece]
    unit_charges: list[Piece]


@dataclass(frozen=True)
class ListFilter:
    customer_id: str = ""
    statuses: tuple[str, ...] = ()
    prepared_before: datetime | None = None
    period_start: datetime | None = None
    after: tuple[datetime, str] | None = None
    limit: int = 100


class InvoiceOperations:
    def __init__(self, pool: asyncpg.Pool, catalog: CatalogOperations, clock_skew_s: int) -> None:
        self._pool = pool
        self._catalog = catalog
        self._skew = timedelta(seconds=clock_skew_s)

    # ---- drafts -------------------------------------------------------------------------------

    async def create_draft(self, guard: Guard, customer_id: str, period_start: datetime,
                           subscription_id: str = "") -> InvoiceView:
        """Creates the invoice of a subscription's period (`subscription_id` "" = the customer's only
        subscription), or recomputes it while it is a DRAFT."""
        tenant = guard.tenant_id
        async with self._pool.acquire() as conn, conn.transaction():
            await guard.claim(conn)
            ctx = await self._billing_context(conn, tenant, customer_id, subscription_id)
            schedule = Schedule(ctx["anchor"], INTERVAL_MONTHS[ctx["billing_interval"]], ctx["trial_end"],
                                ctx["calendar_aligned"], ctx["ends_at"])
            p = schedule.period_starting_at(period_start)
            if p is None:
                raise invalid("period_start", f"{period_start.isoformat()} is not a billing period start of "
                                              f"subscription {ctx['subscription_id']!r} (anchor "
                                              f"{ctx['anchor'].isoformat()})")
            if p.start > datetime.now(UTC) + self._skew:
                raise invalid("period_start", "the period has not started yet")
            header = await conn.fetchrow(sql.INSERT_DRAFT, tenant, "inv_" + secrets.token_hex(8), customer_id,
                                         ctx["subscription_id"], ctx["plan_id"], ctx["ledger_account_id"],
                                         ctx["currency"], p.start, p.end)
            if header is None:
                header = await conn.fetchrow(sql.SELECT_LIVE_INVOICE_FOR_UPDATE, tenant, ctx["subscription_id"],
                                             p.start)
            if header["status"] == Status.DRAFT.value:
                computed = await self._compute(conn, tenant, header, [], ctx)
                await self._replace_line_items(conn, tenant, header["invoice_id"], computed.items)
                await conn.execute(sql.UPDATE_DRAFT_TOTALS, tenant, header["invoice_id"],
                                   sum(i.amount_minor for i in computed.items))
            view = await self._load(conn, tenant, header["invoice_id"])
            await guard.record(conn, view)
            return view

    async def _billing_context(self, conn: asyncpg.Connection, tenant: str, customer_id: str,
                               subscription_id: str) -> asyncpg.Record:
        rows = await conn.fetch(sql.SELECT_BILLING_CONTEXT, tenant, customer_id, subscription_id)
        if not rows:
            raise not_found("customer_id", f"no customer {customer_id!r}")
        if rows[0]["subscription_id"] is None:
            if subscription_id:
                raise not_found("subscription_id", f"customer {customer_id!r} has no subscription "
                                                   f"{subscription_id!r}")
            raise precondition("customer_id", f"customer {customer_id!r} has no subscription")
        if len(rows) > 1:
            raise invalid("subscription_id", f"customer {customer_id!r} has several subscriptions: name one")
        return rows[0]

    async def split_draft(self, tenant: str, invoice_id: str, instants: Sequence[datetime],
                          covers: Sequence[ApplicationIn] = ()) -> Split:
        """A DRAFT recomputed now and cut at `instants` (nothing saved); a frozen invoice as stored.
        `covers`: what usage-unit lots reserved; the currency charges are net of their value."""
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            header = await self._header(conn, tenant, invoice_id, lock=False, with_context=True)
            if header["status"] != Status.DRAFT.value:
                view = await self._load(conn, tenant, invoice_id)
                return Split(view, view.draft_digest, list(view.charges), unit_charges(view.line_items, view.charges))
            cut = normalize_instants(instants, header["period_start"], header["period_end"])
            computed = await self._compute(conn, tenant, header, cut, _context(header))
            valued = computed.value(_unit_covers(list(enumerate(covers))), "unit_applications")
            view = _view(header, computed.items, computed.pieces, (), tuple(cut), computed.digest)
            left = left_to_pay(computed.pieces, valued)
            net = [dataclasses.replace(p, amount_minor=left[p.charge_id]) for p in computed.pieces
                   if left[p.charge_id] > 0]
            return Split(view, computed.digest, net, unit_charges(computed.items, computed.pieces))

    # ---- two-phase finalize ---------------------------------------------------------------------

    async def prepare_finalize(self, guard: Guard, invoice_id: str, instants: Sequence[datetime],
                               applications: Sequence[ApplicationIn], expected_digest: str,
                               credit_notes: Sequence[str] = ()) -> InvoiceView:
        """DRAFT -> PREPARED: recompute, cut at the instants, freeze, record the ledger's applications."""
        tenant = guard.tenant_id
        async with self._pool.acquire() as conn, conn.transaction():
            await guard.claim(conn)
            header = await self._lock(conn, tenant, invoice_id, with_context=True)
            transition(Verb.PREPARE_FINALIZE, Status(header["status"]))
            cut = normalize_instants(instants, header["period_start"], header["period_end"])
            computed = await self._compute(conn, tenant, header, cut, _context(header))
            if expected_digest and expected_digest != computed.digest:
                raise precondition("draft_digest", "the draft changed since it was split (new usage?); "
                                                   "split it again and reserve again")
            indexed = list(enumerate(applications))
            scale = currency_scale(header["currency"])
            unit_apps = computed.value(_unit_covers([(n, a) for n, a in indexed if a.unit and not a.converted]),
                                       "applications")
            left = left_to_pay(computed.pieces, unit_apps)
            apps = unit_apps + _check_applications([(n, a) for n, a in indexed if not a.unit], computed.pieces,
                                                   scale, left)
            apps += _converted([(n, a) for n, a in indexed if a.converted], computed.pieces, scale, left)
            await conn.execute(sql.DELETE_CHARGES_AND_LINE_ITEMS, tenant, invoice_id)
            await _insert_rows(conn, sql.INSERT_LINE_ITEMS, tenant, invoice_id, _line_item_rows(computed.items))
            await _insert_rows(conn, sql.INSERT_CHARGES, tenant, invoice_id, [
                (p.charge_id, p.line_item_id, p.kind.value, p.name, p.quantity, p.amount_minor, p.service_start,
                 p.service_end) for p in computed.pieces])
            await _insert_rows(conn, sql.INSERT_APPLICATIONS, tenant, invoice_id, [
                (n, a.charge_id, a.lot_id, a.lot_type, a.amount_minor, a.unit, a.units, a.rate, a.rate_version)
                for n, a in enumerate(apps)])
            await conn.execute(sql.MARK_PREPARED, tenant, invoice_id, sum(i.amount_minor for i in computed.items),
                               sum(a.amount_minor for a in apps), cut, computed.digest, guard.key,
                               list(credit_notes))
            view = await self._load(conn, tenant, invoice_id)
            await guard.record(conn, view)
            return view

    async def commit_finalize(self, guard: Guard, invoice_id: str, prepare_key: str) -> InvoiceView:
        """PREPARED -> FINALIZED with the tenant's next gapless number; no-op if already finalized.

        The frozen invoice is read first and the number taken last, so the tenant's counter row (all
        of the tenant's commits queue on it) is held only for that statement, the stored answer and
        the commit."""
        async with self._pool.acquire() as conn, conn.transaction():
            await guard.claim(conn)
            _, step = await self._check(conn, guard.tenant_id, invoice_id, Verb.COMMIT_FINALIZE, prepare_key)
            view = await self._load(conn, guard.tenant_id, invoice_id)
            if step.changes:
                row = await conn.fetchrow(sql.FINALIZE_NUMBERED, guard.tenant_id, invoice_id)
                view = dataclasses.replace(view, status=row["status"], number=row["number"],
                                           finalized_at=row["finalized_at"])
            await guard.record(conn, view)
            return view

    async def abort_finalize(self, guard: Guard, invoice_id: str, prepare_key: str) -> InvoiceView:
        """PREPARED -> DRAFT, credit applications and pieces dropped; no-op on a DRAFT (a null
        compensation), which also burns `prepare_key` so a prepare arriving later is refused."""
        async def apply(conn: asyncpg.Connection, header: asyncpg.Record) -> None:
            await conn.execute(sql.DELETE_APPLICATIONS, guard.tenant_id, invoice_id)
            await conn.execute(sql.DELETE_CHARGES, guard.tenant_id, invoice_id)
            await conn.execute(sql.MARK_ABORTED, guard.tenant_id, invoice_id)

        async def null_compensation(conn: asyncpg.Connection) -> None:
            if prepare_key:
                await burn_key(conn, guard.tenant_id, prepare_key, Verb.PREPARE_FINALIZE.value)

        return await self._step(guard, invoice_id, Verb.ABORT_FINALIZE, apply, prepare_key, null_compensation)

    # ---- two-phase void -------------------------------------------------------------------------

    async def prepare_void(self, guard: Guard, invoice_id: str, reason: str) -> InvoiceView:
        async def apply(conn: asyncpg.Connection, header: asyncpg.Record) -> None:
            await conn.execute(sql.MARK_VOID_PENDING, guard.tenant_id, invoice_id, reason)

        return await self._step(guard, invoice_id, Verb.PREPARE_VOID, apply)

    async def commit_void(self, guard: Guard, invoice_id: str) -> InvoiceView:
        async def apply(conn: asyncpg.Connection, header: asyncpg.Record) -> None:
            await conn.execute(sql.MARK_VOIDED, guard.tenant_id, invoice_id)

        return await self._step(guard, invoice_id, Verb.COMMIT_VOID, apply)

    async def abort_void(self, guard: Guard, invoice_id: str) -> InvoiceView:
        async def apply(conn: asyncpg.Connection, header: asyncpg.Record) -> None:
            await conn.execute(sql.MARK_VOID_ABORTED, guard.tenant_id, invoice_id)

        return await self._step(guard, invoice_id, Verb.ABORT_VOID, apply)

    # ---- abandon --------------------------------------------------------------------------------

    async def abandon(self, guard: Guard, invoice_id: str, reason: str) -> InvoiceView:
        """DRAFT -> ABANDONED: the period will never be billed and counts as settled (states.py)."""
        async def apply(conn: asyncpg.Connection, header: asyncpg.Record) -> None:
            await conn.execute(sql.MARK_ABANDONED, guard.tenant_id, invoice_id, reason)

        return await self._step(guard, invoice_id, Verb.ABANDON, apply)

    async def _step(self, guard: Guard, invoice_id: str, verb: Verb, apply: _Apply, prepare_key: str = "",
                    on_noop: _NoOp | None = None) -> InvoiceView:
        """One state transition in one transaction: lock, check the state machine, apply, answer."""
        async with self._pool.acquire() as conn, conn.transaction():
            await guard.claim(conn)
            header, step = await self._check(conn, guard.tenant_id, invoice_id, verb, prepare_key)
            if step.changes:
                await apply(conn, header)
            elif on_noop is not None:
                await on_noop(conn)
            view = await self._load(conn, guard.tenant_id, invoice_id)
            await guard.record(conn, view)
            return view

    async def _check(self, conn: asyncpg.Connection, tenant: str, invoice_id: str, verb: Verb,
                     prepare_key: str) -> tuple[asyncpg.Record, Transition]:
        """Locks the invoice and checks `verb` against the state machine and the prepare key."""
        header = await self._lock(conn, tenant, invoice_id)
        status = Status(header["status"])
        step = transition(verb, status)
        if prepare_key and status not in (Status.DRAFT, Status.ABANDONED) and header["prepare_key"] != prepare_key:
            raise precondition("prepare_key", f"the invoice was prepared by another key "
                                              f"({header['prepare_key']!r})")
        return header, step

    # ---- reads --------------------------------------------------------------------------------

    async def get(self, tenant: str, invoice_id: str) -> InvoiceView:
        async with self._pool.acquire() as conn:  # one statement: consistent without a transaction
            return await self._load(conn, tenant, invoice_id)

    async def list_invoices(self, tenant: str, f: ListFilter) -> list[InvoiceView]:
        after_at, after_id = f.after if f.after else (None, "")
        rows = await self._pool.fetch(sql.LIST_INVOICES, tenant, f.customer_id, list(f.statuses),
                                      f.prepared_before, f.period_start, after_at, after_id, f.limit)
        return [_view(r, (), (), (), tuple(r["split_at"]), r["draft_digest"]) for r in rows]

    async def count_invoices(self, tenant: str, f: ListFilter) -> int:
        """How many invoices match the customer and statuses of `f` (an export's progress total)."""
        return int(await self._pool.fetchval(sql.COUNT_INVOICES, tenant, f.customer_id, list(f.statuses)))

    async def invoice_pages(self, tenant: str, f: ListFilter, *, full: bool) -> AsyncIterator[list[InvoiceView]]:
        """Every invoice matching `f`, `f.limit` at a time in keyset order (created_at, invoice_id): one page
        in memory at once. `full`: each with its line items and credit applications."""
        after = f.after
        while True:
            views = await self.list_invoices(tenant, dataclasses.replace(f, after=after))
            if not views:
                return
            yield [await self.get(tenant, v.invoice_id) for v in views] if full else views
            if len(views) < f.limit:
                return
            after = (views[-1].created_at, views[-1].invoice_id)

    # ---- internals ------------------------------------------------------------------------------

    async def _header(self, conn: asyncpg.Connection, tenant: str, invoice_id: str, *,
                      lock: bool, with_context: bool = False) -> asyncpg.Record:
        """The invoice header (with `with_context`, also its billing context: see `_context`)."""
        if with_context:
            query = sql.SELECT_INVOICE_WITH_CONTEXT_FOR_UPDATE if lock else sql.SELECT_INVOICE_WITH_CONTEXT
        else:
            query = sql.SELECT_INVOICE_FOR_UPDATE if lock else sql.SELECT_INVOICE
        row = await conn.fetchrow(query, tenant, invoice_id)
        if row is None:
            raise not_found("invoice_id", f"no invoice {invoice_id!r}")
        return row

    async def _lock(self, conn: asyncpg.Connection, tenant: str, invoice_id: str, *,
                    with_context: bool = False) -> asyncpg.Record:
        """Locks the invoice's customer, then the invoice (the one lock order of this service)."""
        if await conn.fetchval(sql.LOCK_INVOICE_CUSTOMER, tenant, invoice_id) is None:
            raise not_found("invoice_id", f"no invoice {invoice_id!r}")
        return await self._header(conn, tenant, invoice_id, lock=True, with_context=with_context)

    async def _load(self, conn: asyncpg.Connection, tenant: str, invoice_id: str) -> InvoiceView:
        """The invoice with its line items, charges and applications: one statement, one snapshot."""
        row = await conn.fetchrow(sql.SELECT_INVOICE_FULL, tenant, invoice_id)
        if row is None:
            raise not_found("invoice_id", f"no invoice {invoice_id!r}")
        items = [LineItem(r[0], ChargeKind(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9])
                 for r in row["items"]]
        pieces = [Piece(r[0], r[1], ChargeKind(r[2]), r[3], r[4], r[5], r[6], r[7]) for r in row["pieces"]]
        apps = [Application(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8]) for r in row["apps"]]
        return _view(row, items, pieces, apps, tuple(row["split_at"]), row["draft_digest"])

    async def _compute(self, conn: asyncpg.Connection, tenant: str, header: asyncpg.Record,
                       instants: Sequence[datetime], ctx: Mapping[str, Any] | None = None) -> Computed:
        """Prices the period from the events stored now (aggregated by Postgres) and cuts it at the
        lot `instants`; a subscription change inside the period cuts it into segments too (one per
        phase, domain/lifecycle.py). `ctx` is the billing context if the caller read it."""
        if ctx is None:
            ctx = await self._billing_context(conn, tenant, header["customer_id"], header["subscription_id"])
        start, end = header["period_start"], header["period_end"]
        schedule = Schedule(ctx["anchor"], INTERVAL_MONTHS[ctx["billing_interval"]], ctx["trial_end"],
                            ctx["calendar_aligned"], ctx["ends_at"])
        period = schedule.period_starting_at(start) or BilledPeriod(0, start, end, start, end)
        period = dataclasses.replace(period, end=end)
        phases: list[Phase] = []
        terms: list[PlanTerms] = []
        for r in await conn.fetch(sql.SELECT_PHASES, tenant, header["subscription_id"], start, end):
            q = json.loads(r["quantities"])
            phase = Phase(max(r["effective_at"], start), r["plan_id"], r["plan_version"],
                          {**q["add_ons"], **q["licenses"]}, overrides_from_json(json.loads(r["overrides"])))
            components = apply_overrides(Plan.components_from_json(json.loads(r["terms"])), phase.overrides)
            phases.append(phase)
            terms.append(PlanTerms(r["plan_id"], ctx["currency"], currency_scale(ctx["currency"]), components))
        parts = segments(phases, start, end)
        boundaries = [p.start for p in parts[1:]]
        edges = sorted(set(instants) | set(boundaries))
        codes = sorted({c.code for t in terms for c in t.components if c.kind is ChargeKind.USAGE})
        raw, peaks = await self._usage(conn, tenant, header, codes, edges)
        usage = usage_by_segment(raw, peaks, edges, parts)
        by_phase = {ph.effective_at: t for ph, t in zip(phases, terms, strict=True)}
        seg_terms = [SegmentTerms(part, by_phase[part.phase.effective_at], u)
                     for part, u in zip(parts, usage, strict=True)]
        items, pieces = segmented_line_items(seg_terms, period, instants)
        meters = await self._catalog.meters(conn, tenant, codes)
        items = [dataclasses.replace(i, unit=meters[i.code].unit) if i.kind is ChargeKind.USAGE else i for i in items]
        prices = _usage_prices(seg_terms, items)
        return Computed(items, pieces, billing.digest(items, pieces), prices, terms[0].scale)

    async def _usage(self, conn: asyncpg.Connection, tenant: str, header: asyncpg.Record, codes: list[str],
                     edges: list[datetime]) -> tuple[dict[str, dict[int, Decimal]], frozenset[str]]:
        """Per meter, its quantity per piece (the number of `edges` at or before the event), and the MAX meters."""
        meters = await self._catalog.meters(conn, tenant, codes)
        unique = [c for c in codes if meters[c].aggregation is Aggregation.UNIQUE_COUNT]
        plain = [c for c in codes if c not in unique]
        args = (tenant, header["customer_id"], header["period_start"], header["period_end"], edges)
        pieces: dict[str, dict[int, Decimal]] = {c: {} for c in codes}
        if plain:
            for r in await conn.fetch(sql.AGGREGATE_USAGE, *args, plain):
                agg = meters[r["meter_code"]].aggregation
                value = {Aggregation.SUM: r["total"], Aggregation.COUNT: Decimal(r["events"]),
                         Aggregation.MAX: r["peak"]}[agg]
                pieces[r["meter_code"]][r["piece"]] = value
        if unique:
            for r in await conn.fetch(sql.AGGREGATE_UNIQUE, *args, unique):
                pieces[r["meter_code"]][r["piece"]] = Decimal(r["total"])
        peaks = frozenset(c for c in codes if meters[c].aggregation is Aggregation.MAX)
        return pieces, peaks

    async def _replace_line_items(self, conn: asyncpg.Connection, tenant: str, invoice_id: str,
                                  items: Sequence[LineItem]) -> None:
        await conn.execute(sql.DELETE_LINE_ITEMS, tenant, invoice_id)
        await _insert_rows(conn, sql.INSERT_LINE_ITEMS, tenant, invoice_id, _line_item_rows(items))


def _usage_prices(parts: Sequence[SegmentTerms], items: Sequence[LineItem]) -> dict[str, Price]:
    """Each usage line's price (by line item id, and by meter for the last segment that prices it)."""
    prices: dict[str, Price] = {}
    for part in parts:
        for c in part.terms.components:
            if c.kind is ChargeKind.USAGE and c.price is not None:
                prices[c.code] = c.price
                for i in items:
                    if i.kind is ChargeKind.USAGE and i.code == c.code and i.service_start == part.segment.start:
                        prices[i.line_item_id] = c.price
    return prices


def _context(header: asyncpg.Record) -> dict[str, Any]:
    """The billing context read along with a header (its "ctx_" columns, without the prefix)."""
    return {key[4:]: value for key, value in header.items() if key.startswith("ctx_")}


def _line_item_rows(items: Sequence[LineItem]) -> list[tuple[Any, ...]]:
    return [(i.line_item_id, n, i.kind.value, i.code, i.description, i.quantity, i.unit_price, i.amount_minor,
             i.service_start, i.service_end, i.unit) for n, i in enumerate(items)]


async def _insert_rows(conn: asyncpg.Connection, query: str, tenant: str, invoice_id: str,
                       rows: Sequence[tuple[Any, ...]]) -> None:
    """One INSERT ... SELECT FROM unnest(...) for all `rows` (none: no statement at all)."""
    if rows:
        await conn.execute(query, tenant, invoice_id, *(list(column) for column in zip(*rows, strict=True)))


def _unit_covers(applications: Sequence[tuple[int, ApplicationIn]]) -> list[UnitCover]:
    return [UnitCover(a.charge_id, a.lot_id, a.lot_type, a.unit, a.units, n) for n, a in applications]


def _piece_of(by_id: dict[str, Piece], i: int, a: ApplicationIn) -> Piece:
    """The charge piece `applications[i]` names, or INVALID_ARGUMENT naming it."""
    piece = by_id.get(a.charge_id)
    if piece is None:
        raise invalid(f"applications[{i}].charge_id", f"no charge {a.charge_id!r} on this invoice "
                                                       "(at these split instants)")
    return piece


def _converted(applications: Sequence[tuple[int, ApplicationIn]], pieces: Sequence[Piece], scale: int,
               left: dict[str, int]) -> list[Application]:
    """Credit-unit lots at a published rate, after the other applications, in order: each pays
    min(what is left of its charge, floor(units x rate)) (service_runtime.rates)."""
    by_id = {p.charge_id: p for p in pieces}
    out: list[Application] = []
    for i, a in applications:
        piece = _piece_of(by_id, i, a)
        assert a.rate is not None
        minor = applied_minor(left[a.charge_id], a.units, a.rate, scale)
        left[a.charge_id] -= minor
        out.append(Application(a.charge_id, piece.line_item_id, a.lot_id, a.lot_type, minor, a.unit, a.units,
                               a.rate, a.rate_version))
    return out


def _check_applications(applications: Sequence[tuple[int, ApplicationIn]], pieces: Sequence[Piece],
                        scale: int, left: dict[str, int]) -> list[Application]:
    """Each application names a charge of this invoice; together they never exceed what is `left`
    of its amount after the usage-unit lots' share."""
    by_id = {p.charge_id: p for p in pieces}
    out: list[Application] = []
    for i, a in applications:
        piece = _piece_of(by_id, i, a)
        minor = parse_minor(a.amount, scale, f"applications[{i}].amount")
        if minor > left[a.charge_id]:
            raise invalid(f"applications[{i}].amount", f"credits applied to {a.charge_id} would exceed its "
                                                       "amount")
        left[a.charge_id] -= minor
        out.append(Application(a.charge_id, piece.line_item_id, a.lot_id, a.lot_type, minor))
    return out


def _view(header: asyncpg.Record, items: Sequence[LineItem], pieces: Sequence[Piece],
          apps: Sequence[Application], split_at: tuple[datetime, ...], digest: str) -> InvoiceView:
    subtotal = sum(i.amount_minor for i in items) if items else header["subtotal_minor"]
    credits = sum(a.amount_minor for a in apps) if apps else header["credits_minor"]
    return InvoiceView(
        header["invoice_id"], header["customer_id"], header["ledger_account_id"], header["subscription_id"],
        header["plan_id"], header["currency"], currency_scale(header["currency"]), header["status"],
        header["number"] or "", header["period_start"], header["period_end"], tuple(items), tuple(pieces),
        tuple(apps), split_at, digest, header["prepare_key"], subtotal, credits, header["created_at"],
        header["computed_at"], header["prepared_at"], header["finalized_at"], header["void_prepared_at"],
        header["voided_at"], tuple(header["credit_notes"]), header["abandoned_at"], header["abandon_reason"])

