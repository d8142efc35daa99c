"""Published conversion rates: append-only versions per (tenant, credit unit, currency)."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from service_runtime.rates import RateVersion

INSERT_RATE = """
INSERT INTO conversion_rates (tenant_id, unit, currency, version, rate, effective_at, published_by)
SELECT $1, $2, $3, COALESCE(max(version), 0) + 1, $4, $5, $6 FROM conversion_rates
WHERE tenant_id = $1 AND unit = $2 AND currency = $3
RETURNING unit, currency, version, rate, effective_at, created_at
"""
SELECT_RATES = """
SELECT unit, currency, version, rate, effective_at, created_at FROM conversion_rates
WHERE tenant_id = $1 AND ($2 = '' OR unit = $2) AND ($3 = '' OR currency = $3)
ORDER BY unit, currency, version
"""


def _rate(row: asyncpg.Record) -> tuple[RateVersion, datetime]:
    return (RateVersion(row["unit"], row["currency"], row["version"], row["rate"], row["effective_at"]),
            row["created_at"])


async def publish(conn: asyncpg.Connection, tenant_id: str, rate: RateVersion, actor: str) -> tuple[RateVersion,
                                                                                                       datetime]:
    """Records the next version of (unit, currency); versions are serialised per pair."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"rate/{tenant_id}/{rate.unit}/{rate.currency}")
    row = await conn.fetchrow(INSERT_RATE, tenant_id, rate.unit, rate.currency, rate.rate, rate.effective_at, actor)
    return _rate(row)


async def list_rates(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, unit: str,
                     currency: str) -> list[tuple[RateVersion, datetime]]:
    return [_rate(r) for r in await conn.fetch(SELECT_RATES, tenant_id, unit, currency)]
