"""Reads of lots, balances and the journal: GetLot, ListLots, GetBalance, ListEntries, GetLotBoundaries,
VerifyJournal. Amounts are packed in their unit's scale; lists page by an opaque token."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from ledger_service.domain.journal import Entry
from ledger_service.domain.model import Lot
from ledger_service.operations.context import Ledger
from ledger_service.storage import reads
from ledger_service.storage.reads import BalanceView, EntryFilter, Verification
from service_runtime.pages import encode_token

T = TypeVar("T")


async def get_lot(ledger: Ledger, tenant_id: str, lot_id: str, as_of: datetime | None,
                  pack: Callable[[Lot, int], T]) -> T:
    """The lot; with `as_of`, its buckets as the journal recorded them by that instant."""
    lot = await reads.get_lot(ledger.pool, tenant_id, lot_id, as_of)
    return pack(lot, await ledger.scale(tenant_id, lot.unit))


@dataclass(frozen=True, slots=True)
class LotQuery:
    account_id: str
    unit: str            # "": every unit
    include_empty: bool  # also lots with nothing available or held
    after_seq: int
    limit: int


async def list_lots(ledger: Ledger, tenant_id: str, query: LotQuery,
                    pack: Callable[[Lot, int], T]) -> tuple[list[T], str]:
    """One page of the account's lots in creation order, and the next page's token ("" after the last)."""
    lots = await reads.list_lots(ledger.pool, tenant_id, query.account_id, query.unit, query.include_empty,
                                 query.after_seq, query.limit)
    packed = [pack(lot, await ledger.scale(tenant_id, lot.unit)) for lot in lots]
    return packed, encode_token(lots[-1].seq) if len(lots) == query.limit else ""


async def get_balance(ledger: Ledger, tenant_id: str, account_id: str, as_of: datetime | None,
                      pack: Callable[[BalanceView, dict[str, int]], T]) -> T:
    """Per unit and per (unit, type), now or as of an instant; `pack` gets each unit's scale."""
    view = await reads.get_balance(ledger.pool, tenant_id, account_id, as_of, ledger.now())
    units = {row.unit for row in (*view.totals, *view.by_type)}
    return pack(view, {unit: await ledger.scale(tenant_id, unit) for unit in sorted(units)})


@dataclass(frozen=True, slots=True)
class EntryQuery:
    filter: EntryFilter
    after_id: int
    limit: int


async def list_entries(ledger: Ledger, tenant_id: str, query: EntryQuery,
                       pack: Callable[[Entry, int], T]) -> tuple[list[T], str]:
    """One page of the statement in entry order, and the next page's token ("" after the last)."""
    entries = await reads.list_entries(ledger.pool, tenant_id, query.filter, query.after_id, query.limit)
    packed = [pack(e, await ledger.scale(tenant_id, e.unit)) for e in entries]
    return packed, encode_token(entries[-1].entry_id) if len(entries) == query.limit else ""


async def get_lot_boundaries(ledger: Ledger, tenant_id: str, account_id: str, unit: str, start: datetime,
                             end: datetime) -> list[datetime]:
    """The instants strictly inside (start, end) where a lot of the account becomes effective or expires."""
    return await reads.lot_boundaries(ledger.pool, tenant_id, account_id, unit, start, end)


async def verify_journal(ledger: Ledger, tenant_id: str) -> Verification:
    return await reads.verify_journal(ledger.pool, tenant_id)
