"""Consumption policy: which lot pays first, as data (an ordered list of sort keys).

Default (SPEC §3): priority ascending; expiry soonest (no expiry last); type order promotional,
compensatory, purchased; narrowest scope; lowest cost basis; oldest effective_at; creation order.
Creation order always breaks remaining ties, so allocation is deterministic.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ledger_service.domain.model import Lot, LotType


class SortKey(enum.StrEnum):
    PRIORITY_ASC = "PRIORITY_ASC"
    EXPIRY_SOONEST = "EXPIRY_SOONEST"
    TYPE_ORDER = "TYPE_ORDER"
    SCOPE_NARROWEST = "SCOPE_NARROWEST"
    COST_BASIS_LOWEST = "COST_BASIS_LOWEST"
    EFFECTIVE_OLDEST = "EFFECTIVE_OLDEST"
    CREATION_ORDER = "CREATION_ORDER"


DEFAULT_SORT_KEYS: tuple[SortKey, ...] = (
    SortKey.PRIORITY_ASC,
    SortKey.EXPIRY_SOONEST,
    SortKey.TYPE_ORDER,
    SortKey.SCOPE_NARROWEST,
    SortKey.COST_BASIS_LOWEST,
    SortKey.EFFECTIVE_OLDEST,
    SortKey.CREATION_ORDER,
)
DEFAULT_TYPE_ORDER: tuple[LotType, ...] = (
    LotType.PROMOTIONAL,
    LotType.COMPENSATORY,
    LotType.PURCHASED,
    LotType.ROLLOVER,
)
_NEVER = datetime.max.replace(tzinfo=None)


@dataclass(frozen=True, slots=True)
class Policy:
    version: int  # 0 = the built-in default, never stored
    sort_keys: tuple[SortKey, ...] = DEFAULT_SORT_KEYS
    type_order: tuple[LotType, ...] = DEFAULT_TYPE_ORDER
    account_id: str = ""

    def sort_key(self) -> Callable[[Lot], tuple[Any, ...]]:
        return _sort_key(self)

    def _build_sort_key(self) -> Callable[[Lot], tuple[Any, ...]]:
        getters = [self._getter(k) for k in self.sort_keys]
        if SortKey.CREATION_ORDER not in self.sort_keys:
            getters.append(lambda lot: lot.seq)

        def key(lot: Lot) -> tuple[Any, ...]:
            return tuple(g(lot) for g in getters)

        return key

    def describe(self, lot: Lot) -> list[str]:
        """The sort values of `lot`, as text, for ExplainAllocation."""
        out = []
        for k in self.sort_keys:
            value = self._getter(k)(lot)
            if k is SortKey.EXPIRY_SOONEST:
                value = lot.usable_until.isoformat() if lot.usable_until else "never"
            elif k is SortKey.TYPE_ORDER:
                value = f"{lot.lot_type.value}({value})"
            out.append(f"{k.value.lower()}={value}")
        return out

    def _getter(self, key: SortKey) -> Callable[[Lot], Any]:
        if key is SortKey.PRIORITY_ASC:
            return lambda lot: lot.priority
        if key is SortKey.EXPIRY_SOONEST:
            return lambda lot: (
                (1, _NEVER) if lot.usable_until is None else (0, lot.usable_until.replace(tzinfo=None))
            )
        if key is SortKey.TYPE_ORDER:
            rank = {t: i for i, t in enumerate(self.type_order)}
            return lambda lot: rank.get(lot.lot_type, len(rank))
        if key is SortKey.SCOPE_NARROWEST:
            return lambda lot: lot.scope.width
        if key is SortKey.COST_BASIS_LOWEST:
            return lambda lot: lot.cost_basis
        if key is SortKey.EFFECTIVE_OLDEST:
            return lambda lot: lot.effective_at
        return lambda lot: lot.seq


@functools.lru_cache(maxsize=1024)
def _sort_key(policy: Policy) -> Callable[[Lot], tuple[Any, ...]]:
    return policy._build_sort_key()


DEFAULT_POLICY = Policy(version=0)


def validate_sort_keys(keys: Sequence[SortKey]) -> None:
    if len(set(keys)) != len(keys):
        raise ValueError("sort keys repeat")
