"""Ledger test support: builders for requests (charges, timestamps) and checks of outcomes (statuses, row counts)."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import grpc
import pytest
from credits.ledger.v1 import ledger_pb2 as pb
from google.protobuf.timestamp_pb2 import Timestamp


def ts(value: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(value.astimezone(UTC))
    return out


def at(text: str) -> Timestamp:
    return ts(datetime.fromisoformat(text).replace(tzinfo=UTC))


def charge(amount: str, *, charge_id: str = "", kind: int = pb.USAGE, name: str = "",
           start: str | None = None, end: str | None = None) -> pb.Charge:
    c = pb.Charge(charge_id=charge_id, kind=kind, name=name, amount=amount)
    if start:
        c.service_start.CopyFrom(at(start))
    if end:
        c.service_end.CopyFrom(at(end))
    return c


async def rejected(call: object, code: grpc.StatusCode, *needles: str) -> str:
    """Awaits `call`, asserts it fails with `code` and a message mentioning each needle."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    err = info.value
    assert err.code() == code, f"{err.code()} {err.details()}"
    for needle in needles:
        assert needle in (err.details() or ""), err.details()
    return err.details() or ""


async def journal_count(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM journal"))
    finally:
        await conn.close()


async def table_counts(dsn: str) -> dict[str, int]:
    """Row counts of every ledger table: 'nothing written' means these do not change."""
    tables = ["journal", "lots", "lot_balances", "holds", "hold_allocations", "hold_resolutions",
              "hold_postings", "hold_reversals", "debits", "transfers", "accounts", "idempotency_keys",
              "consumption_policies", "transfer_limits", "lot_grace"]
    conn = await asyncpg.connect(dsn)
    try:
        return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in tables}
    finally:
        await conn.close()
