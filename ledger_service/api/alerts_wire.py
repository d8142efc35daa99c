"""protobuf <-> the alerts operations (credits.alerts.v1): unpack requests, pack responses."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from credits.alerts.v1 import alerts_pb2 as pb

from ledger_service.domain.alerts import AlertKind, AlertRule
from ledger_service.domain.topups import TopUpPolicy, TopUpStatus
from ledger_service.domain.webhooks import check_url
from ledger_service.operations.alerts import RuleOrder, TopUpOrder, check_event_types
from ledger_service.storage.alerts import Attempt, Delivery, Endpoint, StoredEvent
from ledger_service.storage.topups import TopUpRecord
from service_runtime.amounts import format_minor, parse_decimal
from service_runtime.free_text import check_text
from service_runtime.identifiers import check_id
from service_runtime.pages import decode_int_token, decode_time_token, decode_token, page_size
from service_runtime.proto_time import to_timestamp
from service_runtime.rejections import invalid

KINDS = {pb.LOW_BALANCE: AlertKind.LOW_BALANCE, pb.DEPLETED: AlertKind.DEPLETED, pb.EXPIRING: AlertKind.EXPIRING,
         pb.USAGE_SPIKE: AlertKind.USAGE_SPIKE, pb.LARGE_ADJUSTMENT: AlertKind.LARGE_ADJUSTMENT,
         pb.COMPENSATORY_BURST: AlertKind.COMPENSATORY_BURST}
KIND_PB = {v: k for k, v in KINDS.items()}
STATUSES = {pb.PENDING: "PENDING", pb.DELIVERED: "DELIVERED", pb.DEAD: "DEAD"}
STATUS_PB = {v: k for k, v in STATUSES.items()}
MAX_FACTOR_LEN = 20
_FACTOR = re.compile(r"\d+(\.\d+)?")


# --- requests -------------------------------------------------------------------------------------

def rule_order(request: pb.CreateAlertRuleRequest) -> RuleOrder:
    r = request.rule
    kind = KINDS.get(r.kind)
    if kind is None:
        raise invalid("rule.kind", "must be one of " + ", ".join(k.value for k in AlertKind))
    factor = r.factor.strip()
    if factor and (len(factor) > MAX_FACTOR_LEN or not _FACTOR.fullmatch(factor)):
        raise invalid("rule.factor", "must be a decimal like 10 or 2.5")
    rule = AlertRule(
        rule_id=check_id(r.rule_id, "rule.rule_id"), account_id=check_id(r.account_id, "rule.account_id",
                                                                         required=False),
        unit=check_id(r.unit, "rule.unit"), scale=0, kind=kind, percent_thresholds=tuple(r.percent_thresholds),
        within_days=r.within_days, window_s=r.window_s, factor=factor, trailing_windows=r.trailing_windows,
        count=r.count,
    )
    return RuleOrder(rule, tuple(r.thresholds), r.amount.strip())


def page(request: pb.ListAlertRulesRequest | pb.ListWebhookEndpointsRequest) -> tuple[str, int]:
    cursor = decode_token(request.page_token, 1)
    return (cursor[0] if cursor else ""), page_size(request.page_size)


def event_page(request: pb.ListAlertEventsRequest) -> tuple[str, str, int, int]:
    return (check_id(request.account_id, "account_id", required=False),
            check_id(request.rule_id, "rule_id", required=False),
            decode_int_token(request.page_token), page_size(request.page_size))


def endpoint(request: pb.CreateWebhookEndpointRequest) -> Endpoint:
    return Endpoint(check_id(request.endpoint_id, "endpoint_id"), check_url(request.url),
                    check_event_types(list(request.event_types)), request.allow_private_targets,
                    datetime.now(UTC), 0)


def delivery_page(request: pb.ListWebhookDeliveriesRequest) -> tuple[str, str, tuple[datetime, str], int]:
    endpoint_id = check_id(request.endpoint_id, "endpoint_id")
    status = "" if request.status == pb.DELIVERY_STATUS_UNSPECIFIED else STATUSES.get(request.status)
    if status is None:
        raise invalid("status", "must be PENDING, DELIVERED or DEAD")
    after = decode_time_token(request.page_token)
    return endpoint_id, status, after, page_size(request.page_size)


def attempt_page(request: pb.ListWebhookAttemptsRequest) -> tuple[str, str, tuple[datetime, str, int], int]:
    endpoint_id = check_id(request.endpoint_id, "endpoint_id")
    event_id = ""
    if request.delivery_id:
        event_id, of_endpoint = delivery_id(request.delivery_id)
        if of_endpoint != endpoint_id:
            raise invalid("delivery_id", f"is a delivery to {of_endpoint!r}, not to endpoint_id {endpoint_id!r}")
    cursor = decode_token(request.page_token, 3)
    after = (datetime.min.replace(tzinfo=UTC), "", 0)
    if cursor:
        try:
            after = (datetime.fromisoformat(cursor[0]), cursor[1], int(cursor[2]))
        except ValueError:
            raise invalid("page_token", "is not a page token this service issued") from None
    return endpoint_id, event_id, after, page_size(request.page_size)


def delivery_id(value: str) -> tuple[str, str]:
    """`event_id@endpoint_id` -> (event_id, endpoint_id)."""
    event_id, at, endpoint_id = value.rpartition("@")
    if not at or not event_id or len(value) > 600 or not value.isprintable():
        raise invalid("delivery_id", "must be <event_id>@<endpoint_id> as ListWebhookDeliveries shows it")
    return event_id, check_id(endpoint_id, "delivery_id")


def topup_order(request: pb.SetTopUpPolicyRequest) -> TopUpOrder:
    p = request.policy
    return TopUpOrder(
        account_id=check_id(p.account_id, "policy.account_id"), unit=check_id(p.unit, "policy.unit"),
        threshold=p.threshold.strip(), amount=p.amount.strip(), target=p.target.strip(),
        cost_basis=parse_decimal(p.cost_basis or "1", "policy.cost_basis"),
        payment_method=check_text(p.payment_method, "policy.payment_method", 200),
        max_daily=p.max_daily.strip(), max_monthly=p.max_monthly.strip(), failure_limit=p.failure_limit,
        enabled=p.enabled,
    )


def topup_page(request: pb.ListTopUpsRequest) -> tuple[str, tuple[datetime, str], int]:
    account_id = check_id(request.account_id, "account_id")
    after = decode_time_token(request.page_token)
    return account_id, after, page_size(request.page_size)


# --- responses ------------------------------------------------------------------------------------

def rule(r: AlertRule) -> pb.AlertRule:
    return pb.AlertRule(
        rule_id=r.rule_id, account_id=r.account_id, unit=r.unit, kind=KIND_PB[r.kind],
        thresholds=[format_minor(t, r.scale) for t in r.thresholds], percent_thresholds=list(r.percent_thresholds),
        amount=format_minor(r.amount, r.scale) if r.amount else "", within_days=r.within_days, window_s=r.window_s,
        factor=r.factor, trailing_windows=r.trailing_windows, count=r.count, enabled=r.enabled,
        created_at=to_timestamp(r.created_at) if r.created_at else None, created_by=r.created_by,
    )


def event(e: StoredEvent) -> pb.AlertEvent:
    return pb.AlertEvent(event_id=e.event_id, event_type=e.event_type, rule_id=e.rule_id, account_id=e.account_id,
                         subject=e.subject, crossing=e.crossing, occurred_at=to_timestamp(e.occurred_at),
                         payload_json=e.payload)


def webhook_endpoint(e: Endpoint) -> pb.WebhookEndpoint:
    return pb.WebhookEndpoint(endpoint_id=e.endpoint_id, url=e.url, event_types=e.event_types,
                              allow_private_targets=e.allow_private, secret=e.secret,
                              created_at=to_timestamp(e.created_at), active_secrets=e.active_secrets)


def delivery(d: Delivery) -> pb.WebhookDelivery:
    return pb.WebhookDelivery(
        delivery_id=f"{d.event_id}@{d.endpoint_id}", event_id=d.event_id, endpoint_id=d.endpoint_id,
        event_type=d.event_type, status=STATUS_PB[d.status], attempts=d.attempts,
        next_attempt_at=to_timestamp(d.next_attempt_at), last_http_status=d.last_http_status,
        last_error=d.last_error, created_at=to_timestamp(d.created_at),
        delivered_at=to_timestamp(d.delivered_at) if d.delivered_at else None,
    )


def attempt(a: Attempt) -> pb.WebhookAttempt:
    return pb.WebhookAttempt(delivery_id=f"{a.event_id}@{a.endpoint_id}", event_id=a.event_id,
                             endpoint_id=a.endpoint_id, attempt=a.attempt, at=to_timestamp(a.at),
                             http_status=a.http_status, error=a.error, duration_ms=a.duration_ms)


TOPUP_STATUS_PB = {TopUpStatus.REQUESTED: pb.REQUESTED, TopUpStatus.CHARGING: pb.CHARGING,
                   TopUpStatus.AWAITING_PAYMENT: pb.AWAITING_PAYMENT, TopUpStatus.GRANTED: pb.GRANTED,
                   TopUpStatus.DECLINED: pb.DECLINED, TopUpStatus.CAPPED: pb.CAPPED}


def topup_policy(p: TopUpPolicy) -> pb.TopUpPolicy:
    def amount(v: int | None) -> str:
        return format_minor(v, p.scale) if v else ""

    return pb.TopUpPolicy(
        account_id=p.account_id, unit=p.unit, threshold=amount(p.threshold), amount=amount(p.amount),
        target=amount(p.target), cost_basis=str(p.cost_basis), payment_method=p.payment_method,
        max_daily=amount(p.max_daily), max_monthly=amount(p.max_monthly), failure_limit=p.failure_limit,
        enabled=p.disabled_at is None, consecutive_failures=p.consecutive_failures, disabled_reason=p.disabled_reason,
    )


def topup(t: TopUpRecord) -> pb.TopUp:
    return pb.TopUp(topup_id=t.topup_id, account_id=t.account_id, unit=t.unit, crossing=t.crossing,
                    amount=format_minor(t.amount, t.scale), status=TOPUP_STATUS_PB[t.status], charge_id=t.charge_id,
                    lot_id=t.lot_id, attempts=t.attempts, last_error=t.last_error,
                    created_at=to_timestamp(t.created_at), updated_at=to_timestamp(t.updated_at))
