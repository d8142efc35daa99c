"""The invoices against the saga holds: each FINALIZED / VOIDED invoice has exactly the committed
credits its applications show, nothing is left in doubt, and no saga hold is left without its invoice.

A finalization run owns one hold in the invoice currency (`naming.hold_key`, possibly empty: a $0
invoice) and one per usage unit its lots paid usage in (`naming.unit_hold_key`). FINALIZED ⇔ the
preparing run's currency hold is committed with postings equal to the currency applications, and
each usage-unit hold of that run is committed with postings equal to the units its applications
covered; credits applied = currency postings + the value of the covered units."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

import asyncpg

from coordinator import naming
from invoice_service.domain.states import Status
from ledger_service.domain.model import HoldStatus
from reconciler.ledger_checks import Hold
from reconciler.report import Check, TenantFindings
from reconciler.scales import exact, invoice_scale

_SELECT_INVOICES = ("SELECT invoice_id, status, prepare_key, credits_minor, currency, ledger_account_id "
                    "FROM invoices WHERE tenant_id = $1")
_SELECT_APPLICATIONS = ("SELECT invoice_id, charge_id, lot_id, amount_minor, unit, units, rate_version "
                        "FROM credit_applications WHERE tenant_id = $1")
# The check that judges an invoice's committed credits, by the invoice's status.
_CHECK_OF = {Status.FINALIZED: Check.INVOICE_FINALIZED, Status.VOIDED: Check.INVOICE_VOIDED,
             Status.VOID_PENDING: Check.INVOICE_VOID_PENDING}



@dataclass
class Applications:
    """An invoice's credit applications: in its currency, and in usage units."""

    money: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))  # (charge, lot) -> minor
    # hold suffix (the usage unit, or `<unit>@<currency>` converted at a rate) -> (charge, lot) -> units
    units: dict[str, dict[tuple[str, str], Decimal]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(Decimal)))
    unit_value: int = 0  # what those units paid, minor units of the currency

    def __bool__(self) -> bool:
        return bool(self.money) or bool(self.units)

    def __len__(self) -> int:
        return len(self.money) + sum(len(v) for v in self.units.values())


@dataclass(frozen=True)
class Invoice:
    invoice_id: str
    status: Status
    prepare_key: str
    credits_minor: int
    currency: str


@dataclass(frozen=True)
class Owner:
    """The saga run that prepared a committed invoice (Temporal must hold its decision)."""

    invoice_id: str
    workflow_id: str  # "": a billing cycle's run, which the prepare key names by its run id only
    run_id: str


async def load_invoices(conn: asyncpg.Connection, tenant: str) -> tuple[dict[str, Invoice], dict[str, Applications]]:
    invoices = {r["invoice_id"]: Invoice(r["invoice_id"], Status(r["status"]), r["prepare_key"], r["credits_minor"],
                                         r["currency"])
                for r in await conn.fetch(_SELECT_INVOICES, tenant)}
    applications: dict[str, Applications] = defaultdict(Applications)
    for r in await conn.fetch(_SELECT_APPLICATIONS, tenant):
        apps = applications[r["invoice_id"]]
        if r["unit"]:
            apps.unit_value += r["amount_minor"]
            inv = invoices.get(r["invoice_id"])
            suffix = (naming.converted_hold_suffix(r["unit"], inv.currency if inv else "?") if r["rate_version"]
                      else r["unit"])
            if r["units"]:
                apps.units[suffix][(r["charge_id"], r["lot_id"])] += r["units"]
        else:
            apps.money[(r["charge_id"], r["lot_id"])] += r["amount_minor"]
    return invoices, applications


def check_saga_holds(found: TenantFindings, holds: dict[str, Hold],
                     invoices: dict[str, Invoice]) -> dict[str, list[Hold]]:
    """No hold left PENDING; committed or reversed saga credits belong to a FINALIZED / VOIDED invoice.
    Returns the saga holds per invoice."""
    by_invoice: dict[str, list[Hold]] = defaultdict(list)
    for h in holds.values():
        parsed = naming.parse_hold_key(h.hold_key)
        if parsed is None:
            if h.status == HoldStatus.PENDING:
                found.bad(Check.IN_DOUBT, "hold still PENDING after the system went quiet", hold_key=h.hold_key,
                          account_id=h.account_id)
            continue
        invoice_id = parsed[0]
        by_invoice[invoice_id].append(h)
        if h.status == HoldStatus.PENDING:
            found.bad(Check.IN_DOUBT, "saga hold still PENDING after recovery", hold_key=h.hold_key,
                      invoice_id=invoice_id, account_id=h.account_id)
        inv = invoices.get(invoice_id)
        status = inv.status.value if inv is not None else "(missing)"
        if h.status == HoldStatus.COMMITTED and status not in (Status.FINALIZED.value, Status.VOIDED.value):
            found.bad(Check.ORPHAN_HOLD, f"credits committed ({h.posted}) but the invoice is {status}",
                      hold_key=h.hold_key, invoice_id=invoice_id)
        if h.reversed and status != Status.VOIDED.value:
            found.bad(Check.ORPHAN_HOLD, f"credits reversed but the invoice is {status}", hold_key=h.hold_key,
                      invoice_id=invoice_id)
    return by_invoice


def check_invoices(found: TenantFindings, holds: dict[str, Hold], by_invoice: dict[str, list[Hold]],
                   invoices: dict[str, Invoice], applications: dict[str, Applications],
                   scales: dict[str, int]) -> list[Owner]:
    """Every invoice against its holds; returns the owning runs of the committed ones."""
    owners: list[Owner] = []
    for invoice_id, inv in sorted(invoices.items()):
        committed = [h for h in by_invoice.get(invoice_id, []) if h.status == HoldStatus.COMMITTED]
        apps = applications.get(invoice_id, Applications())
        runs = {naming.parse_hold_key(h.hold_key) for h in committed}
        if len(runs) > 1:
            found.bad(Check.SPENT_TWICE, f"committed holds of {len(runs)} finalization runs for one invoice",
                      invoice_id=invoice_id, hold_keys=",".join(h.hold_key for h in committed))
        if inv.status in (Status.PREPARED, Status.VOID_PENDING):
            found.bad(Check.IN_DOUBT, f"invoice still {inv.status.value} after recovery", invoice_id=invoice_id,
                      prepare_key=inv.prepare_key)
        if inv.status in (Status.DRAFT, Status.ABANDONED):
            _check_draft(found, inv, committed, apps)
        elif inv.status in _CHECK_OF:
            owner = _check_committed(found, inv, holds, apps, scales)
            if owner is not None:
                owners.append(owner)
    return owners


def _check_draft(found: TenantFindings, inv: Invoice, committed: list[Hold], apps: Applications) -> None:
    if committed:
        found.bad(Check.INVOICE_DRAFT, f"{inv.status.value} invoice has committed credits", invoice_id=inv.invoice_id,
                  hold_key=committed[0].hold_key)
    if apps:
        found.bad(Check.INVOICE_DRAFT, f"{inv.status.value} invoice shows {len(apps)} credit applications",
                  invoice_id=inv.invoice_id)


def _check_committed(found: TenantFindings, inv: Invoice, holds: dict[str, Hold], apps: Applications,
                     scales: dict[str, int]) -> Owner | None:
    """A FINALIZED / VOIDED / VOID_PENDING invoice: the preparing run's hold is committed with exactly
    the invoice's credit applications, reversed iff the invoice is VOIDED."""
    check = _CHECK_OF[inv.status]
    ref = naming.parse_prepare_key(inv.prepare_key)
    owner = Owner(inv.invoice_id, ref[0], ref[1]) if ref else None
    run_id = ref[1] if ref else ""
    key = naming.hold_key(inv.invoice_id, run_id) if run_id else "?"
    hold = holds.get(key) if run_id else None
    if hold is None or hold.status != HoldStatus.COMMITTED:
        found.bad(check, f"invoice is {inv.status.value} but the preparing run's hold is "
                  f"{hold.status if hold else 'missing'}", invoice_id=inv.invoice_id, hold_key=key)
        return owner
    unit_holds = {naming.hold_suffix(k): h for k, h in holds.items()
                  if k.startswith(naming.unit_holds_prefix(inv.invoice_id, run_id))}
    unit_posted = _check_unit_holds(found, check, inv, unit_holds, apps, scales)
    _check_amounts(found, check, inv, hold, apps, scales, unit_posted)
    for h in (hold, *unit_holds.values()):
        if inv.status == Status.FINALIZED and h.reversed:
            found.bad(Check.INVOICE_FINALIZED, "FINALIZED invoice's debits were reversed", invoice_id=inv.invoice_id,
                      hold_key=h.hold_key)
        if inv.status == Status.VOIDED and h.posted and not h.reversed:
            found.bad(Check.INVOICE_VOIDED, "VOIDED invoice's debits were never reversed onto their lots",
                      invoice_id=inv.invoice_id, hold_key=h.hold_key)
    return owner


def _postings(hold: Hold, scale: int) -> dict[tuple[str, str], Decimal]:
    """A hold's postings per (charge, lot), as exact Decimals at the unit's scale."""
    posted: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for pos, (charge, lot, _amount) in hold.allocations.items():
        if hold.postings.get(pos, 0):
            posted[(charge, lot)] += exact(hold.postings[pos], scale)
    return dict(posted)


def _check_unit_holds(found: TenantFindings, check: Check, inv: Invoice, unit_holds: dict[str, Hold],
                      apps: Applications, scales: dict[str, int]) -> bool:
    """Each usage unit the invoice's applications cover has the run's committed hold in that unit,
    posting exactly the units covered per (charge, lot); returns whether any units were posted."""
    any_posted = False
    for unit in sorted({*unit_holds, *apps.units}):
        hold, covered = unit_holds.get(unit), {k: v for k, v in apps.units.get(unit, {}).items() if v}
        if hold is None or hold.status != HoldStatus.COMMITTED:
            if covered:
                found.bad(check, f"invoice shows {unit} units covered but the run's {unit} hold is "
                          f"{hold.status if hold else 'missing'}", invoice_id=inv.invoice_id,
                          hold_key=hold.hold_key if hold else "?")
            continue
        scale = scales.get(unit.partition("@")[0])
        if scale is None:
            found.bad(Check.SCALE, f"no ledger scale for the usage unit {unit!r}", invoice_id=inv.invoice_id,
                      hold_key=hold.hold_key)
            continue
        posted = _postings(hold, scale)
        any_posted = any_posted or bool(posted)
        if posted != covered:
            found.bad(check, f"{unit} posted {_fmt(posted)} != units covered on the invoice {_fmt(covered)}",
                      invoice_id=inv.invoice_id, hold_key=hold.hold_key)
    return any_posted


def _check_amounts(found: TenantFindings, check: Check, inv: Invoice, hold: Hold, apps: Applications,
                   scales: dict[str, int], units_posted: bool) -> None:
    """Postings per (charge, lot), each side read at its own scale, equal the currency applications;
    their sum plus the value of the covered units equals the invoice's credits applied (and the
    units have a value only if units were posted)."""
    ledger_scale, minor_scale = scales.get(hold.unit), invoice_scale(inv.currency)
    if ledger_scale is None or minor_scale is None:
        found.bad(Check.SCALE, f"no scale for the hold's unit {hold.unit!r} (ledger: {ledger_scale}) or the "
                  f"invoice currency {inv.currency!r} (invoice service: {minor_scale})",
                  invoice_id=inv.invoice_id, hold_key=hold.hold_key)
        return
    posted = _postings(hold, ledger_scale)
    applied = {k: exact(v, minor_scale) for k, v in apps.money.items()}
    if posted != applied:
        found.bad(check, f"debits posted {_fmt(posted)} != applications on the invoice {_fmt(applied)}",
                  invoice_id=inv.invoice_id, hold_key=hold.hold_key)
    value = exact(apps.unit_value, minor_scale)
    if value and not units_posted:
        found.bad(check, f"usage units worth {value} applied but no units were posted", invoice_id=inv.invoice_id,
                  hold_key=hold.hold_key)
    total, credits = sum(posted.values(), Decimal(0)) + value, exact(inv.credits_minor, minor_scale)
    if total != credits:
        found.bad(check, f"debits posted {total} != credits applied {credits}", invoice_id=inv.invoice_id,
                  hold_key=hold.hold_key)


def _fmt(amounts: dict[tuple[str, str], Decimal]) -> str:
    return "{" + ", ".join(f"{c}@{lot}:{v}" for (c, lot), v in sorted(amounts.items())) + "}"
