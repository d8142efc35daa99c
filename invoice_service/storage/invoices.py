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
from invoice_service.domain.dimensions import usage_key, variants
from invoice_service.domain.discounts import apply_coupons
from invoice_service.domain.invoices import (
    Aggregation,
    Application,
    ChargeKind,
    Component,
    InvoiceView,
    LineItem,
    MeterUsage,
    Piece,
    PlanTerms,
    TaxTerms,
)
from invoice_service.domain.lifecycle import (
    BilledPeriod,
    Phase,
    Schedule,
    Segment,
    SegmentTerms,
    apply_overrides,
    segment_line_items,
    segment_pieces,
    segments,
    usage_by_segment,
)
from invoice_service.domain.money import currency_scale
from invoice_service.domain.periods import INTERVAL_MONTHS, period_containing
from invoice_service.domain.pricing import Price
from invoice_service.domain.splitting import normalize_instants
from invoice_service.domain.states import Status, Transition, Verb, transition
from invoice_service.domain.taxes import apply_tax
from invoice_service.domain.unit_credits import UnitCover, left_to_pay, unit_charges, value_covers
from invoice_service.storage import invoice_sql as sql
from invoice_service.storage.catalog import CatalogOperations
from invoice_service.storage.pricing_rules import customer_terms
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
    prices: dict[str, Price]  # usage line key (meter and variant) -> its price: to value units covered
    scale: int
    tax: TaxTerms | None = None  # the customer's tax rule now (None: not taxed)

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
                items = apply_tax(computed.items, {}, computed.tax, computed.scale)
                await self._replace_line_items(conn, tenant, header["invoice_id"], items)
                await conn.execute(sql.UPDATE_DRAFT_TOTALS, tenant, header["invoice_id"],
                                   *_totals(items, computed.tax))
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
            items = apply_tax(computed.items, _credits(valued), computed.tax, computed.scale)
            view = dataclasses.replace(_view(header, items, computed.pieces, (), tuple(cut), computed.digest),
                                       tax=computed.tax)
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
            items = apply_tax(computed.items, _credits(apps), computed.tax, scale)
            await conn.execute(sql.DELETE_CHARGES_AND_LINE_ITEMS, tenant, invoice_id)
            await _insert_rows(conn, sql.INSERT_LINE_ITEMS, tenant, invoice_id, _line_item_rows(items))
            await _insert_rows(conn, sql.INSERT_CHARGES, tenant, invoice_id, [
                (p.charge_id, p.line_item_id, p.kind.value, p.name, p.quantity, p.amount_minor, p.service_start,
                 p.service_end) for p in computed.pieces])
            await _insert_rows(conn, sql.INSERT_APPLICATIONS, tenant, invoice_id, [
                (n, a.charge_id, a.lot_id, a.lot_type, a.amount_minor, a.unit, a.units, a.rate, a.rate_version)
                for n, a in enumerate(apps)])
            subtotal, *taxed = _totals(items, computed.tax)
            await conn.execute(sql.MARK_PREPARED, tenant, invoice_id, subtotal, sum(a.amount_minor for a in apps),
                               cut, computed.digest, guard.key, list(credit_notes), *taxed)
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
            await self._retax_without_credits(conn, guard.tenant_id, invoice_id)

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
        foreign = (bool(prepare_key) and status not in (Status.DRAFT, Status.ABANDONED)
                   and header["prepare_key"] != prepare_key)
        if foreign and verb is Verb.ABORT_FINALIZE:
            # A saga whose prepare never froze the invoice (another run of it prepared, finalized or voided
            # it meanwhile) compensates: nothing of it is frozen, so its abort is the null compensation
            # (and burns its key), not a refusal its must-succeed compensation would retry for ever.
            return header, Transition(status, False)
        step = transition(verb, status)
        if foreign:
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
        items = [LineItem(r[0], ChargeKind(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11],
                          tuple(c for c in r[12].split(",") if c), r[13])
                 for r in row["items"]]
        pieces = [Piece(r[0], r[1], ChargeKind(r[2]), r[3], r[4], r[5], r[6], r[7]) for r in row["pieces"]]
        apps = [Application(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8]) for r in row["apps"]]
        return _view(row, items, pieces, apps, tuple(row["split_at"]), row["draft_digest"])

    async def _compute(self, conn: asyncpg.Connection, tenant: str, header: asyncpg.Record,
                       instants: Sequence[datetime], ctx: Mapping[str, Any] | None = None) -> Computed:
        """Prices the period from the events stored now (aggregated by Postgres) and cuts it at the
        lot `instants`; a subscription change inside the period cuts it into segments too (one per
        phase, domain/lifecycle.py), each pricing its own events with its plan's dimensional and
        time-of-use variants. Then the commitment true-up over the whole period, then coupons (the
        order of invoice_service/README.md). `ctx` is the billing context if the caller read it."""
        if ctx is None:
            ctx = await self._billing_context(conn, tenant, header["customer_id"], header["subscription_id"])
        start, end = header["period_start"], header["period_end"]
        schedule = Schedule(ctx["anchor"], INTERVAL_MONTHS[ctx["billing_interval"]], ctx["trial_end"],
                            ctx["calendar_aligned"], ctx["ends_at"])
        period = schedule.period_starting_at(start) or BilledPeriod(0, start, end, start, end)
        period = dataclasses.replace(period, end=end)
        phases, terms = await self._phases(conn, tenant, header, ctx["currency"])
        parts = segments(phases, start, end)
        edges = sorted(set(instants) | {p.start for p in parts[1:]})
        by_phase = {ph.effective_at: t for ph, t in zip(phases, terms, strict=True)}
        part_terms = [by_phase[part.phase.effective_at] for part in parts]
        components = [c for t in part_terms for c in t.components if c.kind is ChargeKind.USAGE]
        raw, peaks = await self._usage(conn, tenant, header, components, edges)
        seg_terms = [SegmentTerms(part, t, _segment_usage(raw, peaks, edges, part, t))
                     for part, t in zip(parts, part_terms, strict=True)]
        meters = await self._catalog.meters(conn, tenant, sorted({c.code for c in components}))
        items = [dataclasses.replace(i, unit=meters[i.code].unit) if i.kind is ChargeKind.USAGE else i
                 for i in segment_line_items(seg_terms, period)]
        redemptions, rule = await customer_terms(conn, tenant, header["customer_id"])
        coupons = [r.coupon for r in redemptions if r.covers(_period_index(schedule, r.redeemed_at), period.index)]
        scale = currency_scale(ctx["currency"])
        items = apply_coupons(items, coupons, scale, ctx["currency"])
        pieces = segment_pieces(items, seg_terms, instants)
        return Computed(items, pieces, billing.digest(items, pieces), _usage_prices(seg_terms, items), scale,
                        rule.terms if rule else None)

    async def _phases(self, conn: asyncpg.Connection, tenant: str, header: asyncpg.Record,
                      currency: str) -> tuple[list[Phase], list[PlanTerms]]:
        """The phases in force during the invoice's period, each with its plan version's terms (overrides applied)."""
        phases: list[Phase] = []
        terms: list[PlanTerms] = []
        start, end = header["period_start"], header["period_end"]
        for r in await conn.fetch(sql.SELECT_PHASES, tenant, header["subscription_id"], start, end):
            q = json.loads(r["quantities"])
            phase = Phase(max(r["effective_at"], start), r["plan_id"], r["plan_version"],
                          {**q["add_ons"], **q["licenses"]}, overrides_from_json(json.loads(r["overrides"])))
            components = apply_overrides(Plan.components_from_json(json.loads(r["terms"])), phase.overrides)
            phases.append(phase)
            terms.append(PlanTerms(r["plan_id"], currency, currency_scale(currency), components))
        return phases, terms

    async def _usage(self, conn: asyncpg.Connection, tenant: str, header: asyncpg.Record,
                     components: Sequence[Component], edges: list[datetime]) -> tuple[RawUsage, frozenset[str]]:
        """Per (aggregation spec, usage key), the quantity per piece (the number of `edges` at or
        before the event), and the MAX meters. A plain usage charge's spec is "" and its key the
        meter code; a dimensional one's spec is its filters/group-by/time of use (`_spec`), so two
        plan versions splitting one meter differently each get their own totals."""
        dimensional = {_spec(c): c for c in components if c.dimensions is not None}
        codes = sorted({c.code for c in components if c.dimensions is None})
        meters = await self._catalog.meters(conn, tenant, sorted({c.code for c in components}))
        unique = [c for c in codes if meters[c].aggregation is Aggregation.UNIQUE_COUNT]
        plain = [c for c in codes if c not in unique]
        args = (tenant, header["customer_id"], header["period_start"], header["period_end"], edges)
        pieces: RawUsage = {}
        if plain:
            for r in await conn.fetch(sql.AGGREGATE_USAGE, *args, plain):
                agg = meters[r["meter_code"]].aggregation
                value = {Aggregation.SUM: r["total"], Aggregation.COUNT: Decimal(r["events"]),
                         Aggregation.MAX: r["peak"]}[agg]
                pieces.setdefault(("", r["meter_code"]), {})[r["piece"]] = value
        if unique:
            for r in await conn.fetch(sql.AGGREGATE_UNIQUE, *args, unique):
                pieces.setdefault(("", r["meter_code"]), {})[r["piece"]] = Decimal(r["total"])
        for spec, c in dimensional.items():
            assert c.dimensions is not None
            dims, tou = c.dimensions, c.dimensions.time_of_use
            rows = await conn.fetch(sql.AGGREGATE_VARIANTS, *args, c.code, json.dumps(dims.filters_json()),
                                    dims.group_by, tou.time_zone if tou else "", list(tou.peak_hours) if tou else [],
                                    list(tou.peak_days) if tou else [])
            agg = meters[c.code].aggregation
            for r in rows:
                value = {Aggregation.SUM: r["total"], Aggregation.COUNT: Decimal(r["events"]),
                         Aggregation.MAX: r["peak"]}[agg]
                pieces.setdefault((spec, usage_key(c.code, r["variant"])), {})[r["piece"]] = value
        return pieces, frozenset(c for c in meters if meters[c].aggregation is Aggregation.MAX)

    async def _retax_without_credits(self, conn: asyncpg.Connection, tenant: str, invoice_id: str) -> None:
        """After an abort the credits are gone: the lines' tax is again on their whole net."""
        view = await self._load(conn, tenant, invoice_id)
        items = apply_tax(view.line_items, {}, view.tax, view.scale)
        await self._replace_line_items(conn, tenant, invoice_id, items)
        await conn.execute(sql.UPDATE_TAX_TOTAL, tenant, invoice_id, sum(i.tax_minor for i in items))

    async def _replace_line_items(self, conn: asyncpg.Connection, tenant: str, invoice_id: str,
                                  items: Sequence[LineItem]) -> None:
        await conn.execute(sql.DELETE_LINE_ITEMS, tenant, invoice_id)
        await _insert_rows(conn, sql.INSERT_LINE_ITEMS, tenant, invoice_id, _line_item_rows(items))


RawUsage = dict[tuple[str, str], dict[int, Decimal]]


def _spec(c: Component) -> str:
    """What splits a usage charge's events (filters, group-by, time of use); "" = nothing (plain)."""
    if c.dimensions is None:
        return ""
    dims, tou = c.dimensions, c.dimensions.time_of_use
    return json.dumps([c.code, dims.filters_json(), dims.group_by,
                       None if tou is None else [tou.time_zone, list(tou.peak_hours), list(tou.peak_days)]])


def _segment_usage(raw: RawUsage, peaks: frozenset[str], edges: Sequence[datetime], part: Segment,
                   terms: PlanTerms) -> dict[str, MeterUsage]:
    """A segment's usage keyed by usage_key, aggregated as its own plan's usage charges split the events."""
    wanted = {(_spec(c), c.code) for c in terms.components if c.kind is ChargeKind.USAGE}
    mine = {key: by_piece for (spec, key), by_piece in raw.items() if (spec, key.split("[", 1)[0]) in wanted}
    peak_keys = frozenset(k for k in mine if k.split("[", 1)[0] in peaks)
    return usage_by_segment(mine, peak_keys, edges, [part])[0]


def _period_index(schedule: Schedule, instant: datetime) -> int:
    """The number of the billing period holding `instant` (0 before the first): a coupon's first period."""
    return max(period_containing(schedule.base, schedule.months, instant).index, 0)


def _usage_prices(parts: Sequence[SegmentTerms], items: Sequence[LineItem]) -> dict[str, Price]:
    """Each usage line's price (the variant's own price for dimensional and time-of-use lines), by
    line item id and by usage key (meter and variant; the last segment that prices it)."""
    prices: dict[str, Price] = {}
    for part in parts:
        components = {c.code: c for c in part.terms.components if c.kind is ChargeKind.USAGE}
        for i in items:
            c = components.get(i.code)
            if i.kind is not ChargeKind.USAGE or c is None or c.price is None \
                    or i.service_start != part.segment.start:
                continue
            price = c.price
            if c.dimensions is not None and i.variant:
                price = dict(variants(c.dimensions, c.price, [i.variant])).get(i.variant, c.price)
            prices[i.line_item_id] = price
            prices[i.usage_key] = price
    return prices


def _credits(apps: Sequence[Application]) -> dict[str, int]:
    out: dict[str, int] = {}
    for a in apps:
        out[a.line_item_id] = out.get(a.line_item_id, 0) + a.amount_minor
    return out


def _totals(items: Sequence[LineItem], tax: TaxTerms | None) -> tuple[Any, ...]:
    """subtotal, discount, tax and the rule's columns (region, name, rate, inclusive) of an invoice."""
    return (sum(i.amount_minor for i in items), sum(i.discount_minor for i in items),
            sum(i.tax_minor for i in items), tax.region if tax else "", tax.name if tax else "",
            tax.rate_percent if tax else None, tax.inclusive if tax else False)


def _context(header: asyncpg.Record) -> dict[str, Any]:
    """The billing context read along with a header (its "ctx_" columns, without the prefix)."""
    return {key[4:]: value for key, value in header.items() if key.startswith("ctx_")}


def _line_item_rows(items: Sequence[LineItem]) -> list[tuple[Any, ...]]:
    return [(i.line_item_id, n, i.kind.value, i.code, i.description, i.quantity, i.unit_price, i.amount_minor,
             i.service_start, i.service_end, i.unit, i.variant, i.discount_minor, ",".join(i.discount_codes),
             i.tax_minor) for n, i in enumerate(items)]


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
    discount = sum(i.discount_minor for i in items) if items else header["discount_minor"]
    tax = sum(i.tax_minor for i in items) if items else header["tax_minor"]
    terms = (TaxTerms(header["tax_region"], header["tax_name"], header["tax_rate_percent"], header["tax_inclusive"])
             if header["tax_region"] else None)
    return InvoiceView(
        header["invoice_id"], header["customer_id"], header["ledger_account_id"], header["subscription_id"],
        header["plan_id"], header["currency"], currency_scale(header["currency"]), header["status"],
        header["number"] or "", header["period_start"], header["period_end"], tuple(items), tuple(pieces),
        tuple(apps), split_at, digest, header["prepare_key"], subtotal, credits, header["created_at"],
        header["computed_at"], header["prepared_at"], header["finalized_at"], header["void_prepared_at"],
        header["voided_at"], tuple(header["credit_notes"]), header["abandoned_at"], header["abandon_reason"],
        discount, tax, terms)

