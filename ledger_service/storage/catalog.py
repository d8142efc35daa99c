"""Accounts, units, consumption policies and transfer limits: the ledger's slow-changing data."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from ledger_service.domain.model import LotType
from ledger_service.domain.policy import Policy, SortKey
from ledger_service.storage.state import SELECT_POLICY, policy_from_row
from service_runtime.currencies import CURRENCY_SCALES
from service_runtime.rejections import conflict, invalid, not_found

# Usage units every tenant has without defining them (not money: no ISO code).
BUILTIN_USAGE_UNITS: dict[str, int] = {"credit": 2, "token": 0, "compute_minute": 0, "request": 0}
# Units every tenant has without defining them: every ISO 4217 currency of the one catalog of money
# (service_runtime.currencies), with its ISO scale, and the usage units above.
BUILTIN_UNITS: dict[str, int] = {**CURRENCY_SCALES, **BUILTIN_USAGE_UNITS}

SELECT_UNIT = "SELECT scale FROM units WHERE tenant_id = $1 AND code = $2"
SELECT_UNITS = "SELECT code, scale FROM units WHERE tenant_id = $1 ORDER BY code"
INSERT_UNIT = "INSERT INTO units (tenant_id, code, scale) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
SELECT_ACCOUNT = """
SELECT account_id, parent_account_id, root_account_id, name, created_at FROM accounts
WHERE tenant_id = $1 AND account_id = $2
"""
# One page of accounts by id after a cursor; $3 = '' for every account, else only that parent's children.
SELECT_ACCOUNTS = """
SELECT account_id, parent_account_id, root_account_id, name, created_at FROM accounts
WHERE tenant_id = $1 AND account_id > $2 AND ($3 = '' OR parent_account_id = $3)
ORDER BY account_id LIMIT $4
"""
INSERT_ACCOUNT = """
INSERT INTO accounts (tenant_id, account_id, parent_account_id, root_account_id, name)
VALUES ($1, $2, $3, $4, $5) RETURNING account_id, parent_account_id, root_account_id, name, created_at
"""
INSERT_POLICY = """
INSERT INTO consumption_policies (tenant_id, account_id, version, sort_keys, type_order)
SELECT $1, $2, COALESCE(max(version), 0) + 1, $3, $4 FROM consumption_policies WHERE tenant_id = $1
RETURNING account_id, version, sort_keys, type_order, created_at
"""
SELECT_POLICY_CREATED = """
SELECT created_at FROM consumption_policies WHERE tenant_id = $1 AND version = $2
"""
UPSERT_LIMIT = """
INSERT INTO transfer_limits (tenant_id, account_id, unit, max_per_transfer) VALUES ($1, $2, $3, $4)
ON CONFLICT (tenant_id, account_id, unit) DO UPDATE SET max_per_transfer = EXCLUDED.max_per_transfer,
    updated_at = now()
"""
SELECT_LIMIT = "SELECT max_per_transfer FROM transfer_limits WHERE tenant_id = $1 AND account_id = $2 AND unit = $3"


@dataclass(frozen=True)
class AccountRow:
    account_id: str
    parent_account_id: str | None
    root_account_id: str
    name: str
    created_at: datetime


class UnitCatalog:
    """Unit scales per tenant. Units are immutable once defined, so a process-wide cache is safe."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._cache: dict[tuple[str, str], int] = {}

    async def scale(self, tenant_id: str, code: str, field: str = "unit") -> int:
        cached = self._cache.get((tenant_id, code))
        if cached is not None:
            return cached
        if not code:
            raise invalid(field, "is required")
        # A tenant's own row first: before every ISO currency was built in, a tenant could define
        # e.g. KRW with 2 decimals; its lots stay read at the scale they were granted in (the
        # reconciler reports such a unit against the ISO scale; DefineUnit refuses new ones).
        scale = await self._pool.fetchval(SELECT_UNIT, tenant_id, code)
        if scale is None:
            scale = BUILTIN_UNITS.get(code)
        if scale is None:
            raise invalid(field, f"unknown unit {code[:40]!r}; define it first")
        self._cache[(tenant_id, code)] = scale
        return int(scale)

    async def define(self, conn: asyncpg.Connection, tenant_id: str, code: str, scale: int) -> tuple[str, int]:
        existing = await conn.fetchval(SELECT_UNIT, tenant_id, code)
        builtin = BUILTIN_UNITS.get(code)
        if existing is None and builtin is not None and builtin != scale:
            raise conflict("code", f"unit {code!r} is built in with scale {builtin}")
        if existing is not None and existing != scale:
            raise conflict("code", f"unit {code!r} already exists with scale {existing}")
        await conn.execute(INSERT_UNIT, tenant_id, code, scale)
        return code, scale

    async def list(self, tenant_id: str) -> list[tuple[str, int]]:
        rows = await self._pool.fetch(SELECT_UNITS, tenant_id)
        defined = {r["code"]: r["scale"] for r in rows}
        return sorted({**BUILTIN_UNITS, **defined}.items())


async def get_account(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, account_id: str) -> AccountRow:
    row = await conn.fetchrow(SELECT_ACCOUNT, tenant_id, account_id)
    if row is None:
        raise not_found("account_id", f"account {account_id!r} not found")
    return AccountRow(**dict(row))


async def list_accounts(pool: asyncpg.Pool, tenant_id: str, parent_id: str, after_id: str,
                        limit: int) -> list[AccountRow]:
    """Up to `limit` accounts by id after `after_id` ("" = from the first): all, or `parent_id`'s children."""
    if parent_id and await pool.fetchrow(SELECT_ACCOUNT, tenant_id, parent_id) is None:
        raise not_found("parent_account_id", f"account {parent_id!r} not found")  # not an empty list
    rows = await pool.fetch(SELECT_ACCOUNTS, tenant_id, after_id, parent_id, limit)
    return [AccountRow(**dict(r)) for r in rows]


async def create_account(conn: asyncpg.Connection, tenant_id: str, account_id: str, parent_id: str,
                         name: str) -> AccountRow:
    root = account_id
    if parent_id:
        parent = await conn.fetchrow(SELECT_ACCOUNT, tenant_id, parent_id)
        if parent is None:
            raise not_found("parent_account_id", f"account {parent_id!r} not found")
        root = parent["root_account_id"]
    existing = await conn.fetchrow(SELECT_ACCOUNT, tenant_id, account_id)
    if existing is not None:
        raise conflict("account_id", f"account {account_id!r} already exists")
    row = await conn.fetchrow(INSERT_ACCOUNT, tenant_id, account_id, parent_id or None, root, name)
    return AccountRow(**dict(row))


@dataclass(frozen=True)
class PolicyRow:
    policy: Policy
    created_at: datetime | None


async def set_policy(conn: asyncpg.Connection, tenant_id: str, account_id: str, keys: list[SortKey],
                     type_order: list[LotType]) -> PolicyRow:
    if account_id:
        await get_account(conn, tenant_id, account_id)
    # Versions are per tenant; serialise writers so two never pick the same number.
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"policy/{tenant_id}")
    row = await conn.fetchrow(INSERT_POLICY, tenant_id, account_id, [k.value for k in keys],
                              [t.value for t in type_order])
    return PolicyRow(policy_from_row(row), row["created_at"])


async def get_policy(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, account_id: str) -> PolicyRow:
    if account_id:
        await get_account(conn, tenant_id, account_id)
    row = await conn.fetchrow(SELECT_POLICY, tenant_id, account_id)
    policy = policy_from_row(row)
    created = await conn.fetchval(SELECT_POLICY_CREATED, tenant_id, policy.version) if row else None
    return PolicyRow(policy, created)


async def set_transfer_limit(conn: asyncpg.Connection, tenant_id: str, account_id: str, unit: str,
                             max_per_transfer: int | None) -> None:
    await get_account(conn, tenant_id, account_id)
    await conn.execute(UPSERT_LIMIT, tenant_id, account_id, unit, max_per_transfer)


async def transfer_limit(conn: asyncpg.Connection, tenant_id: str, account_id: str, unit: str) -> int | None:
    value = await conn.fetchval(SELECT_LIMIT, tenant_id, account_id, unit)
    return int(value) if value is not None else None
