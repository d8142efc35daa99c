"""The ledger's side: holds against their journal entries, lots against what was posted, the ledger's
own verify. Reads the ledger database directly (owner DSN), like every operator tool."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field

import asyncpg

from ledger_service.domain.journal import EntryKind
from ledger_service.domain.model import HoldStatus
from ledger_service.storage.reads import verify_journal
from reconciler.report import Check, TenantFindings

LOT_BUCKETS = ("available", "held", "consumed", "expired", "voided", "transferred_out")

_SELECT_HOLDS = """
SELECT h.hold_key, h.account_id, h.unit, r.status, COALESCE(r.posted, 0) AS posted,
       (v.hold_key IS NOT NULL) AS reversed
  FROM holds h
  LEFT JOIN hold_resolutions r ON r.tenant_id = h.tenant_id AND r.hold_key = h.hold_key
  LEFT JOIN hold_reversals v ON v.tenant_id = h.tenant_id AND v.hold_key = h.hold_key
 WHERE h.tenant_id = $1"""
_SELECT_ALLOCATIONS = ("SELECT hold_key, position, charge_id, lot_id, amount FROM hold_allocations "
                       "WHERE tenant_id = $1")
_SELECT_POSTINGS = "SELECT hold_key, position, posted FROM hold_postings WHERE tenant_id = $1"
_SELECT_HOLD_JOURNAL = ("SELECT hold_key, lot_id, kind, sum(amount)::bigint AS amount FROM journal "
                        "WHERE tenant_id = $1 AND hold_key <> '' GROUP BY hold_key, lot_id, kind")
_SELECT_DEBITS = "SELECT hold_key, allocations FROM debits WHERE tenant_id = $1"
_SELECT_LOTS = (f"SELECT lot_id, account_id, granted, reinstated, {', '.join(LOT_BUCKETS)} FROM lot_balances "
                "WHERE tenant_id = $1")


@dataclass
class Hold:
    hold_key: str
    account_id: str
    unit: str
    status: HoldStatus  # no resolution yet: PENDING
    allocations: dict[int, tuple[str, str, int]] = field(default_factory=dict)  # position -> charge, lot, amount
    postings: dict[int, int] = field(default_factory=dict)
    reversed: bool = False
    posted: int = 0

    def per_lot(self) -> tuple[dict[str, int], dict[str, int]]:
        """(allocated, posted) per lot."""
        allocated: dict[str, int] = defaultdict(int)
        posted: dict[str, int] = defaultdict(int)
        for pos, (_charge, lot, amount) in self.allocations.items():
            allocated[lot] += amount
            posted[lot] += self.postings.get(pos, 0)
        return allocated, posted


async def load_holds(conn: asyncpg.Connection, tenant: str) -> dict[str, Hold]:
    holds = {r["hold_key"]: Hold(r["hold_key"], r["account_id"], r["unit"],
                                 HoldStatus(r["status"] or HoldStatus.PENDING), reversed=r["reversed"],
                                 posted=r["posted"])
             for r in await conn.fetch(_SELECT_HOLDS, tenant)}
    for r in await conn.fetch(_SELECT_ALLOCATIONS, tenant):
        if r["hold_key"] in holds:
            holds[r["hold_key"]].allocations[r["position"]] = (r["charge_id"], r["lot_id"], r["amount"])
    for r in await conn.fetch(_SELECT_POSTINGS, tenant):
        if r["hold_key"] in holds:
            holds[r["hold_key"]].postings[r["position"]] = r["posted"]
    for h in holds.values():  # the ledger stores only partial postings: a full commit posts the allocation
        if h.status == HoldStatus.COMMITTED:
            for pos, (_charge, _lot, amount) in h.allocations.items():
                h.postings.setdefault(pos, amount)
    return holds


async def check_ledger(lconn: asyncpg.Connection, lpool: asyncpg.Pool, found: TenantFindings,
                       holds: dict[str, Hold]) -> None:
    """Journal entries of holds and debits, lot buckets, and the ledger's own verify."""
    tenant = found.tenant_id
    journal: dict[tuple[str, str, str], int] = {
        (r["hold_key"], r["lot_id"], r["kind"]): r["amount"] for r in await lconn.fetch(_SELECT_HOLD_JOURNAL, tenant)}
    consumed = _check_hold_journal(found, holds, journal)
    for lot, amount in _check_debit_journal(found, journal, await lconn.fetch(_SELECT_DEBITS, tenant)).items():
        consumed[lot] += amount
    _check_lots(found, await lconn.fetch(_SELECT_LOTS, tenant), consumed)
    verification = await verify_journal(lpool, tenant)
    found.count("journal_entries", verification.entries)
    for text in verification.violations:
        found.bad(Check.JOURNAL, text, lot_id=text.split()[1].rstrip(":") if text.startswith("lot ") else "")


def _check_hold_journal(found: TenantFindings, holds: dict[str, Hold],
                        journal: dict[tuple[str, str, str], int]) -> dict[str, int]:
    """Each hold's HOLD / POST / RELEASE / REINSTATE entries per lot match its records; returns what
    the holds consumed per lot."""
    consumed: dict[str, int] = defaultdict(int)
    for h in holds.values():
        allocated, posted = h.per_lot()
        if h.status != HoldStatus.COMMITTED and h.postings:
            found.bad(Check.SPENT_TWICE, f"hold is {h.status} but has postings {h.postings}", hold_key=h.hold_key)
        if h.status == HoldStatus.COMMITTED and sum(h.postings.values()) != h.posted:
            found.bad(Check.SPENT_TWICE, f"resolution posted {h.posted} != sum of postings "
                      f"{sum(h.postings.values())}", hold_key=h.hold_key)
        for lot in set(allocated) | {k[1] for k in journal if k[0] == h.hold_key}:
            alloc, post = allocated.get(lot, 0), posted.get(lot, 0)
            resolved = h.status in (HoldStatus.COMMITTED, HoldStatus.RELEASED)
            expect = {EntryKind.HOLD: alloc, EntryKind.POST: post, EntryKind.RELEASE: alloc - post if resolved else 0,
                      EntryKind.REINSTATE: post if h.reversed else 0}
            for kind, want in expect.items():
                got = journal.get((h.hold_key, lot, kind), 0)
                if got != want:
                    found.bad(Check.SPENT_TWICE, f"journal {kind} on the lot is {got}, the hold's records say "
                              f"{want} (status {h.status}{', reversed' if h.reversed else ''})",
                              hold_key=h.hold_key, lot_id=lot)
            consumed[lot] += post
    return consumed


def _check_debit_journal(found: TenantFindings, journal: dict[tuple[str, str, str], int],
                         debits: list[asyncpg.Record]) -> dict[str, int]:
    """Each direct debit's DEBIT entries match its allocations; returns what debits consumed per lot."""
    per_debit: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in debits:
        for alloc in json.loads(r["allocations"]):
            per_debit[r["hold_key"]][str(alloc[2])] += int(alloc[3])
    found.count("debits", len(per_debit))
    consumed: dict[str, int] = defaultdict(int)
    for hold_key, per_lot in per_debit.items():
        for lot, amount in per_lot.items():
            got = journal.get((hold_key, lot, EntryKind.DEBIT), 0)
            if got != amount:
                found.bad(Check.SPENT_TWICE, f"journal DEBIT on the lot is {got}, the debit records {amount}",
                          hold_key=hold_key, lot_id=lot)
            consumed[lot] += amount
    return consumed


def _check_lots(found: TenantFindings, lots: list[asyncpg.Record], consumed: dict[str, int]) -> None:
    """No negative bucket; consumed == what holds and debits posted against the lot."""
    for r in lots:
        found.count("lots")
        lot = r["lot_id"]
        for bucket in LOT_BUCKETS:
            if r[bucket] < 0:
                found.bad(Check.NEGATIVE_LOT, f"{bucket} is {r[bucket]}", lot_id=lot, account_id=r["account_id"])
        if r["consumed"] != consumed.get(lot, 0):
            found.bad(Check.SPENT_TWICE, f"lot consumed {r['consumed']} != postings + debits recorded against it "
                      f"{consumed.get(lot, 0)}", lot_id=lot, account_id=r["account_id"])
