"""Alerts and webhooks: CreateAlertRule, ListAlertRules, DisableAlertRule, ListAlertEvents,
CreateWebhookEndpoint, ListWebhookEndpoints, RotateWebhookSecret, ListWebhookDeliveries, RedeliverWebhook,
SetTopUpPolicy, GetTopUpPolicy, ListTopUps.

Rules are evaluated by `storage/alert_watch.py` in every ledger change's transaction; events are
delivered by `ledger_service/webhooks/dispatcher.py`. Every mutation here is idempotent by its key
(`once`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import TypeVar

import asyncpg
from google.protobuf.message import Message

from ledger_service.domain.alerts import EVENT_TYPES, AlertRule, check_rule
from ledger_service.domain.topups import DEFAULT_FAILURE_LIMIT, TopUpPolicy, check_policy
from ledger_service.domain.webhooks import check_target, new_secret
from ledger_service.operations.calls import Call, once
from ledger_service.operations.context import Ledger
from ledger_service.storage import alerts as storage
from ledger_service.storage import catalog
from ledger_service.storage import topups as topup_storage
from ledger_service.storage.alerts import Delivery, Endpoint, StoredEvent
from ledger_service.storage.topups import TopUpRecord
from service_runtime.amounts import parse_minor
from service_runtime.currencies import is_currency
from service_runtime.pages import encode_token
from service_runtime.rejections import invalid

M = TypeVar("M", bound=Message)
T = TypeVar("T")
DEFAULT_OVERLAP_S = 86400
MAX_OVERLAP_S = 30 * 86400


@dataclass(frozen=True)
class RuleOrder:
    """A rule as CreateAlertRule asks for it: amounts still text, waiting for the unit's scale."""

    rule: AlertRule
    thresholds: tuple[str, ...]
    amount: str


async def create_alert_rule(ledger: Ledger, call: Call[M], order: RuleOrder, pack: Callable[[AlertRule], M]) -> M:
    scale = await ledger.scale(call.tenant_id, order.rule.unit, "rule.unit")
    thresholds = tuple(parse_minor(t, scale, f"rule.thresholds[{i}]") for i, t in enumerate(order.thresholds))
    amount = parse_minor(order.amount, scale, "rule.amount") if order.amount else 0
    rule = check_rule(replace(order.rule, scale=scale, thresholds=thresholds, amount=amount))

    async def work(conn: asyncpg.Connection) -> AlertRule:
        if rule.account_id:
            await catalog.get_account(conn, call.tenant_id, rule.account_id)
        return await storage.insert_rule(conn, call.tenant_id, rule, call.actor, ledger.now())

    return await once(ledger, call, work, pack)


async def disable_alert_rule(ledger: Ledger, call: Call[M], rule_id: str, pack: Callable[[AlertRule], M]) -> M:
    async def work(conn: asyncpg.Connection) -> AlertRule:
        return await storage.disable_rule(conn, call.tenant_id, rule_id, ledger.now())

    return await once(ledger, call, work, pack)


async def list_alert_rules(ledger: Ledger, tenant_id: str, account_id: str, after: str, limit: int,
                           pack: Callable[[AlertRule], T]) -> tuple[list[T], str]:
    rules = await storage.list_rules(ledger.pool, tenant_id, account_id, after, limit)
    return [pack(r) for r in rules], encode_token(rules[-1].rule_id) if len(rules) == limit else ""


async def list_alert_events(ledger: Ledger, tenant_id: str, account_id: str, rule_id: str, after_seq: int,
                            limit: int, pack: Callable[[StoredEvent], T]) -> tuple[list[T], str]:
    events = await storage.list_events(ledger.pool, tenant_id, account_id, rule_id, after_seq, limit)
    return [pack(e) for e in events], encode_token(events[-1].seq) if len(events) == limit else ""


def check_event_types(types: list[str]) -> list[str]:
    for i, t in enumerate(types):
        if t not in EVENT_TYPES:
            raise invalid(f"event_types[{i}]", f"unknown event type {t[:40]!r} (one of {', '.join(EVENT_TYPES)})")
    return sorted(set(types))


async def create_webhook_endpoint(ledger: Ledger, call: Call[M], endpoint: Endpoint,
                                  pack: Callable[[Endpoint], M]) -> M:
    check_target(endpoint.url, endpoint.allow_private)

    async def work(conn: asyncpg.Connection) -> Endpoint:
        return await storage.insert_endpoint(conn, call.tenant_id, endpoint, new_secret(), call.actor, ledger.now())

    return await once(ledger, call, work, pack)


async def rotate_webhook_secret(ledger: Ledger, call: Call[M], endpoint_id: str, overlap_s: int,
                                pack: Callable[[Endpoint], M]) -> M:
    if not 0 <= overlap_s <= MAX_OVERLAP_S:
        raise invalid("overlap_s", f"must be between 0 and {MAX_OVERLAP_S} seconds")

    async def work(conn: asyncpg.Connection) -> Endpoint:
        return await storage.rotate_secret(conn, call.tenant_id, endpoint_id, new_secret(), ledger.now(),
                                           overlap_s or DEFAULT_OVERLAP_S)

    return await once(ledger, call, work, pack)


async def list_webhook_endpoints(ledger: Ledger, tenant_id: str, after: str, limit: int,
                                 pack: Callable[[Endpoint], T]) -> tuple[list[T], str]:
    found = await storage.list_endpoints(ledger.pool, tenant_id, ledger.now(), after, limit)
    return [pack(e) for e in found], encode_token(found[-1].endpoint_id) if len(found) == limit else ""


async def list_webhook_deliveries(ledger: Ledger, tenant_id: str, endpoint_id: str, status: str,
                                  after: tuple[datetime, str], limit: int,
                                  pack: Callable[[Delivery], T]) -> tuple[list[T], str]:
    found = await storage.list_deliveries(ledger.pool, tenant_id, endpoint_id, status, after, limit, ledger.now())
    token = encode_token(found[-1].created_at.isoformat(), found[-1].event_id) if len(found) == limit else ""
    return [pack(d) for d in found], token


async def list_webhook_attempts(ledger: Ledger, tenant_id: str, endpoint_id: str, event_id: str,
                                after: tuple[datetime, str, int], limit: int,
                                pack: Callable[[storage.Attempt], T]) -> tuple[list[T], str]:
    found = await storage.list_attempts(ledger.pool, tenant_id, endpoint_id, event_id, after, limit, ledger.now())
    last = found[-1] if len(found) == limit else None
    token = encode_token(last.at.isoformat(), last.event_id, str(last.attempt)) if last else ""
    return [pack(a) for a in found], token


async def redeliver_webhook(ledger: Ledger, call: Call[M], event_id: str, endpoint_id: str,
                            pack: Callable[[Delivery], M]) -> M:
    async def work(conn: asyncpg.Connection) -> Delivery:
        return await storage.requeue(conn, call.tenant_id, event_id, endpoint_id, ledger.now())

    return await once(ledger, call, work, pack)


# --- auto top-up ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TopUpOrder:
    """SetTopUpPolicy's policy with its amounts still text (they wait for the unit's scale)."""

    account_id: str
    unit: str
    threshold: str
    amount: str
    target: str
    cost_basis: Decimal
    payment_method: str
    max_daily: str
    max_monthly: str
    failure_limit: int
    enabled: bool


def _minor(text: str, scale: int, field: str) -> int:
    return parse_minor(text, scale, field) if text else 0


async def set_topup_policy(ledger: Ledger, call: Call[M], order: TopUpOrder, pack: Callable[[TopUpPolicy], M]) -> M:
    if not is_currency(order.unit):
        raise invalid("policy.unit", "must be a currency: a top-up charges a card in it")
    scale = await ledger.scale(call.tenant_id, order.unit, "policy.unit")
    policy = check_policy(TopUpPolicy(
        account_id=order.account_id, unit=order.unit, scale=scale,
        threshold=_minor(order.threshold, scale, "policy.threshold"),
        amount=_minor(order.amount, scale, "policy.amount"),
        target=_minor(order.target, scale, "policy.target"), cost_basis=order.cost_basis,
        payment_method=order.payment_method,
        max_daily=_minor(order.max_daily, scale, "policy.max_daily") if order.max_daily else None,
        max_monthly=_minor(order.max_monthly, scale, "policy.max_monthly") if order.max_monthly else None,
        failure_limit=order.failure_limit or DEFAULT_FAILURE_LIMIT,
    ))

    async def work(conn: asyncpg.Connection) -> TopUpPolicy:
        await catalog.get_account(conn, call.tenant_id, policy.account_id)
        return await topup_storage.set_policy(conn, call.tenant_id, policy, order.enabled, call.actor, ledger.now())

    return await once(ledger, call, work, pack)


async def get_topup_policy(ledger: Ledger, tenant_id: str, account_id: str, unit: str,
                           pack: Callable[[TopUpPolicy], T]) -> T:
    return pack(await topup_storage.get_policy(ledger.pool, tenant_id, account_id, unit))


async def list_topups(ledger: Ledger, tenant_id: str, account_id: str, after: tuple[datetime, str], limit: int,
                      pack: Callable[[TopUpRecord], T]) -> tuple[list[T], str]:
    found = await topup_storage.list_topups(ledger.pool, tenant_id, account_id, after, limit)
    token = encode_token(found[-1].created_at.isoformat(), found[-1].topup_id) if len(found) == limit else ""
    return [pack(t) for t in found], token
