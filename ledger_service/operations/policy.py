"""Consumption policies: SetConsumptionPolicy (a new version for the tenant or one account), GetConsumptionPolicy."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import asyncpg
from google.protobuf.message import Message

from ledger_service.domain.model import LotType
from ledger_service.domain.policy import SortKey
from ledger_service.operations.calls import Call, once
from ledger_service.operations.context import Ledger
from ledger_service.storage import catalog
from ledger_service.storage.catalog import PolicyRow

M = TypeVar("M", bound=Message)
T = TypeVar("T")


async def set_consumption_policy(ledger: Ledger, call: Call[M], account_id: str, sort_keys: list[SortKey],
                                 type_order: list[LotType], pack: Callable[[PolicyRow], M]) -> M:
    """Stores the next policy version; holds record the version they allocated under."""

    async def work(conn: asyncpg.Connection) -> PolicyRow:
        return await catalog.set_policy(conn, call.tenant_id, account_id, sort_keys, type_order)

    return await once(ledger, call, work, pack)


async def get_consumption_policy(ledger: Ledger, tenant_id: str, account_id: str,
                                 pack: Callable[[PolicyRow], T]) -> T:
    """The account's own policy, else the tenant default, else the built-in default (version 0)."""
    return pack(await catalog.get_policy(ledger.pool, tenant_id, account_id))
