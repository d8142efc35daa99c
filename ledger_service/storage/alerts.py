"""Alert rules, alert events, webhook endpoints and their delivery log: SQL in, records out.

The evaluation that writes events (in the ledger change's transaction) is `alert_watch.py`; the
delivery loop's queries (`claim_due`, `record_attempt`) run on the owner pool across tenants.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from ledger_service.domain.alerts import AlertRule
from ledger_service.storage.alert_watch import rule_from_row
from service_runtime.rejections import conflict, not_found, precondition

RULE_COLUMNS = "rule_id, account_id, unit, scale, kind, params, created_by, created_at, disabled_at"
INSERT_RULE = f"""
INSERT INTO alert_rules (tenant_id, rule_id, account_id, unit, scale, kind, params, created_by, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9) ON CONFLICT DO NOTHING RETURNING {RULE_COLUMNS}
"""
SELECT_RULE = f"SELECT {RULE_COLUMNS} FROM alert_rules WHERE tenant_id = $1 AND rule_id = $2"
SELECT_RULES = f"""
SELECT {RULE_COLUMNS} FROM alert_rules
WHERE tenant_id = $1 AND ($2 = '' OR account_id = $2) AND rule_id > $3 ORDER BY rule_id LIMIT $4
"""
DISABLE_RULE = f"""
UPDATE alert_rules SET disabled_at = coalesce(disabled_at, $3) WHERE tenant_id = $1 AND rule_id = $2
RETURNING {RULE_COLUMNS}
"""
EVENT_COLUMNS = "seq, event_id, event_type, rule_id, account_id, subject, crossing, payload, occurred_at"
SELECT_EVENTS = f"""
SELECT {EVENT_COLUMNS} FROM alert_events
WHERE tenant_id = $1 AND ($2 = '' OR account_id = $2) AND ($3 = '' OR rule_id = $3) AND seq > $4
ORDER BY seq LIMIT $5
"""
ENDPOINT_COLUMNS = """e.endpoint_id, e.url, e.event_types, e.allow_private, e.created_at,
(SELECT count(*) FROM webhook_secrets s WHERE s.tenant_id = e.tenant_id AND s.endpoint_id = e.endpoint_id
   AND (s.expires_at IS NULL OR s.expires_at > $2))::int AS active_secrets"""
INSERT_ENDPOINT = """
INSERT INTO webhook_endpoints (tenant_id, endpoint_id, url, event_types, allow_private, created_by, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING endpoint_id
"""
INSERT_SECRET = """
INSERT INTO webhook_secrets (tenant_id, endpoint_id, version, secret, created_at)
SELECT $1, $2, coalesce(max(version), 0) + 1, $3, $4 FROM webhook_secrets WHERE tenant_id = $1 AND endpoint_id = $2
"""
EXPIRE_SECRETS = """
UPDATE webhook_secrets SET expires_at = $3
WHERE tenant_id = $1 AND endpoint_id = $2 AND (expires_at IS NULL OR expires_at > $3)
"""
SELECT_ENDPOINT = f"""
SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints e WHERE e.tenant_id = $1 AND e.endpoint_id = $3
"""
SELECT_ENDPOINTS = f"""
SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints e WHERE e.tenant_id = $1 AND e.endpoint_id > $3
ORDER BY e.endpoint_id LIMIT $4
"""
DELIVERY_COLUMNS = """event_id, endpoint_id, event_type, status, attempts, next_attempt_at, last_http_status,
last_error,
created_at, delivered_at"""
SELECT_DELIVERIES = f"""
SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
WHERE tenant_id = $1 AND endpoint_id = $2 AND ($3 = '' OR status = $3) AND (created_at, event_id) > ($4, $5)
ORDER BY created_at, event_id LIMIT $6
"""
SELECT_ATTEMPTS = """
SELECT event_id, endpoint_id, attempt, at, http_status, error, duration_ms FROM webhook_attempts
WHERE tenant_id = $1 AND endpoint_id = $2 AND ($3 = '' OR event_id = $3) AND (at, event_id, attempt) > ($4, $5, $6)
ORDER BY at, event_id, attempt LIMIT $7
"""
REQUEUE = f"""
UPDATE webhook_deliveries SET status = 'PENDING', attempts = 0, next_attempt_at = $4
WHERE tenant_id = $1 AND event_id = $2 AND endpoint_id = $3 RETURNING {DELIVERY_COLUMNS}
"""
SELECT_DELIVERY = f"""
SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE tenant_id = $1 AND event_id = $2 AND endpoint_id = $3
"""


@dataclass
class StoredEvent:
    seq: int
    event_id: str
    event_type: str
    rule_id: str
    account_id: str
    subject: str
    crossing: int
    payload: str
    occurred_at: datetime


@dataclass
class Endpoint:
    endpoint_id: str
    url: str
    event_types: list[str]
    allow_private: bool
    created_at: datetime
    active_secrets: int
    secret: str = ""


@dataclass
class Delivery:
    event_id: str
    endpoint_id: str
    event_type: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_http_status: int
    last_error: str
    created_at: datetime
    delivered_at: datetime | None


def _rule(r: asyncpg.Record) -> AlertRule:
    return rule_from_row(dict(r))


async def insert_rule(conn: asyncpg.Connection, tenant_id: str, rule: AlertRule, actor: str,
                      now: datetime) -> AlertRule:
    row = await conn.fetchrow(INSERT_RULE, tenant_id, rule.rule_id, rule.account_id, rule.unit, rule.scale,
                              rule.kind.value, json.dumps(rule.params()), actor, now)
    if row is None:
        raise conflict("rule.rule_id", f"alert rule {rule.rule_id!r} already exists")
    return _rule(row)


async def disable_rule(conn: asyncpg.Connection, tenant_id: str, rule_id: str, now: datetime) -> AlertRule:
    row = await conn.fetchrow(DISABLE_RULE, tenant_id, rule_id, now)
    if row is None:
        raise not_found("rule_id", f"alert rule {rule_id!r} not found")
    return _rule(row)


async def list_rules(pool: asyncpg.Pool, tenant_id: str, account_id: str, after: str, limit: int) -> list[AlertRule]:
    return [_rule(r) for r in await pool.fetch(SELECT_RULES, tenant_id, account_id, after, limit)]


async def list_events(pool: asyncpg.Pool, tenant_id: str, account_id: str, rule_id: str, after_seq: int,
                      limit: int) -> list[StoredEvent]:
    rows = await pool.fetch(SELECT_EVENTS, tenant_id, account_id, rule_id, after_seq, limit)
    return [StoredEvent(**dict(r)) for r in rows]


async def insert_endpoint(conn: asyncpg.Connection, tenant_id: str, endpoint: Endpoint, secret: str, actor: str,
                          now: datetime) -> Endpoint:
    made = await conn.fetchval(INSERT_ENDPOINT, tenant_id, endpoint.endpoint_id, endpoint.url, endpoint.event_types,
                               endpoint.allow_private, actor, now)
    if made is None:
        raise conflict("endpoint_id", f"webhook endpoint {endpoint.endpoint_id!r} already exists")
    await conn.execute(INSERT_SECRET, tenant_id, endpoint.endpoint_id, secret, now)
    return await get_endpoint(conn, tenant_id, endpoint.endpoint_id, now, secret)


async def rotate_secret(conn: asyncpg.Connection, tenant_id: str, endpoint_id: str, secret: str, now: datetime,
                        overlap_s: int) -> Endpoint:
    await get_endpoint(conn, tenant_id, endpoint_id, now)
    await conn.execute(EXPIRE_SECRETS, tenant_id, endpoint_id, now + timedelta(seconds=overlap_s))
    await conn.execute(INSERT_SECRET, tenant_id, endpoint_id, secret, now)
    return await get_endpoint(conn, tenant_id, endpoint_id, now, secret)


async def get_endpoint(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, endpoint_id: str, now: datetime,
                       secret: str = "") -> Endpoint:
    row = await conn.fetchrow(SELECT_ENDPOINT, tenant_id, now, endpoint_id)
    if row is None:
        raise not_found("endpoint_id", f"webhook endpoint {endpoint_id!r} not found")
    return Endpoint(**dict(row), secret=secret)


async def list_endpoints(pool: asyncpg.Pool, tenant_id: str, now: datetime, after: str, limit: int) -> list[Endpoint]:
    return [Endpoint(**dict(r)) for r in await pool.fetch(SELECT_ENDPOINTS, tenant_id, now, after, limit)]


async def list_deliveries(pool: asyncpg.Pool, tenant_id: str, endpoint_id: str, status: str,
                          after: tuple[datetime, str], limit: int, now: datetime) -> list[Delivery]:
    await get_endpoint(pool, tenant_id, endpoint_id, now)
    rows = await pool.fetch(SELECT_DELIVERIES, tenant_id, endpoint_id, status, after[0], after[1], limit)
    return [Delivery(**dict(r)) for r in rows]


@dataclass(frozen=True)
class Attempt:
    event_id: str
    endpoint_id: str
    attempt: int
    at: datetime
    http_status: int
    error: str
    duration_ms: int


async def list_attempts(pool: asyncpg.Pool, tenant_id: str, endpoint_id: str, event_id: str,
                        after: tuple[datetime, str, int], limit: int, now: datetime) -> list[Attempt]:
    await get_endpoint(pool, tenant_id, endpoint_id, now)
    rows = await pool.fetch(SELECT_ATTEMPTS, tenant_id, endpoint_id, event_id, *after, limit)
    return [Attempt(**dict(r)) for r in rows]


async def requeue(conn: asyncpg.Connection, tenant_id: str, event_id: str, endpoint_id: str,
                  now: datetime) -> Delivery:
    row = await conn.fetchrow(SELECT_DELIVERY, tenant_id, event_id, endpoint_id)
    if row is None:
        raise not_found("delivery_id", f"delivery {event_id}@{endpoint_id} not found")
    if row["status"] == "PENDING":
        raise precondition("delivery_id", "the delivery is still pending: it is retried on its own")
    row = await conn.fetchrow(REQUEUE, tenant_id, event_id, endpoint_id, now)
    await conn.execute("SELECT pg_notify('credits_webhooks', '')")
    return Delivery(**dict(row))
