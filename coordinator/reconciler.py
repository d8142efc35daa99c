"""Cross-service reconciliation (SPEC §10, §11): read both databases and Temporal once the system is
quiet and report every place where the ledger, the invoice service and the coordinator disagree.

Checks, per tenant:

- `invoice-finalized`: a FINALIZED invoice has exactly one COMMITTED saga hold, owned by the run
  that prepared it, not reversed, whose postings per (charge, lot) equal the credit applications
  on the invoice (and their sum the invoice's credits applied).
- `invoice-voided`: a VOIDED invoice's committed hold was reversed (hold_reversals) and the journal
  gave every posted amount back to the original lot (REINSTATE entries).
- `invoice-draft`: a DRAFT invoice has no committed hold and no credit applications.
- `in-doubt`: no invoice left PREPARED or VOID_PENDING, no saga hold left PENDING.
- `orphan-hold`: a committed (or reversed) saga hold whose invoice is not FINALIZED / VOIDED.
- `spent-twice`: more than one committed hold for one invoice; a lot whose consumed bucket is not
  the sum of the postings and debits recorded against it; journal entries of a hold that do not
  match its allocations, postings, resolution and reversal.
- `journal`: the ledger's own verify (replay == projection, conservation, no negative bucket,
  held == pending allocations).
- `idempotency`: every stored response of a hold/invoice mutation agrees with the durable state
  it names (a key never maps to two outcomes).
- `decision` (with a Temporal client): a finalized/voided invoice's owning run recorded the commit
  decision; `quiet`: no saga workflow still running.

`reconcile()` returns a `ReconcileReport`; `creditctl reconcile` prints it.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from coordinator import naming
from coordinator.search_attributes import DECIDED_OUTCOMES, OUTCOME

CURRENCY_DIGITS = {"JPY": 0, "KRW": 0}  # invoice minor units; everything else has 2


@dataclass(frozen=True)
class Violation:
    check: str
    tenant_id: str
    message: str
    ids: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        ids = " ".join(f"{k}={v}" for k, v in self.ids.items())
        return f"[{self.check}] tenant={self.tenant_id} {ids} :: {self.message}"


@dataclass
class ReconcileReport:
    violations: list[Violation] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def ok(self) -> bool:
        return not self.violations

    def by_check(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for v in self.violations:
            out[v.check] += 1
        return dict(out)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "violations": [asdict(v) for v in self.violations],
                "by_check": self.by_check(), "checked": dict(self.checked)}

    def render(self) -> str:
        lines = ["checked: " + ", ".join(f"{k}={v}" for k, v in sorted(self.checked.items()))]
        lines += [v.line() for v in self.violations]
        lines.append(f"{len(self.violations)} violation(s)" if self.violations else "no violations")
        return "\n".join(lines)


@dataclass
class _Hold:
    hold_key: str
    account_id: str
    unit: str
    status: str  # PENDING | COMMITTED | RELEASED
    allocations: dict[int, tuple[str, str, int]] = field(default_factory=dict)  # position -> charge, lot, amount
    postings: dict[int, int] = field(default_factory=dict)
    reversed: bool = False
    posted: int = 0


def _scale(amount: int, digits: int) -> Decimal:
    return Decimal(amount).scaleb(-digits)


async def reconcile(ledger_dsn: str, invoice_dsn: str, client: Client | None = None,
                    tenants: list[str] | None = None) -> ReconcileReport:
    """Reads both databases (and Temporal when `client` is given) and reports every violation."""
    report = ReconcileReport()
    lpool = await asyncpg.create_pool(ledger_dsn, min_size=1, max_size=2)
    iconn = await asyncpg.connect(invoice_dsn)
    lconn = await lpool.acquire()
    try:
        if tenants is None:
            rows = await iconn.fetch("SELECT tenant_id FROM tenants ORDER BY tenant_id")
            lrows = await lconn.fetch("SELECT tenant_id FROM tenants ORDER BY tenant_id")
            tenants = sorted({r["tenant_id"] for r in rows} | {r["tenant_id"] for r in lrows})
        for tenant in tenants:
            await _reconcile_tenant(lconn, iconn, lpool, client, tenant, report)
            report.checked["tenants"] += 1
    finally:
        await lpool.release(lconn)
        await lpool.close()
        await iconn.close()
    if client is not None:
        await _check_quiet(client, report)
    return report


async def _load_holds(conn: asyncpg.Connection, tenant: str) -> dict[str, _Hold]:
    holds: dict[str, _Hold] = {}
    for r in await conn.fetch(
            """SELECT h.hold_key, h.account_id, h.unit, r.status, COALESCE(r.posted, 0) AS posted,
                      (v.hold_key IS NOT NULL) AS reversed
                 FROM holds h
                 LEFT JOIN hold_resolutions r ON r.tenant_id = h.tenant_id AND r.hold_key = h.hold_key
                 LEFT JOIN hold_reversals v ON v.tenant_id = h.tenant_id AND v.hold_key = h.hold_key
                WHERE h.tenant_id = $1""", tenant):
        holds[r["hold_key"]] = _Hold(r["hold_key"], r["account_id"], r["unit"], r["status"] or "PENDING",
                                     reversed=r["reversed"], posted=r["posted"])
    for r in await conn.fetch("SELECT hold_key, position, charge_id, lot_id, amount FROM hold_allocations "
                              "WHERE tenant_id = $1", tenant):
        if r["hold_key"] in holds:
            holds[r["hold_key"]].allocations[r["position"]] = (r["charge_id"], r["lot_id"], r["amount"])
    for r in await conn.fetch("SELECT hold_key, position, posted FROM hold_postings WHERE tenant_id = $1", tenant):
        if r["hold_key"] in holds:
            holds[r["hold_key"]].postings[r["position"]] = r["posted"]
    for h in holds.values():  # the ledger stores only partial postings: a full commit posts the allocation
        if h.status == "COMMITTED":
            for pos, (_charge, _lot, amount) in h.allocations.items():
                h.postings.setdefault(pos, amount)
    return holds


async def _reconcile_tenant(lconn: asyncpg.Connection, iconn: asyncpg.Connection, lpool: asyncpg.Pool,
                            client: Client | None, tenant: str, report: ReconcileReport) -> None:
    def bad(check: str, message: str, **ids: str) -> None:
        report.violations.append(Violation(check, tenant, message, ids))

    scales = {r["code"]: r["scale"] for r in await lconn.fetch("SELECT code, scale FROM units WHERE tenant_id = $1",
                                                               tenant)}
    holds = await _load_holds(lconn, tenant)
    report.checked["holds"] += len(holds)

    # --- journal entries per hold and lot ------------------------------------------------------
    journal: dict[tuple[str, str, str], int] = defaultdict(int)
    for r in await lconn.fetch(
            "SELECT hold_key, lot_id, kind, sum(amount)::bigint AS amount FROM journal "
            "WHERE tenant_id = $1 AND hold_key <> '' GROUP BY hold_key, lot_id, kind", tenant):
        journal[(r["hold_key"], r["lot_id"], r["kind"])] = r["amount"]
    debit_alloc: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in await lconn.fetch("SELECT hold_key, allocations FROM debits WHERE tenant_id = $1", tenant):
        for alloc in json.loads(r["allocations"]):
            debit_alloc[r["hold_key"]][str(alloc[2])] += int(alloc[3])
    report.checked["debits"] += len(debit_alloc)

    consumed_expected: dict[str, int] = defaultdict(int)
    for h in holds.values():
        per_lot_alloc: dict[str, int] = defaultdict(int)
        per_lot_posted: dict[str, int] = defaultdict(int)
        for pos, (_charge, lot, amount) in h.allocations.items():
            per_lot_alloc[lot] += amount
            per_lot_posted[lot] += h.postings.get(pos, 0)
        if h.status != "COMMITTED" and h.postings:
            bad("spent-twice", f"hold is {h.status} but has postings {h.postings}", hold_key=h.hold_key)
        if h.status == "COMMITTED" and sum(h.postings.values()) != h.posted:
            bad("spent-twice", f"resolution posted {h.posted} != sum of postings {sum(h.postings.values())}",
                hold_key=h.hold_key)
        for lot in set(per_lot_alloc) | {k[1] for k in journal if k[0] == h.hold_key}:
            alloc, posted = per_lot_alloc.get(lot, 0), per_lot_posted.get(lot, 0)
            expect = {"HOLD": alloc, "POST": posted,
                      "RELEASE": (alloc - posted) if h.status in ("COMMITTED", "RELEASED") else 0,
                      "REINSTATE": posted if h.reversed else 0}
            for kind, want in expect.items():
                got = journal.get((h.hold_key, lot, kind), 0)
                if got != want:
                    bad("spent-twice", f"journal {kind} on the lot is {got}, the hold's records say {want} "
                        f"(status {h.status}{', reversed' if h.reversed else ''})", hold_key=h.hold_key, lot_id=lot)
            consumed_expected[lot] += posted
    for hold_key, per_lot in debit_alloc.items():
        for lot, amount in per_lot.items():
            got = journal.get((hold_key, lot, "DEBIT"), 0)
            if got != amount:
                bad("spent-twice", f"journal DEBIT on the lot is {got}, the debit records {amount}",
                    hold_key=hold_key, lot_id=lot)
            consumed_expected[lot] += amount

    # --- lots: buckets, negatives, consumed == what holds and debits posted -------------------
    for r in await lconn.fetch("SELECT lot_id, account_id, granted, reinstated, available, held, consumed, expired,"
                               " voided, transferred_out FROM lot_balances WHERE tenant_id = $1", tenant):
        report.checked["lots"] += 1
        lot = r["lot_id"]
        for bucket in ("available", "held", "consumed", "expired", "voided", "transferred_out"):
            if r[bucket] < 0:
                bad("negative-lot", f"{bucket} is {r[bucket]}", lot_id=lot, account_id=r["account_id"])
        if r["consumed"] != consumed_expected.get(lot, 0):
            bad("spent-twice", f"lot consumed {r['consumed']} != postings + debits recorded against it "
                f"{consumed_expected.get(lot, 0)}", lot_id=lot, account_id=r["account_id"])

    from ledger_service.storage.reads import verify_journal

    verification = await verify_journal(lpool, tenant)
    report.checked["journal_entries"] += verification.entries
    for text in verification.violations:
        bad("journal", text, lot_id=text.split()[1].rstrip(":") if text.startswith("lot ") else "")

    # --- invoices --------------------------------------------------------------------------
    invoices = {r["invoice_id"]: r for r in await iconn.fetch(
        "SELECT invoice_id, status, prepare_key, credits_minor, currency, ledger_account_id FROM invoices "
        "WHERE tenant_id = $1", tenant)}
    report.checked["invoices"] += len(invoices)
    applications: dict[str, dict[tuple[str, str], int]] = defaultdict(lambda: defaultdict(int))
    for r in await iconn.fetch("SELECT invoice_id, charge_id, lot_id, amount_minor FROM credit_applications "
                               "WHERE tenant_id = $1", tenant):
        applications[r["invoice_id"]][(r["charge_id"], r["lot_id"])] += r["amount_minor"]
    by_invoice: dict[str, list[_Hold]] = defaultdict(list)
    for h in holds.values():
        parsed = naming.parse_hold_key(h.hold_key)
        if parsed is None:
            if h.status == "PENDING":
                bad("in-doubt", "hold still PENDING after the system went quiet", hold_key=h.hold_key,
                    account_id=h.account_id)
            continue
        by_invoice[parsed[0]].append(h)
        if h.status == "PENDING":
            bad("in-doubt", "saga hold still PENDING after recovery", hold_key=h.hold_key, invoice_id=parsed[0],
                account_id=h.account_id)
        inv = invoices.get(parsed[0])
        status = inv["status"] if inv is not None else "(missing)"
        if h.status == "COMMITTED" and status not in ("FINALIZED", "VOIDED"):
            bad("orphan-hold", f"credits committed ({h.posted}) but the invoice is {status}",
                hold_key=h.hold_key, invoice_id=parsed[0])
        if h.reversed and status != "VOIDED":
            bad("orphan-hold", f"credits reversed but the invoice is {status}", hold_key=h.hold_key,
                invoice_id=parsed[0])

    owners: list[tuple[str, str, str]] = []  # (invoice, workflow id, run id) to ask Temporal about
    for invoice_id, inv in sorted(invoices.items()):
        status = inv["status"]
        committed = [h for h in by_invoice.get(invoice_id, []) if h.status == "COMMITTED"]
        apps = applications.get(invoice_id, {})
        if len(committed) > 1:
            bad("spent-twice", f"{len(committed)} committed holds for one invoice",
                invoice_id=invoice_id, hold_keys=",".join(h.hold_key for h in committed))
        if status in ("PREPARED", "VOID_PENDING"):
            bad("in-doubt", f"invoice still {status} after recovery", invoice_id=invoice_id,
                prepare_key=inv["prepare_key"])
        if status == "DRAFT":
            if committed:
                bad("invoice-draft", "DRAFT invoice has committed credits", invoice_id=invoice_id,
                    hold_key=committed[0].hold_key)
            if apps:
                bad("invoice-draft", f"DRAFT invoice shows {len(apps)} credit applications", invoice_id=invoice_id)
            continue
        if status not in ("FINALIZED", "VOIDED", "VOID_PENDING"):
            continue
        ref = naming.parse_prepare_key(inv["prepare_key"])
        run_id = ref[1] if ref else ""
        if ref:
            owners.append((invoice_id, ref[0], ref[1]))
        hold = holds.get(naming.hold_key(invoice_id, run_id)) if run_id else None
        if hold is None or hold.status != "COMMITTED":
            bad(f"invoice-{status.lower()}", f"invoice is {status} but the preparing run's hold is "
                f"{hold.status if hold else 'missing'}", invoice_id=invoice_id,
                hold_key=naming.hold_key(invoice_id, run_id) if run_id else "?")
            continue
        digits = CURRENCY_DIGITS.get(inv["currency"], 2)
        scale = scales.get(hold.unit, 2)
        by_lot: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        for pos, (charge, lot, _amount) in hold.allocations.items():
            if hold.postings.get(pos, 0):
                by_lot[(charge, lot)] += _scale(hold.postings[pos], scale)
        applied = {k: _scale(v, digits) for k, v in apps.items()}
        if dict(by_lot) != applied:
            bad(f"invoice-{status.lower()}", f"debits posted {_fmt(by_lot)} != applications on the invoice "
                f"{_fmt(applied)}", invoice_id=invoice_id, hold_key=hold.hold_key)
        if sum(by_lot.values(), Decimal(0)) != _scale(inv["credits_minor"], digits):
            bad(f"invoice-{status.lower()}", f"debits posted {sum(by_lot.values(), Decimal(0))} != credits applied "
                f"{_scale(inv['credits_minor'], digits)}", invoice_id=invoice_id, hold_key=hold.hold_key)
        if status == "FINALIZED" and hold.reversed:
            bad("invoice-finalized", "FINALIZED invoice's debits were reversed", invoice_id=invoice_id,
                hold_key=hold.hold_key)
        if status == "VOIDED" and hold.posted and not hold.reversed:
            bad("invoice-voided", "VOIDED invoice's debits were never reversed onto their lots",
                invoice_id=invoice_id, hold_key=hold.hold_key)

    await _check_idempotency(lconn, iconn, tenant, holds, invoices, bad, report)
    if client is not None:
        await _check_decisions(client, tenant, owners, invoices, bad, report)


def _fmt(d: dict[tuple[str, str], Decimal]) -> str:
    return "{" + ", ".join(f"{c}@{lot}:{v}" for (c, lot), v in sorted(d.items())) + "}"


async def _check_idempotency(lconn: asyncpg.Connection, iconn: asyncpg.Connection, tenant: str,
                             holds: dict[str, _Hold], invoices: dict[str, Any], bad: Any,
                             report: ReconcileReport) -> None:
    """Each stored response of a hold / invoice mutation names an outcome the durable state still shows."""
    from credits.invoice.v1 import invoice_pb2 as ipb
    from credits.ledger.v1 import ledger_pb2 as lpb

    expect_hold = {"CommitHold": {"COMMITTED"}, "ReleaseHold": {"RELEASED", "TOMBSTONE"}}
    tombstones = {r["hold_key"] for r in await lconn.fetch(
        "SELECT hold_key FROM hold_resolutions WHERE tenant_id = $1 AND status = 'TOMBSTONE'", tenant)}
    for r in await lconn.fetch("SELECT key, method, response FROM idempotency_keys WHERE tenant_id = $1", tenant):
        report.checked["idempotency_keys"] += 1
        method = r["method"].rpartition("/")[2]
        if method not in ("ReserveCredits", "CommitHold", "ReleaseHold"):
            continue
        resp = lpb.Hold.FromString(bytes(r["response"]))
        hold = holds.get(resp.hold_key)
        if hold is None:
            if not (method == "ReleaseHold" and resp.hold_key in tombstones):
                bad("idempotency", f"{method} response names hold {resp.hold_key!r} that does not exist",
                    key=r["key"])
            continue
        if method in expect_hold:
            status = lpb.HoldStatus.Name(resp.status)
            if hold.status not in expect_hold[method] or status not in expect_hold[method]:
                bad("idempotency", f"{method} stored {status}, the hold is {hold.status}", key=r["key"],
                    hold_key=hold.hold_key)
    expect_inv = {"CommitFinalize": {"FINALIZED", "VOID_PENDING", "VOIDED"}, "CommitVoid": {"VOIDED"}}
    for r in await iconn.fetch("SELECT key, method, response FROM idempotency_keys WHERE tenant_id = $1", tenant):
        report.checked["idempotency_keys"] += 1
        method = r["method"].rpartition("/")[2]
        if method not in expect_inv:
            continue
        resp = ipb.Invoice.FromString(bytes(r["response"]))
        inv = invoices.get(resp.invoice_id)
        if inv is None or inv["status"] not in expect_inv[method]:
            bad("idempotency", f"{method} stored {ipb.InvoiceStatus.Name(resp.status)}, the invoice is "
                f"{inv['status'] if inv else 'missing'}", key=r["key"], invoice_id=resp.invoice_id)


async def _check_decisions(client: Client, tenant: str, owners: list[tuple[str, str, str]],
                           invoices: dict[str, Any], bad: Any, report: ReconcileReport) -> None:
    """A committed invoice's owning run must have recorded the commit decision in Temporal."""
    sem = asyncio.Semaphore(16)

    async def outcome(workflow_id: str, run_id: str | None) -> tuple[str, str]:
        async with sem:
            try:
                desc = await client.get_workflow_handle(workflow_id, run_id=run_id).describe()
            except RPCError as err:
                if err.status == RPCStatusCode.NOT_FOUND:
                    return "missing", ""
                raise
            return str(desc.typed_search_attributes.get(OUTCOME) or ""), desc.status.name if desc.status else ""

    finals = await asyncio.gather(*(outcome(wf, run) for _inv, wf, run in owners))
    for (invoice_id, wf, run), (out, _status) in zip(owners, finals, strict=True):
        report.checked["decisions"] += 1
        if out not in DECIDED_OUTCOMES:
            bad("decision", f"invoice is {invoices[invoice_id]['status']} but its owning run recorded no commit "
                f"decision (outcome={out or 'none'})", invoice_id=invoice_id, workflow_id=wf, run_id=run)
    voided = [i for i, inv in sorted(invoices.items()) if inv["status"] == "VOIDED"]
    voids = await asyncio.gather(*(outcome(naming.void_workflow_id(tenant, i), None) for i in voided))
    for invoice_id, (out, _status) in zip(voided, voids, strict=True):
        report.checked["decisions"] += 1
        if out not in ("voiding", "voided"):
            bad("decision", f"invoice is VOIDED but its void workflow recorded no void decision "
                f"(outcome={out or 'none'})", invoice_id=invoice_id,
                workflow_id=naming.void_workflow_id(tenant, invoice_id))


async def _check_quiet(client: Client, report: ReconcileReport) -> None:
    query = 'ExecutionStatus = "Running" AND WorkflowType IN ("FinalizeInvoice", "VoidInvoice")'
    async for wf in client.list_workflows(query):
        if wf.status == WorkflowExecutionStatus.RUNNING:
            report.violations.append(Violation("quiet", naming.tenant_of(wf.id) or "?",
                                               "saga still running: the system is not quiet",
                                               {"workflow_id": wf.id, "run_id": wf.run_id}))


async def running_sagas(client: Client) -> int:
    """How many FinalizeInvoice / VoidInvoice workflows are still running."""
    query = 'ExecutionStatus = "Running" AND WorkflowType IN ("FinalizeInvoice", "VoidInvoice")'
    return len([wf async for wf in client.list_workflows(query)])
