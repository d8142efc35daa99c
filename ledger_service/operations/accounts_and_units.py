"""Accounts and units: CreateAccount, GetAccount, ListAccounts, DefineUnit, ListUnits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
from google.protobuf.message import Message

from ledger_service.operations.calls import Call, once
from ledger_service.operations.context import Ledger
from ledger_service.storage import catalog
from ledger_service.storage.catalog import AccountRow
from service_runtime.pages import encode_token

M = TypeVar("M", bound=Message)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class NewAccount:
    account_id: str
    parent_account_id: str  # "" for a root account
    name: str


async def create_account(ledger: Ledger, call: Call[M], new: NewAccount, pack: Callable[[AccountRow], M]) -> M:
    async def work(conn: asyncpg.Connection) -> AccountRow:
        return await catalog.create_account(conn, call.tenant_id, new.account_id, new.parent_account_id, new.name)

    return await once(ledger, call, work, pack)


async def get_account(ledger: Ledger, tenant_id: str, account_id: str, pack: Callable[[AccountRow], T]) -> T:
    return pack(await catalog.get_account(ledger.pool, tenant_id, account_id))


@dataclass(frozen=True, slots=True)
class AccountQuery:
    parent_account_id: str  # "" = every account
    after_account_id: str   # the cursor: "" = the first page
    limit: int


async def list_accounts(ledger: Ledger, tenant_id: str, query: AccountQuery,
                        pack: Callable[[AccountRow], T]) -> tuple[list[T], str]:
    """One page of accounts by id, and the next page's token ("" after the last)."""
    rows = await catalog.list_accounts(ledger.pool, tenant_id, query.parent_account_id, query.after_account_id,
                                       query.limit)
    return [pack(r) for r in rows], encode_token(rows[-1].account_id) if len(rows) == query.limit else ""


async def define_unit(ledger: Ledger, call: Call[M], code: str, scale: int,
                      pack: Callable[[tuple[str, int]], M]) -> M:
    async def work(conn: asyncpg.Connection) -> tuple[str, int]:
        return await ledger.units.define(conn, call.tenant_id, code, scale)

    return await once(ledger, call, work, pack)


async def list_units(ledger: Ledger, tenant_id: str) -> list[tuple[str, int]]:
    """(code, scale) of every unit the tenant may use: the built-in ones and its own."""
    return await ledger.units.list(tenant_id)
