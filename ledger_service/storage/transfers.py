"""Transfer rows, and locking both accounts of a transfer (the rules: `ledger_service.domain.transfers`).

Both accounts are locked in id order, so two opposite transfers cannot deadlock; the writer's
per-account batches take the same row locks, so they stay serial too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import asyncpg

from ledger_service.domain.transfers import Leg
from ledger_service.storage.state import AccountState, load_state
from service_runtime.rejections import not_found

INSERT_TRANSFER = """
INSERT INTO transfers (tenant_id, transfer_id, from_account_id, to_account_id, unit, amount, legs)
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)
"""
SELECT_TRANSFER = """
SELECT t.transfer_id, t.from_account_id, t.to_account_id, t.unit, t.amount, t.legs,
       (r.transfer_id IS NOT NULL) AS reversed
FROM transfers t LEFT JOIN transfer_reversals r USING (tenant_id, transfer_id)
WHERE t.tenant_id = $1 AND t.transfer_id = $2
"""
SELECT_TRANSFER_UNIT = "SELECT unit FROM transfers WHERE tenant_id = $1 AND transfer_id = $2"
INSERT_REVERSAL = "INSERT INTO transfer_reversals (tenant_id, transfer_id) VALUES ($1, $2)"


@dataclass(frozen=True)
class TransferRow:
    transfer_id: str
    from_account_id: str
    to_account_id: str
    unit: str
    legs: list[Leg]
    reversed: bool


async def lock_both(conn: asyncpg.Connection, tenant_id: str, src: str, dst: str,
                    lot_ids: dict[str, list[str]]) -> dict[str, AccountState]:
    """Both accounts' states under their row locks, in id order; NOT_FOUND names the missing side."""
    states = {}
    for account in sorted({src, dst}):
        st = await load_state(conn, tenant_id, account, hold_keys=(), lot_ids=lot_ids.get(account, []),
                              idempotency_keys=())
        if not st.exists:
            raise not_found("from_account_id" if account == src else "to_account_id", f"account {account!r} not found")
        states[account] = st
    return states


async def insert_transfer(conn: asyncpg.Connection, tenant_id: str, transfer_id: str, src: str, dst: str, unit: str,
                          amount: int, legs: list[Leg]) -> None:
    await conn.execute(INSERT_TRANSFER, tenant_id, transfer_id, src, dst, unit, amount,
                       json.dumps([leg.__dict__ for leg in legs]))


async def get_transfer(conn: asyncpg.Connection, tenant_id: str, transfer_id: str) -> TransferRow:
    row = await conn.fetchrow(SELECT_TRANSFER, tenant_id, transfer_id)
    if row is None:
        raise not_found("transfer_id", f"transfer {transfer_id!r} not found")
    return TransferRow(row["transfer_id"], row["from_account_id"], row["to_account_id"], row["unit"],
                       [Leg(**leg) for leg in json.loads(row["legs"])], row["reversed"])


async def transfer_unit(pool: asyncpg.Pool, tenant_id: str, transfer_id: str) -> str:
    unit = await pool.fetchval(SELECT_TRANSFER_UNIT, tenant_id, transfer_id)
    if unit is None:
        raise not_found("transfer_id", f"transfer {transfer_id!r} not found")
    return str(unit)


async def insert_reversal(conn: asyncpg.Connection, tenant_id: str, transfer_id: str) -> None:
    await conn.execute(INSERT_REVERSAL, tenant_id, transfer_id)
