"""`reconcile()`: every check, tenant by tenant, on both databases and (when given) Temporal."""

from __future__ import annotations

import asyncpg
from temporalio.client import Client

from finance.storage.projector import project
from finance.storage.rederive import rederive_books
from finance.storage.verify import verify_books
from reconciler.idempotency_checks import check_idempotency
from reconciler.invoice_checks import check_invoices, check_saga_holds, load_invoices
from reconciler.ledger_checks import check_ledger, load_holds
from reconciler.report import Check, ReconcileReport, TenantFindings
from reconciler.scales import ledger_scales
from reconciler.temporal_checks import check_decisions, check_quiet, temporal_calls_settled

_SELECT_TENANTS = "SELECT tenant_id FROM tenants ORDER BY tenant_id"


async def reconcile(ledger_dsn: str, invoice_dsn: str, client: Client | None = None,
                    tenants: list[str] | None = None) -> ReconcileReport:
    """Reads both databases (owner DSNs) and Temporal when `client` is given, and reports every
    violation. It returns only once the Temporal client's threads are done with every call made so
    far, so a process may exit right after (see `temporal_calls_settled`)."""
    report = ReconcileReport()
    lpool = await asyncpg.create_pool(ledger_dsn, min_size=1, max_size=2)
    iconn = await asyncpg.connect(invoice_dsn)
    lconn = await lpool.acquire()
    try:
        if tenants is None:
            named = [r["tenant_id"] for conn in (iconn, lconn) for r in await conn.fetch(_SELECT_TENANTS)]
            tenants = sorted(set(named))
        for tenant in tenants:
            await _reconcile_tenant(lconn, iconn, lpool, client, TenantFindings(tenant, report))
            report.checked["tenants"] += 1
        if client is not None:
            await check_quiet(client, report)
    finally:
        await lpool.release(lconn)
        await lpool.close()
        await iconn.close()
        await temporal_calls_settled()  # also the caller's Client.connect, even a failed one
    return report


async def _reconcile_tenant(lconn: asyncpg.Connection, iconn: asyncpg.Connection, lpool: asyncpg.Pool,
                            client: Client | None, found: TenantFindings) -> None:
    tenant = found.tenant_id
    scales = await ledger_scales(lpool, tenant)
    holds = await load_holds(lconn, tenant)
    found.count("holds", len(holds))
    await check_ledger(lconn, lpool, found, holds)
    invoices, applications = await load_invoices(iconn, tenant)
    found.count("invoices", len(invoices))
    by_invoice = check_saga_holds(found, holds, invoices)
    owners = check_invoices(found, holds, by_invoice, invoices, applications, scales)
    await check_idempotency(lconn, iconn, found, holds, invoices)
    await check_books(lconn, lpool, found)
    if client is not None:
        await check_decisions(client, found, owners, invoices)


async def check_books(lconn: asyncpg.Connection, lpool: asyncpg.Pool, found: TenantFindings) -> None:
    """The finance books (SPEC §12), caught up first: balanced, complete, exact per lot; then re-derived
    from the journal from scratch and compared line by line (finance/storage/rederive.py)."""
    await project(lpool, found.tenant_id)
    books = await verify_books(lconn, found.tenant_id)
    found.count("finance_entries", books.entries)
    for text in books.violations:
        found.bad(Check.FINANCE_BOOKS, text, lot_id=text.split()[1].rstrip(":") if text.startswith("lot ") else "")
    replayed = await rederive_books(lconn, found.tenant_id)
    found.count("finance_lines_rederived", replayed.lines)
    for text in replayed.violations:
        found.bad(Check.FINANCE_REDERIVED, text, lot_id=text.split()[1].rstrip(":") if text.startswith("lot ") else "")
    more = replayed.differences - len(replayed.violations)
    if more:
        found.bad(Check.FINANCE_REDERIVED, f"... and {more} more differences")
