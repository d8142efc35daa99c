import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TopUpStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOP_UP_STATUS_UNSPECIFIED: _ClassVar[TopUpStatus]
    REQUESTED: _ClassVar[TopUpStatus]
    CHARGING: _ClassVar[TopUpStatus]
    AWAITING_PAYMENT: _ClassVar[TopUpStatus]
    GRANTED: _ClassVar[TopUpStatus]
    DECLINED: _ClassVar[TopUpStatus]
    CAPPED: _ClassVar[TopUpStatus]

class AlertKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALERT_KIND_UNSPECIFIED: _ClassVar[AlertKind]
    LOW_BALANCE: _ClassVar[AlertKind]
    DEPLETED: _ClassVar[AlertKind]
    EXPIRING: _ClassVar[AlertKind]
    USAGE_SPIKE: _ClassVar[AlertKind]
    LARGE_ADJUSTMENT: _ClassVar[AlertKind]
    COMPENSATORY_BURST: _ClassVar[AlertKind]

class DeliveryStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DELIVERY_STATUS_UNSPECIFIED: _ClassVar[DeliveryStatus]
    PENDING: _ClassVar[DeliveryStatus]
    DELIVERED: _ClassVar[DeliveryStatus]
    DEAD: _ClassVar[DeliveryStatus]
TOP_UP_STATUS_UNSPECIFIED: TopUpStatus
REQUESTED: TopUpStatus
CHARGING: TopUpStatus
AWAITING_PAYMENT: TopUpStatus
GRANTED: TopUpStatus
DECLINED: TopUpStatus
CAPPED: TopUpStatus
ALERT_KIND_UNSPECIFIED: AlertKind
LOW_BALANCE: AlertKind
DEPLETED: AlertKind
EXPIRING: AlertKind
USAGE_SPIKE: AlertKind
LARGE_ADJUSTMENT: AlertKind
COMPENSATORY_BURST: AlertKind
DELIVERY_STATUS_UNSPECIFIED: DeliveryStatus
PENDING: DeliveryStatus
DELIVERED: DeliveryStatus
DEAD: DeliveryStatus

class TopUpPolicy(_message.Message):
    __slots__ = ("account_id", "unit", "threshold", "amount", "target", "cost_basis", "payment_method", "max_daily", "max_monthly", "failure_limit", "enabled", "consecutive_failures", "disabled_reason")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    COST_BASIS_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_METHOD_FIELD_NUMBER: _ClassVar[int]
    MAX_DAILY_FIELD_NUMBER: _ClassVar[int]
    MAX_MONTHLY_FIELD_NUMBER: _ClassVar[int]
    FAILURE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    DISABLED_REASON_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    unit: str
    threshold: str
    amount: str
    target: str
    cost_basis: str
    payment_method: str
    max_daily: str
    max_monthly: str
    failure_limit: int
    enabled: bool
    consecutive_failures: int
    disabled_reason: str
    def __init__(self, account_id: _Optional[str] = ..., unit: _Optional[str] = ..., threshold: _Optional[str] = ..., amount: _Optional[str] = ..., target: _Optional[str] = ..., cost_basis: _Optional[str] = ..., payment_method: _Optional[str] = ..., max_daily: _Optional[str] = ..., max_monthly: _Optional[str] = ..., failure_limit: _Optional[int] = ..., enabled: _Optional[bool] = ..., consecutive_failures: _Optional[int] = ..., disabled_reason: _Optional[str] = ...) -> None: ...

class SetTopUpPolicyRequest(_message.Message):
    __slots__ = ("idempotency_key", "policy")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    policy: TopUpPolicy
    def __init__(self, idempotency_key: _Optional[str] = ..., policy: _Optional[_Union[TopUpPolicy, _Mapping]] = ...) -> None: ...

class GetTopUpPolicyRequest(_message.Message):
    __slots__ = ("account_id", "unit")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    unit: str
    def __init__(self, account_id: _Optional[str] = ..., unit: _Optional[str] = ...) -> None: ...

class TopUp(_message.Message):
    __slots__ = ("topup_id", "account_id", "unit", "crossing", "amount", "status", "charge_id", "lot_id", "attempts", "last_error", "created_at", "updated_at")
    TOPUP_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    CROSSING_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CHARGE_ID_FIELD_NUMBER: _ClassVar[int]
    LOT_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    topup_id: str
    account_id: str
    unit: str
    crossing: int
    amount: str
    status: TopUpStatus
    charge_id: str
    lot_id: str
    attempts: int
    last_error: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, topup_id: _Optional[str] = ..., account_id: _Optional[str] = ..., unit: _Optional[str] = ..., crossing: _Optional[int] = ..., amount: _Optional[str] = ..., status: _Optional[_Union[TopUpStatus, str]] = ..., charge_id: _Optional[str] = ..., lot_id: _Optional[str] = ..., attempts: _Optional[int] = ..., last_error: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListTopUpsRequest(_message.Message):
    __slots__ = ("account_id", "page_size", "page_token")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    page_size: int
    page_token: str
    def __init__(self, account_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTopUpsResponse(_message.Message):
    __slots__ = ("topups", "next_page_token")
    TOPUPS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    topups: _containers.RepeatedCompositeFieldContainer[TopUp]
    next_page_token: str
    def __init__(self, topups: _Optional[_Iterable[_Union[TopUp, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class AlertRule(_message.Message):
    __slots__ = ("rule_id", "account_id", "unit", "kind", "thresholds", "percent_thresholds", "amount", "within_days", "window_s", "factor", "trailing_windows", "count", "enabled", "created_at", "created_by")
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    PERCENT_THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    WITHIN_DAYS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    FACTOR_FIELD_NUMBER: _ClassVar[int]
    TRAILING_WINDOWS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    rule_id: str
    account_id: str
    unit: str
    kind: AlertKind
    thresholds: _containers.RepeatedScalarFieldContainer[str]
    percent_thresholds: _containers.RepeatedScalarFieldContainer[int]
    amount: str
    within_days: int
    window_s: int
    factor: str
    trailing_windows: int
    count: int
    enabled: bool
    created_at: _timestamp_pb2.Timestamp
    created_by: str
    def __init__(self, rule_id: _Optional[str] = ..., account_id: _Optional[str] = ..., unit: _Optional[str] = ..., kind: _Optional[_Union[AlertKind, str]] = ..., thresholds: _Optional[_Iterable[str]] = ..., percent_thresholds: _Optional[_Iterable[int]] = ..., amount: _Optional[str] = ..., within_days: _Optional[int] = ..., window_s: _Optional[int] = ..., factor: _Optional[str] = ..., trailing_windows: _Optional[int] = ..., count: _Optional[int] = ..., enabled: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_by: _Optional[str] = ...) -> None: ...

class CreateAlertRuleRequest(_message.Message):
    __slots__ = ("idempotency_key", "rule")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    rule: AlertRule
    def __init__(self, idempotency_key: _Optional[str] = ..., rule: _Optional[_Union[AlertRule, _Mapping]] = ...) -> None: ...

class ListAlertRulesRequest(_message.Message):
    __slots__ = ("account_id", "page_size", "page_token")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    page_size: int
    page_token: str
    def __init__(self, account_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAlertRulesResponse(_message.Message):
    __slots__ = ("rules", "next_page_token")
    RULES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    rules: _containers.RepeatedCompositeFieldContainer[AlertRule]
    next_page_token: str
    def __init__(self, rules: _Optional[_Iterable[_Union[AlertRule, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DisableAlertRuleRequest(_message.Message):
    __slots__ = ("idempotency_key", "rule_id")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    rule_id: str
    def __init__(self, idempotency_key: _Optional[str] = ..., rule_id: _Optional[str] = ...) -> None: ...

class AlertEvent(_message.Message):
    __slots__ = ("event_id", "event_type", "rule_id", "account_id", "subject", "crossing", "occurred_at", "payload_json")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    CROSSING_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    event_type: str
    rule_id: str
    account_id: str
    subject: str
    crossing: int
    occurred_at: _timestamp_pb2.Timestamp
    payload_json: str
    def __init__(self, event_id: _Optional[str] = ..., event_type: _Optional[str] = ..., rule_id: _Optional[str] = ..., account_id: _Optional[str] = ..., subject: _Optional[str] = ..., crossing: _Optional[int] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., payload_json: _Optional[str] = ...) -> None: ...

class ListAlertEventsRequest(_message.Message):
    __slots__ = ("account_id", "rule_id", "page_size", "page_token")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    rule_id: str
    page_size: int
    page_token: str
    def __init__(self, account_id: _Optional[str] = ..., rule_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAlertEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AlertEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[AlertEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WebhookEndpoint(_message.Message):
    __slots__ = ("endpoint_id", "url", "event_types", "allow_private_targets", "secret", "created_at", "active_secrets")
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PRIVATE_TARGETS_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SECRETS_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: str
    url: str
    event_types: _containers.RepeatedScalarFieldContainer[str]
    allow_private_targets: bool
    secret: str
    created_at: _timestamp_pb2.Timestamp
    active_secrets: int
    def __init__(self, endpoint_id: _Optional[str] = ..., url: _Optional[str] = ..., event_types: _Optional[_Iterable[str]] = ..., allow_private_targets: _Optional[bool] = ..., secret: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., active_secrets: _Optional[int] = ...) -> None: ...

class CreateWebhookEndpointRequest(_message.Message):
    __slots__ = ("idempotency_key", "endpoint_id", "url", "event_types", "allow_private_targets")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PRIVATE_TARGETS_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    endpoint_id: str
    url: str
    event_types: _containers.RepeatedScalarFieldContainer[str]
    allow_private_targets: bool
    def __init__(self, idempotency_key: _Optional[str] = ..., endpoint_id: _Optional[str] = ..., url: _Optional[str] = ..., event_types: _Optional[_Iterable[str]] = ..., allow_private_targets: _Optional[bool] = ...) -> None: ...

class ListWebhookEndpointsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListWebhookEndpointsResponse(_message.Message):
    __slots__ = ("endpoints", "next_page_token")
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[WebhookEndpoint]
    next_page_token: str
    def __init__(self, endpoints: _Optional[_Iterable[_Union[WebhookEndpoint, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RotateWebhookSecretRequest(_message.Message):
    __slots__ = ("idempotency_key", "endpoint_id", "overlap_s")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_S_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    endpoint_id: str
    overlap_s: int
    def __init__(self, idempotency_key: _Optional[str] = ..., endpoint_id: _Optional[str] = ..., overlap_s: _Optional[int] = ...) -> None: ...

class WebhookDelivery(_message.Message):
    __slots__ = ("delivery_id", "event_id", "endpoint_id", "event_type", "status", "attempts", "next_attempt_at", "last_http_status", "last_error", "created_at", "delivered_at")
    DELIVERY_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_HTTP_STATUS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_AT_FIELD_NUMBER: _ClassVar[int]
    delivery_id: str
    event_id: str
    endpoint_id: str
    event_type: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: _timestamp_pb2.Timestamp
    last_http_status: int
    last_error: str
    created_at: _timestamp_pb2.Timestamp
    delivered_at: _timestamp_pb2.Timestamp
    def __init__(self, delivery_id: _Optional[str] = ..., event_id: _Optional[str] = ..., endpoint_id: _Optional[str] = ..., event_type: _Optional[str] = ..., status: _Optional[_Union[DeliveryStatus, str]] = ..., attempts: _Optional[int] = ..., next_attempt_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_http_status: _Optional[int] = ..., last_error: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., delivered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListWebhookDeliveriesRequest(_message.Message):
    __slots__ = ("endpoint_id", "status", "page_size", "page_token")
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: str
    status: DeliveryStatus
    page_size: int
    page_token: str
    def __init__(self, endpoint_id: _Optional[str] = ..., status: _Optional[_Union[DeliveryStatus, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListWebhookDeliveriesResponse(_message.Message):
    __slots__ = ("deliveries", "next_page_token")
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    deliveries: _containers.RepeatedCompositeFieldContainer[WebhookDelivery]
    next_page_token: str
    def __init__(self, deliveries: _Optional[_Iterable[_Union[WebhookDelivery, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WebhookAttempt(_message.Message):
    __slots__ = ("delivery_id", "event_id", "endpoint_id", "attempt", "at", "http_status", "error", "duration_ms")
    DELIVERY_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    HTTP_STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    delivery_id: str
    event_id: str
    endpoint_id: str
    attempt: int
    at: _timestamp_pb2.Timestamp
    http_status: int
    error: str
    duration_ms: int
    def __init__(self, delivery_id: _Optional[str] = ..., event_id: _Optional[str] = ..., endpoint_id: _Optional[str] = ..., attempt: _Optional[int] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., http_status: _Optional[int] = ..., error: _Optional[str] = ..., duration_ms: _Optional[int] = ...) -> None: ...

class ListWebhookAttemptsRequest(_message.Message):
    __slots__ = ("endpoint_id", "delivery_id", "page_size", "page_token")
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: str
    delivery_id: str
    page_size: int
    page_token: str
    def __init__(self, endpoint_id: _Optional[str] = ..., delivery_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListWebhookAttemptsResponse(_message.Message):
    __slots__ = ("attempts", "next_page_token")
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    attempts: _containers.RepeatedCompositeFieldContainer[WebhookAttempt]
    next_page_token: str
    def __init__(self, attempts: _Optional[_Iterable[_Union[WebhookAttempt, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RedeliverWebhookRequest(_message.Message):
    __slots__ = ("idempotency_key", "delivery_id")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_ID_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    delivery_id: str
    def __init__(self, idempotency_key: _Optional[str] = ..., delivery_id: _Optional[str] = ...) -> None: ...
