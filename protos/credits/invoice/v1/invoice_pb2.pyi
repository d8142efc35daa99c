import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChargeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHARGE_KIND_UNSPECIFIED: _ClassVar[ChargeKind]
    USAGE: _ClassVar[ChargeKind]
    ADD_ON: _ClassVar[ChargeKind]
    FIXED_FEE: _ClassVar[ChargeKind]
    LICENSE: _ClassVar[ChargeKind]

class Aggregation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGGREGATION_UNSPECIFIED: _ClassVar[Aggregation]
    SUM: _ClassVar[Aggregation]
    COUNT: _ClassVar[Aggregation]
    MAX: _ClassVar[Aggregation]
    UNIQUE_COUNT: _ClassVar[Aggregation]

class PriceModel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRICE_MODEL_UNSPECIFIED: _ClassVar[PriceModel]
    FLAT: _ClassVar[PriceModel]
    PER_UNIT: _ClassVar[PriceModel]
    PACKAGE: _ClassVar[PriceModel]
    GRADUATED: _ClassVar[PriceModel]
    VOLUME: _ClassVar[PriceModel]

class BillingInterval(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BILLING_INTERVAL_UNSPECIFIED: _ClassVar[BillingInterval]
    MONTHLY: _ClassVar[BillingInterval]
    QUARTERLY: _ClassVar[BillingInterval]
    YEARLY: _ClassVar[BillingInterval]

class InvoiceStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INVOICE_STATUS_UNSPECIFIED: _ClassVar[InvoiceStatus]
    DRAFT: _ClassVar[InvoiceStatus]
    PREPARED: _ClassVar[InvoiceStatus]
    FINALIZED: _ClassVar[InvoiceStatus]
    VOID_PENDING: _ClassVar[InvoiceStatus]
    VOIDED: _ClassVar[InvoiceStatus]
    ABANDONED: _ClassVar[InvoiceStatus]

class IngestStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INGEST_STATUS_UNSPECIFIED: _ClassVar[IngestStatus]
    ACCEPTED: _ClassVar[IngestStatus]
    DUPLICATE: _ClassVar[IngestStatus]

class InvoiceExportFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INVOICE_EXPORT_FORMAT_UNSPECIFIED: _ClassVar[InvoiceExportFormat]
    INVOICE_EXPORT_CSV: _ClassVar[InvoiceExportFormat]
    INVOICE_EXPORT_JSON: _ClassVar[InvoiceExportFormat]

class RenderFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RENDER_FORMAT_UNSPECIFIED: _ClassVar[RenderFormat]
    TEXT: _ClassVar[RenderFormat]
    JSON: _ClassVar[RenderFormat]

class UsageGranularity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    USAGE_GRANULARITY_UNSPECIFIED: _ClassVar[UsageGranularity]
    DAY: _ClassVar[UsageGranularity]
    HOUR: _ClassVar[UsageGranularity]
CHARGE_KIND_UNSPECIFIED: ChargeKind
USAGE: ChargeKind
ADD_ON: ChargeKind
FIXED_FEE: ChargeKind
LICENSE: ChargeKind
AGGREGATION_UNSPECIFIED: Aggregation
SUM: Aggregation
COUNT: Aggregation
MAX: Aggregation
UNIQUE_COUNT: Aggregation
PRICE_MODEL_UNSPECIFIED: PriceModel
FLAT: PriceModel
PER_UNIT: PriceModel
PACKAGE: PriceModel
GRADUATED: PriceModel
VOLUME: PriceModel
BILLING_INTERVAL_UNSPECIFIED: BillingInterval
MONTHLY: BillingInterval
QUARTERLY: BillingInterval
YEARLY: BillingInterval
INVOICE_STATUS_UNSPECIFIED: InvoiceStatus
DRAFT: InvoiceStatus
PREPARED: InvoiceStatus
FINALIZED: InvoiceStatus
VOID_PENDING: InvoiceStatus
VOIDED: InvoiceStatus
ABANDONED: InvoiceStatus
INGEST_STATUS_UNSPECIFIED: IngestStatus
ACCEPTED: IngestStatus
DUPLICATE: IngestStatus
INVOICE_EXPORT_FORMAT_UNSPECIFIED: InvoiceExportFormat
INVOICE_EXPORT_CSV: InvoiceExportFormat
INVOICE_EXPORT_JSON: InvoiceExportFormat
RENDER_FORMAT_UNSPECIFIED: RenderFormat
TEXT: RenderFormat
JSON: RenderFormat
USAGE_GRANULARITY_UNSPECIFIED: UsageGranularity
DAY: UsageGranularity
HOUR: UsageGranularity

class Customer(_message.Message):
    __slots__ = ("customer_id", "name", "ledger_account_id", "created_at", "tax_region")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LEDGER_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    TAX_REGION_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    name: str
    ledger_account_id: str
    created_at: _timestamp_pb2.Timestamp
    tax_region: str
    def __init__(self, customer_id: _Optional[str] = ..., name: _Optional[str] = ..., ledger_account_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., tax_region: _Optional[str] = ...) -> None: ...

class CreateCustomerRequest(_message.Message):
    __slots__ = ("idempotency_key", "customer_id", "name", "ledger_account_id")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LEDGER_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    customer_id: str
    name: str
    ledger_account_id: str
    def __init__(self, idempotency_key: _Optional[str] = ..., customer_id: _Optional[str] = ..., name: _Optional[str] = ..., ledger_account_id: _Optional[str] = ...) -> None: ...

class GetCustomerRequest(_message.Message):
    __slots__ = ("customer_id",)
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    def __init__(self, customer_id: _Optional[str] = ...) -> None: ...

class Meter(_message.Message):
    __slots__ = ("meter_code", "name", "aggregation", "property", "allow_negative", "created_at", "unit")
    METER_CODE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    PROPERTY_FIELD_NUMBER: _ClassVar[int]
    ALLOW_NEGATIVE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    meter_code: str
    name: str
    aggregation: Aggregation
    property: str
    allow_negative: bool
    created_at: _timestamp_pb2.Timestamp
    unit: str
    def __init__(self, meter_code: _Optional[str] = ..., name: _Optional[str] = ..., aggregation: _Optional[_Union[Aggregation, str]] = ..., property: _Optional[str] = ..., allow_negative: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., unit: _Optional[str] = ...) -> None: ...

class CreateMeterRequest(_message.Message):
    __slots__ = ("idempotency_key", "meter_code", "name", "aggregation", "property", "allow_negative", "unit")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    METER_CODE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    PROPERTY_FIELD_NUMBER: _ClassVar[int]
    ALLOW_NEGATIVE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    meter_code: str
    name: str
    aggregation: Aggregation
    property: str
    allow_negative: bool
    unit: str
    def __init__(self, idempotency_key: _Optional[str] = ..., meter_code: _Optional[str] = ..., name: _Optional[str] = ..., aggregation: _Optional[_Union[Aggregation, str]] = ..., property: _Optional[str] = ..., allow_negative: _Optional[bool] = ..., unit: _Optional[str] = ...) -> None: ...

class GetMeterRequest(_message.Message):
    __slots__ = ("meter_code",)
    METER_CODE_FIELD_NUMBER: _ClassVar[int]
    meter_code: str
    def __init__(self, meter_code: _Optional[str] = ...) -> None: ...

class Tier(_message.Message):
    __slots__ = ("up_to", "unit_amount", "flat_amount")
    UP_TO_FIELD_NUMBER: _ClassVar[int]
    UNIT_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    FLAT_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    up_to: str
    unit_amount: str
    flat_amount: str
    def __init__(self, up_to: _Optional[str] = ..., unit_amount: _Optional[str] = ..., flat_amount: _Optional[str] = ...) -> None: ...

class Price(_message.Message):
    __slots__ = ("model", "unit_amount", "flat_amount", "package_size", "tiers")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    UNIT_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    FLAT_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    model: PriceModel
    unit_amount: str
    flat_amount: str
    package_size: str
    tiers: _containers.RepeatedCompositeFieldContainer[Tier]
    def __init__(self, model: _Optional[_Union[PriceModel, str]] = ..., unit_amount: _Optional[str] = ..., flat_amount: _Optional[str] = ..., package_size: _Optional[str] = ..., tiers: _Optional[_Iterable[_Union[Tier, _Mapping]]] = ...) -> None: ...

class UsageCharge(_message.Message):
    __slots__ = ("meter_code", "price", "group_by", "filters", "dimension_prices", "time_of_use")
    METER_CODE_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_PRICES_FIELD_NUMBER: _ClassVar[int]
    TIME_OF_USE_FIELD_NUMBER: _ClassVar[int]
    meter_code: str
    price: Price
    group_by: str
    filters: _containers.RepeatedCompositeFieldContainer[PropertyFilter]
    dimension_prices: _containers.RepeatedCompositeFieldContainer[DimensionPrice]
    time_of_use: TimeOfUse
    def __init__(self, meter_code: _Optional[str] = ..., price: _Optional[_Union[Price, _Mapping]] = ..., group_by: _Optional[str] = ..., filters: _Optional[_Iterable[_Union[PropertyFilter, _Mapping]]] = ..., dimension_prices: _Optional[_Iterable[_Union[DimensionPrice, _Mapping]]] = ..., time_of_use: _Optional[_Union[TimeOfUse, _Mapping]] = ...) -> None: ...

class FixedFee(_message.Message):
    __slots__ = ("code", "name", "amount")
    CODE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    code: str
    name: str
    amount: str
    def __init__(self, code: _Optional[str] = ..., name: _Optional[str] = ..., amount: _Optional[str] = ...) -> None: ...

class AddOn(_message.Message):
    __slots__ = ("code", "name", "unit_amount")
    CODE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UNIT_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    code: str
    name: str
    unit_amount: str
    def __init__(self, code: _Optional[str] = ..., name: _Optional[str] = ..., unit_amount: _Optional[str] = ...) -> None: ...

class License(_message.Message):
    __slots__ = ("code", "name", "unit_amount")
    CODE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UNIT_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    code: str
    name: str
    unit_amount: str
    def __init__(self, code: _Optional[str] = ..., name: _Optional[str] = ..., unit_amount: _Optional[str] = ...) -> None: ...

class Plan(_message.Message):
    __slots__ = ("plan_id", "name", "currency", "interval", "usage_charges", "fixed_fees", "add_ons", "licenses", "created_at", "version", "minimum_commitment")
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    USAGE_CHARGES_FIELD_NUMBER: _ClassVar[int]
    FIXED_FEES_FIELD_NUMBER: _ClassVar[int]
    ADD_ONS_FIELD_NUMBER: _ClassVar[int]
    LICENSES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    plan_id: str
    name: str
    currency: str
    interval: BillingInterval
    usage_charges: _containers.RepeatedCompositeFieldContainer[UsageCharge]
    fixed_fees: _containers.RepeatedCompositeFieldContainer[FixedFee]
    add_ons: _containers.RepeatedCompositeFieldContainer[AddOn]
    licenses: _containers.RepeatedCompositeFieldContainer[License]
    created_at: _timestamp_pb2.Timestamp
    version: int
    minimum_commitment: str
    def __init__(self, plan_id: _Optional[str] = ..., name: _Optional[str] = ..., currency: _Optional[str] = ..., interval: _Optional[_Union[BillingInterval, str]] = ..., usage_charges: _Optional[_Iterable[_Union[UsageCharge, _Mapping]]] = ..., fixed_fees: _Optional[_Iterable[_Union[FixedFee, _Mapping]]] = ..., add_ons: _Optional[_Iterable[_Union[AddOn, _Mapping]]] = ..., licenses: _Optional[_Iterable[_Union[License, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., version: _Optional[int] = ..., minimum_commitment: _Optional[str] = ...) -> None: ...

class CreatePlanRequest(_message.Message):
    __slots__ = ("idempotency_key", "plan_id", "name", "currency", "interval", "usage_charges", "fixed_fees", "add_ons", "licenses", "minimum_commitment")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    USAGE_CHARGES_FIELD_NUMBER: _ClassVar[int]
    FIXED_FEES_FIELD_NUMBER: _ClassVar[int]
    ADD_ONS_FIELD_NUMBER: _ClassVar[int]
    LICENSES_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    plan_id: str
    name: str
    currency: str
    interval: BillingInterval
    usage_charges: _containers.RepeatedCompositeFieldContainer[UsageCharge]
    fixed_fees: _containers.RepeatedCompositeFieldContainer[FixedFee]
    add_ons: _containers.RepeatedCompositeFieldContainer[AddOn]
    licenses: _containers.RepeatedCompositeFieldContainer[License]
    minimum_commitment: str
    def __init__(self, idempotency_key: _Optional[str] = ..., plan_id: _Optional[str] = ..., name: _Optional[str] = ..., currency: _Optional[str] = ..., interval: _Optional[_Union[BillingInterval, str]] = ..., usage_charges: _Optional[_Iterable[_Union[UsageCharge, _Mapping]]] = ..., fixed_fees: _Optional[_Iterable[_Union[FixedFee, _Mapping]]] = ..., add_ons: _Optional[_Iterable[_Union[AddOn, _Mapping]]] = ..., licenses: _Optional[_Iterable[_Union[License, _Mapping]]] = ..., minimum_commitment: _Optional[str] = ...) -> None: ...

class GetPlanRequest(_message.Message):
    __slots__ = ("plan_id", "version")
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    plan_id: str
    version: int
    def __init__(self, plan_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class Quantity(_message.Message):
    __slots__ = ("code", "quantity")
    CODE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    code: str
    quantity: int
    def __init__(self, code: _Optional[str] = ..., quantity: _Optional[int] = ...) -> None: ...

class Subscription(_message.Message):
    __slots__ = ("subscription_id", "customer_id", "plan_id", "anchor", "add_ons", "licenses", "created_at", "plan_version", "trial_end", "calendar_aligned", "ends_at", "canceled_at", "price_overrides", "phases")
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    ANCHOR_FIELD_NUMBER: _ClassVar[int]
    ADD_ONS_FIELD_NUMBER: _ClassVar[int]
    LICENSES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    PLAN_VERSION_FIELD_NUMBER: _ClassVar[int]
    TRIAL_END_FIELD_NUMBER: _ClassVar[int]
    CALENDAR_ALIGNED_FIELD_NUMBER: _ClassVar[int]
    ENDS_AT_FIELD_NUMBER: _ClassVar[int]
    CANCELED_AT_FIELD_NUMBER: _ClassVar[int]
    PRICE_OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    PHASES_FIELD_NUMBER: _ClassVar[int]
    subscription_id: str
    customer_id: str
    plan_id: str
    anchor: _timestamp_pb2.Timestamp
    add_ons: _containers.RepeatedCompositeFieldContainer[Quantity]
    licenses: _containers.RepeatedCompositeFieldContainer[Quantity]
    created_at: _timestamp_pb2.Timestamp
    plan_version: int
    trial_end: _timestamp_pb2.Timestamp
    calendar_aligned: bool
    ends_at: _timestamp_pb2.Timestamp
    canceled_at: _timestamp_pb2.Timestamp
    price_overrides: _containers.RepeatedCompositeFieldContainer[PriceOverride]
    phases: _containers.RepeatedCompositeFieldContainer[SubscriptionPhase]
    def __init__(self, subscription_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., plan_id: _Optional[str] = ..., anchor: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., add_ons: _Optional[_Iterable[_Union[Quantity, _Mapping]]] = ..., licenses: _Optional[_Iterable[_Union[Quantity, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., plan_version: _Optional[int] = ..., trial_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., calendar_aligned: _Optional[bool] = ..., ends_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., canceled_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., price_overrides: _Optional[_Iterable[_Union[PriceOverride, _Mapping]]] = ..., phases: _Optional[_Iterable[_Union[SubscriptionPhase, _Mapping]]] = ...) -> None: ...

class SubscriptionPhase(_message.Message):
    __slots__ = ("effective_at", "plan_id", "plan_version", "add_ons", "licenses", "price_overrides", "created_at")
    EFFECTIVE_AT_FIELD_NUMBER: _ClassVar[int]
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_VERSION_FIELD_NUMBER: _ClassVar[int]
    ADD_ONS_FIELD_NUMBER: _ClassVar[int]
    LICENSES_FIELD_NUMBER: _ClassVar[int]
    PRICE_OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    effective_at: _timestamp_pb2.Timestamp
    plan_id: str
    plan_version: int
    add_ons: _containers.RepeatedCompositeFieldContainer[Quantity]
    licenses: _containers.RepeatedCompositeFieldContainer[Quantity]
    price_overrides: _containers.RepeatedCompositeFieldContainer[PriceOverride]
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, effective_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., plan_id: _Optional[str] = ..., plan_version: _Optional[int] = ..., add_ons: _Optional[_Iterable[_Union[Quantity, _Mapping]]] = ..., licenses: _Optional[_Iterable[_Union[Quantity, _Mapping]]] = ..., price_overrides: _Optional[_Iterable[_Union[PriceOverride, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListSubscriptionsRequest(_message.Message):
    __slots__ = ("customer_id", "page_size", "page_token")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    page_size: int
    page_token: str
    def __init__(self, customer_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSubscriptionsResponse(_message.Message):
    __slots__ = ("subscriptions", "next_page_token")
    SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    subscriptions: _containers.RepeatedCompositeFieldContainer[Subscription]
    next_page_token: str
    def __init__(self, subscriptions: _Optional[_Iterable[_Union[Subscription, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListPlanVersionsRequest(_message.Message):
    __slots__ = ("plan_id", "page_size", "page_token")
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    plan_id: str
    page_size: int
    page_token: str
    def __init__(self, plan_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPlanVersionsResponse(_message.Message):
    __slots__ = ("versions", "next_page_token")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[Plan]
    next_page_token: str
    def __init__(self, versions: _Optional[_Iterable[_Union[Plan, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CreateSubscriptionRequest(_message.Message):
    __slots__ = ("idempotency_key", "subscription_id", "customer_id", "plan_id", "anchor", "add_ons", "licenses", "trial_end", "calendar_aligned", "price_overrides")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    ANCHOR_FIELD_NUMBER: _ClassVar[int]
    ADD_ONS_FIELD_NUMBER: _ClassVar[int]
    LICENSES_FIELD_NUMBER: _ClassVar[int]
    TRIAL_END_FIELD_NUMBER: _ClassVar[int]
    CALENDAR_ALIGNED_FIELD_NUMBER: _ClassVar[int]
    PRICE_OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    subscription_id: str
    customer_id: str
    plan_id: str
    anchor: _timestamp_pb2.Timestamp
    add_ons: _containers.RepeatedCompositeFieldContainer[Quantity]
    licenses: _containers.RepeatedCompositeFieldContainer[Quantity]
    trial_end: _timestamp_pb2.Timestamp
    calendar_aligned: bool
    price_overrides: _containers.RepeatedCompositeFieldContainer[PriceOverride]
    def __init__(self, idempotency_key: _Optional[str] = ..., subscription_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., plan_id: _Optional[str] = ..., anchor: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., add_ons: _Optional[_Iterable[_Union[Quantity, _Mapping]]] = ..., licenses: _Optional[_Iterable[_Union[Quantity, _Mapping]]] = ..., trial_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., calendar_aligned: _Optional[bool] = ..., price_overrides: _Optional[_Iterable[_Union[PriceOverride, _Mapping]]] = ...) -> None: ...

class GetSubscriptionRequest(_message.Message):
    __slots__ = ("subscription_id",)
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    subscription_id: str
    def __init__(self, subscription_id: _Optional[str] = ...) -> None: ...

class ListDueSubscriptionsRequest(_message.Message):
    __slots__ = ("as_of", "page_size", "page_token")
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    as_of: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class DuePeriod(_message.Message):
    __slots__ = ("customer_id", "subscription_id", "period_start", "period_end", "invoice_id", "status")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    subscription_id: str
    period_start: _timestamp_pb2.Timestamp
    period_end: _timestamp_pb2.Timestamp
    invoice_id: str
    status: InvoiceStatus
    def __init__(self, customer_id: _Optional[str] = ..., subscription_id: _Optional[str] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., invoice_id: _Optional[str] = ..., status: _Optional[_Union[InvoiceStatus, str]] = ...) -> None: ...

class ListDueSubscriptionsResponse(_message.Message):
    __slots__ = ("periods", "next_page_token")
    PERIODS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    periods: _containers.RepeatedCompositeFieldContainer[DuePeriod]
    next_page_token: str
    def __init__(self, periods: _Optional[_Iterable[_Union[DuePeriod, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListSettlementsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class AccountSettlement(_message.Message):
    __slots__ = ("ledger_account_id", "invoiced_through")
    LEDGER_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    INVOICED_THROUGH_FIELD_NUMBER: _ClassVar[int]
    ledger_account_id: str
    invoiced_through: _timestamp_pb2.Timestamp
    def __init__(self, ledger_account_id: _Optional[str] = ..., invoiced_through: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListSettlementsResponse(_message.Message):
    __slots__ = ("settlements", "next_page_token")
    SETTLEMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    settlements: _containers.RepeatedCompositeFieldContainer[AccountSettlement]
    next_page_token: str
    def __init__(self, settlements: _Optional[_Iterable[_Union[AccountSettlement, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UsageEvent(_message.Message):
    __slots__ = ("event_id", "customer_id", "meter_code", "quantity", "properties", "timestamp")
    class PropertiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    METER_CODE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    customer_id: str
    meter_code: str
    quantity: str
    properties: _containers.ScalarMap[str, str]
    timestamp: _timestamp_pb2.Timestamp
    def __init__(self, event_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., meter_code: _Optional[str] = ..., quantity: _Optional[str] = ..., properties: _Optional[_Mapping[str, str]] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class EventResult(_message.Message):
    __slots__ = ("event_id", "status")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    status: IngestStatus
    def __init__(self, event_id: _Optional[str] = ..., status: _Optional[_Union[IngestStatus, str]] = ...) -> None: ...

class IngestEventRequest(_message.Message):
    __slots__ = ("idempotency_key", "event")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    event: UsageEvent
    def __init__(self, idempotency_key: _Optional[str] = ..., event: _Optional[_Union[UsageEvent, _Mapping]] = ...) -> None: ...

class IngestEventResponse(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: EventResult
    def __init__(self, result: _Optional[_Union[EventResult, _Mapping]] = ...) -> None: ...

class IngestEventsRequest(_message.Message):
    __slots__ = ("idempotency_key", "events")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    events: _containers.RepeatedCompositeFieldContainer[UsageEvent]
    def __init__(self, idempotency_key: _Optional[str] = ..., events: _Optional[_Iterable[_Union[UsageEvent, _Mapping]]] = ...) -> None: ...

class IngestEventsResponse(_message.Message):
    __slots__ = ("results", "accepted", "duplicates")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[EventResult]
    accepted: int
    duplicates: int
    def __init__(self, results: _Optional[_Iterable[_Union[EventResult, _Mapping]]] = ..., accepted: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...

class LineItem(_message.Message):
    __slots__ = ("line_item_id", "kind", "code", "description", "quantity", "unit_price", "amount", "service_start", "service_end", "credits_applied", "amount_due", "unit", "units_covered", "variant", "discount", "discount_codes", "tax")
    LINE_ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_START_FIELD_NUMBER: _ClassVar[int]
    SERVICE_END_FIELD_NUMBER: _ClassVar[int]
    CREDITS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_DUE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    UNITS_COVERED_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    DISCOUNT_FIELD_NUMBER: _ClassVar[int]
    DISCOUNT_CODES_FIELD_NUMBER: _ClassVar[int]
    TAX_FIELD_NUMBER: _ClassVar[int]
    line_item_id: str
    kind: ChargeKind
    code: str
    description: str
    quantity: str
    unit_price: str
    amount: str
    service_start: _timestamp_pb2.Timestamp
    service_end: _timestamp_pb2.Timestamp
    credits_applied: str
    amount_due: str
    unit: str
    units_covered: str
    variant: str
    discount: str
    discount_codes: _containers.RepeatedScalarFieldContainer[str]
    tax: str
    def __init__(self, line_item_id: _Optional[str] = ..., kind: _Optional[_Union[ChargeKind, str]] = ..., code: _Optional[str] = ..., description: _Optional[str] = ..., quantity: _Optional[str] = ..., unit_price: _Optional[str] = ..., amount: _Optional[str] = ..., service_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., service_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., credits_applied: _Optional[str] = ..., amount_due: _Optional[str] = ..., unit: _Optional[str] = ..., units_covered: _Optional[str] = ..., variant: _Optional[str] = ..., discount: _Optional[str] = ..., discount_codes: _Optional[_Iterable[str]] = ..., tax: _Optional[str] = ...) -> None: ...

class Charge(_message.Message):
    __slots__ = ("charge_id", "line_item_id", "kind", "name", "quantity", "amount", "service_start", "service_end", "unit")
    CHARGE_ID_FIELD_NUMBER: _ClassVar[int]
    LINE_ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_START_FIELD_NUMBER: _ClassVar[int]
    SERVICE_END_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    charge_id: str
    line_item_id: str
    kind: ChargeKind
    name: str
    quantity: str
    amount: str
    service_start: _timestamp_pb2.Timestamp
    service_end: _timestamp_pb2.Timestamp
    unit: str
    def __init__(self, charge_id: _Optional[str] = ..., line_item_id: _Optional[str] = ..., kind: _Optional[_Union[ChargeKind, str]] = ..., name: _Optional[str] = ..., quantity: _Optional[str] = ..., amount: _Optional[str] = ..., service_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., service_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., unit: _Optional[str] = ...) -> None: ...

class CreditApplication(_message.Message):
    __slots__ = ("charge_id", "lot_id", "lot_type", "amount", "line_item_id", "unit", "units", "rate", "rate_version")
    CHARGE_ID_FIELD_NUMBER: _ClassVar[int]
    LOT_ID_FIELD_NUMBER: _ClassVar[int]
    LOT_TYPE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    LINE_ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    RATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    charge_id: str
    lot_id: str
    lot_type: str
    amount: str
    line_item_id: str
    unit: str
    units: str
    rate: str
    rate_version: int
    def __init__(self, charge_id: _Optional[str] = ..., lot_id: _Optional[str] = ..., lot_type: _Optional[str] = ..., amount: _Optional[str] = ..., line_item_id: _Optional[str] = ..., unit: _Optional[str] = ..., units: _Optional[str] = ..., rate: _Optional[str] = ..., rate_version: _Optional[int] = ...) -> None: ...

class Invoice(_message.Message):
    __slots__ = ("invoice_id", "customer_id", "ledger_account_id", "subscription_id", "plan_id", "currency", "status", "number", "period_start", "period_end", "line_items", "charges", "applications", "subtotal", "credits_applied", "amount_due", "split_at", "draft_digest", "prepare_key", "created_at", "computed_at", "prepared_at", "finalized_at", "void_prepared_at", "voided_at", "credit_notes", "abandoned_at", "abandon_reason", "discounts", "tax", "tax_region", "tax_name", "tax_rate", "tax_inclusive")
    INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    LEDGER_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    LINE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    CHARGES_FIELD_NUMBER: _ClassVar[int]
    APPLICATIONS_FIELD_NUMBER: _ClassVar[int]
    SUBTOTAL_FIELD_NUMBER: _ClassVar[int]
    CREDITS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_DUE_FIELD_NUMBER: _ClassVar[int]
    SPLIT_AT_FIELD_NUMBER: _ClassVar[int]
    DRAFT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PREPARE_KEY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    COMPUTED_AT_FIELD_NUMBER: _ClassVar[int]
    PREPARED_AT_FIELD_NUMBER: _ClassVar[int]
    FINALIZED_AT_FIELD_NUMBER: _ClassVar[int]
    VOID_PREPARED_AT_FIELD_NUMBER: _ClassVar[int]
    VOIDED_AT_FIELD_NUMBER: _ClassVar[int]
    CREDIT_NOTES_FIELD_NUMBER: _ClassVar[int]
    ABANDONED_AT_FIELD_NUMBER: _ClassVar[int]
    ABANDON_REASON_FIELD_NUMBER: _ClassVar[int]
    DISCOUNTS_FIELD_NUMBER: _ClassVar[int]
    TAX_FIELD_NUMBER: _ClassVar[int]
    TAX_REGION_FIELD_NUMBER: _ClassVar[int]
    TAX_NAME_FIELD_NUMBER: _ClassVar[int]
    TAX_RATE_FIELD_NUMBER: _ClassVar[int]
    TAX_INCLUSIVE_FIELD_NUMBER: _ClassVar[int]
    invoice_id: str
    customer_id: str
    ledger_account_id: str
    subscription_id: str
    plan_id: str
    currency: str
    status: InvoiceStatus
    number: str
    period_start: _timestamp_pb2.Timestamp
    period_end: _timestamp_pb2.Timestamp
    line_items: _containers.RepeatedCompositeFieldContainer[LineItem]
    charges: _containers.RepeatedCompositeFieldContainer[Charge]
    applications: _containers.RepeatedCompositeFieldContainer[CreditApplication]
    subtotal: str
    credits_applied: str
    amount_due: str
    split_at: _containers.RepeatedCompositeFieldContainer[_timestamp_pb2.Timestamp]
    draft_digest: str
    prepare_key: str
    created_at: _timestamp_pb2.Timestamp
    computed_at: _timestamp_pb2.Timestamp
    prepared_at: _timestamp_pb2.Timestamp
    finalized_at: _timestamp_pb2.Timestamp
    void_prepared_at: _timestamp_pb2.Timestamp
    voided_at: _timestamp_pb2.Timestamp
    credit_notes: _containers.RepeatedScalarFieldContainer[str]
    abandoned_at: _timestamp_pb2.Timestamp
    abandon_reason: str
    discounts: str
    tax: str
    tax_region: str
    tax_name: str
    tax_rate: str
    tax_inclusive: bool
    def __init__(self, invoice_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., ledger_account_id: _Optional[str] = ..., subscription_id: _Optional[str] = ..., plan_id: _Optional[str] = ..., currency: _Optional[str] = ..., status: _Optional[_Union[InvoiceStatus, str]] = ..., number: _Optional[str] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., line_items: _Optional[_Iterable[_Union[LineItem, _Mapping]]] = ..., charges: _Optional[_Iterable[_Union[Charge, _Mapping]]] = ..., applications: _Optional[_Iterable[_Union[CreditApplication, _Mapping]]] = ..., subtotal: _Optional[str] = ..., credits_applied: _Optional[str] = ..., amount_due: _Optional[str] = ..., split_at: _Optional[_Iterable[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]]] = ..., draft_digest: _Optional[str] = ..., prepare_key: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., computed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., prepared_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finalized_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., void_prepared_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., voided_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., credit_notes: _Optional[_Iterable[str]] = ..., abandoned_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., abandon_reason: _Optional[str] = ..., discounts: _Optional[str] = ..., tax: _Optional[str] = ..., tax_region: _Optional[str] = ..., tax_name: _Optional[str] = ..., tax_rate: _Optional[str] = ..., tax_inclusive: _Optional[bool] = ...) -> None: ...

class CreateDraftRequest(_message.Message):
    __slots__ = ("idempotency_key", "customer_id", "period_start", "subscription_id")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    customer_id: str
    period_start: _timestamp_pb2.Timestamp
    subscription_id: str
    def __init__(self, idempotency_key: _Optional[str] = ..., customer_id: _Optional[str] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., subscription_id: _Optional[str] = ...) -> None: ...

class SplitDraftRequest(_message.Message):
    __slots__ = ("invoice_id", "split_at", "unit_applications")
    INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    SPLIT_AT_FIELD_NUMBER: _ClassVar[int]
    UNIT_APPLICATIONS_FIELD_NUMBER: _ClassVar[int]
    invoice_id: str
    split_at: _containers.RepeatedCompositeFieldContainer[_timestamp_pb2.Timestamp]
    unit_applications: _containers.RepeatedCompositeFieldContainer[CreditApplication]
    def __init__(self, invoice_id: _Optional[str] = ..., split_at: _Optional[_Iterable[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]]] = ..., unit_applications: _Optional[_Iterable[_Union[CreditApplication, _Mapping]]] = ...) -> None: ...

class SplitDraftResponse(_message.Message):
    __slots__ = ("invoice", "charges", "draft_digest", "unit_charges")
    INVOICE_FIELD_NUMBER: _ClassVar[int]
    CHARGES_FIELD_NUMBER: _ClassVar[int]
    DRAFT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    UNIT_CHARGES_FIELD_NUMBER: _ClassVar[int]
    invoice: Invoice
    charges: _containers.RepeatedCompositeFieldContainer[Charge]
    draft_digest: str
    unit_charges: _containers.RepeatedCompositeFieldContainer[Charge]
    def __init__(self, invoice: _Optional[_Union[Invoice, _Mapping]] = ..., charges: _Optional[_Iterable[_Union[Charge, _Mapping]]] = ..., draft_digest: _Optional[str] = ..., unit_charges: _Optional[_Iterable[_Union[Charge, _Mapping]]] = ...) -> None: ...

class PrepareFinalizeRequest(_message.Message):
    __slots__ = ("idempotency_key", "invoice_id", "split_at", "applications", "draft_digest", "credit_notes")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    SPLIT_AT_FIELD_NUMBER: _ClassVar[int]
    APPLICATIONS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    CREDIT_NOTES_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    invoice_id: str
    split_at: _containers.RepeatedCompositeFieldContainer[_timestamp_pb2.Timestamp]
    applications: _containers.RepeatedCompositeFieldContainer[CreditApplication]
    draft_digest: str
    credit_notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, idempotency_key: _Optional[str] = ..., invoice_id: _Optional[str] = ..., split_at: _Optional[_Iterable[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]]] = ..., applications: _Optional[_Iterable[_Union[CreditApplication, _Mapping]]] = ..., draft_digest: _Optional[str] = ..., credit_notes: _Optional[_Iterable[str]] = ...) -> None: ...

class CommitFinalizeRequest(_message.Message):
    __slots__ = ("idempotency_key", "invoice_id", "prepare_key")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    PREPARE_KEY_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    invoice_id: str
    prepare_key: str
    def __init__(self, idempotency_key: _Optional[str] = ..., invoice_id: _Optional[str] = ..., prepare_key: _Optional[str] = ...) -> None: ...

class AbortFinalizeRequest(_message.Message):
    __slots__ = ("idempotency_key", "invoice_id", "prepare_key", "reason")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    PREPARE_KEY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    invoice_id: str
    prepare_key: str
    reason: str
    def __init__(self, idempotency_key: _Optional[str] = ..., invoice_id: _Optional[str] = ..., prepare_key: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class PrepareVoidRequest(_message.Message):
    __slots__ = ("idempotency_key", "invoice_id", "reason")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    invoice_id: str
    reason: str
    def __init__(self, idempotency_key: _Optional[str] = ..., invoice_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class AbandonInvoiceRequest(_message.Message):
    __slots__ = ("idempotency_key", "invoice_id", "reason")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    invoice_id: str
    reason: str
    def __init__(self, idempotency_key: _Optional[str] = ..., invoice_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CommitVoidRequest(_message.Message):
    __slots__ = ("idempotency_key", "invoice_id")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    invoice_id: str
    def __init__(self, idempotency_key: _Optional[str] = ..., invoice_id: _Optional[str] = ...) -> None: ...

class AbortVoidRequest(_message.Message):
    __slots__ = ("idempotency_key", "invoice_id")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    invoice_id: str
    def __init__(self, idempotency_key: _Optional[str] = ..., invoice_id: _Optional[str] = ...) -> None: ...

class GetInvoiceRequest(_message.Message):
    __slots__ = ("invoice_id",)
    INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    invoice_id: str
    def __init__(self, invoice_id: _Optional[str] = ...) -> None: ...

class ListInvoicesRequest(_message.Message):
    __slots__ = ("customer_id", "statuses", "prepared_before", "period_start", "page_size", "page_token")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    PREPARED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    statuses: _containers.RepeatedScalarFieldContainer[InvoiceStatus]
    prepared_before: _timestamp_pb2.Timestamp
    period_start: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, customer_id: _Optional[str] = ..., statuses: _Optional[_Iterable[_Union[InvoiceStatus, str]]] = ..., prepared_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListInvoicesResponse(_message.Message):
    __slots__ = ("invoices", "next_page_token")
    INVOICES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    invoices: _containers.RepeatedCompositeFieldContainer[Invoice]
    next_page_token: str
    def __init__(self, invoices: _Optional[_Iterable[_Union[Invoice, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ExportInvoicesRequest(_message.Message):
    __slots__ = ("customer_id", "statuses", "format", "line_items")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    LINE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    statuses: _containers.RepeatedScalarFieldContainer[InvoiceStatus]
    format: InvoiceExportFormat
    line_items: bool
    def __init__(self, customer_id: _Optional[str] = ..., statuses: _Optional[_Iterable[_Union[InvoiceStatus, str]]] = ..., format: _Optional[_Union[InvoiceExportFormat, str]] = ..., line_items: _Optional[bool] = ...) -> None: ...

class InvoiceExportChunk(_message.Message):
    __slots__ = ("data", "invoices_done", "invoices_total")
    DATA_FIELD_NUMBER: _ClassVar[int]
    INVOICES_DONE_FIELD_NUMBER: _ClassVar[int]
    INVOICES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    invoices_done: int
    invoices_total: int
    def __init__(self, data: _Optional[bytes] = ..., invoices_done: _Optional[int] = ..., invoices_total: _Optional[int] = ...) -> None: ...

class RenderInvoiceRequest(_message.Message):
    __slots__ = ("invoice_id", "format")
    INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    invoice_id: str
    format: RenderFormat
    def __init__(self, invoice_id: _Optional[str] = ..., format: _Optional[_Union[RenderFormat, str]] = ...) -> None: ...

class RenderInvoiceResponse(_message.Message):
    __slots__ = ("content_type", "content")
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    content_type: str
    content: str
    def __init__(self, content_type: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class CreatePortalLinkRequest(_message.Message):
    __slots__ = ("customer_id", "ttl_s")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    ttl_s: int
    def __init__(self, customer_id: _Optional[str] = ..., ttl_s: _Optional[int] = ...) -> None: ...

class PortalLink(_message.Message):
    __slots__ = ("customer_id", "ledger_account_id", "token", "url", "expires_at")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    LEDGER_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    ledger_account_id: str
    token: str
    url: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, customer_id: _Optional[str] = ..., ledger_account_id: _Optional[str] = ..., token: _Optional[str] = ..., url: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetUsageSeriesRequest(_message.Message):
    __slots__ = ("customer_id", "to", "granularity", "meter_code")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    METER_CODE_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    to: _timestamp_pb2.Timestamp
    granularity: UsageGranularity
    meter_code: str
    def __init__(self, customer_id: _Optional[str] = ..., to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., granularity: _Optional[_Union[UsageGranularity, str]] = ..., meter_code: _Optional[str] = ..., **kwargs) -> None: ...

class UsagePoint(_message.Message):
    __slots__ = ("meter_code", "bucket_start", "value", "events", "cost", "credits_applied", "currency")
    METER_CODE_FIELD_NUMBER: _ClassVar[int]
    BUCKET_START_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    CREDITS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    meter_code: str
    bucket_start: _timestamp_pb2.Timestamp
    value: str
    events: int
    cost: str
    credits_applied: str
    currency: str
    def __init__(self, meter_code: _Optional[str] = ..., bucket_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., value: _Optional[str] = ..., events: _Optional[int] = ..., cost: _Optional[str] = ..., credits_applied: _Optional[str] = ..., currency: _Optional[str] = ...) -> None: ...

class UsageSeries(_message.Message):
    __slots__ = ("customer_id", "points")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    points: _containers.RepeatedCompositeFieldContainer[UsagePoint]
    def __init__(self, customer_id: _Optional[str] = ..., points: _Optional[_Iterable[_Union[UsagePoint, _Mapping]]] = ...) -> None: ...

class ListTopCustomersRequest(_message.Message):
    __slots__ = ("meter_code", "to", "limit")
    METER_CODE_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    meter_code: str
    to: _timestamp_pb2.Timestamp
    limit: int
    def __init__(self, meter_code: _Optional[str] = ..., to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., limit: _Optional[int] = ..., **kwargs) -> None: ...

class CustomerUsage(_message.Message):
    __slots__ = ("customer_id", "value", "events")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    value: str
    events: int
    def __init__(self, customer_id: _Optional[str] = ..., value: _Optional[str] = ..., events: _Optional[int] = ...) -> None: ...

class ListTopCustomersResponse(_message.Message):
    __slots__ = ("meter_code", "customers")
    METER_CODE_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    meter_code: str
    customers: _containers.RepeatedCompositeFieldContainer[CustomerUsage]
    def __init__(self, meter_code: _Optional[str] = ..., customers: _Optional[_Iterable[_Union[CustomerUsage, _Mapping]]] = ...) -> None: ...

class PriceOverride(_message.Message):
    __slots__ = ("code", "amount", "price")
    CODE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    code: str
    amount: str
    price: Price
    def __init__(self, code: _Optional[str] = ..., amount: _Optional[str] = ..., price: _Optional[_Union[Price, _Mapping]] = ...) -> None: ...

class UpdateSubscriptionRequest(_message.Message):
    __slots__ = ("idempotency_key", "subscription_id", "effective_at", "plan_id", "add_ons", "licenses", "price_overrides", "replace_add_ons", "replace_licenses", "replace_price_overrides")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_AT_FIELD_NUMBER: _ClassVar[int]
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    ADD_ONS_FIELD_NUMBER: _ClassVar[int]
    LICENSES_FIELD_NUMBER: _ClassVar[int]
    PRICE_OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    REPLACE_ADD_ONS_FIELD_NUMBER: _ClassVar[int]
    REPLACE_LICENSES_FIELD_NUMBER: _ClassVar[int]
    REPLACE_PRICE_OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    subscription_id: str
    effective_at: _timestamp_pb2.Timestamp
    plan_id: str
    add_ons: _containers.RepeatedCompositeFieldContainer[Quantity]
    licenses: _containers.RepeatedCompositeFieldContainer[Quantity]
    price_overrides: _containers.RepeatedCompositeFieldContainer[PriceOverride]
    replace_add_ons: bool
    replace_licenses: bool
    replace_price_overrides: bool
    def __init__(self, idempotency_key: _Optional[str] = ..., subscription_id: _Optional[str] = ..., effective_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., plan_id: _Optional[str] = ..., add_ons: _Optional[_Iterable[_Union[Quantity, _Mapping]]] = ..., licenses: _Optional[_Iterable[_Union[Quantity, _Mapping]]] = ..., price_overrides: _Optional[_Iterable[_Union[PriceOverride, _Mapping]]] = ..., replace_add_ons: _Optional[bool] = ..., replace_licenses: _Optional[bool] = ..., replace_price_overrides: _Optional[bool] = ...) -> None: ...

class CancelSubscriptionRequest(_message.Message):
    __slots__ = ("idempotency_key", "subscription_id", "at", "at_period_end")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    AT_PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    subscription_id: str
    at: _timestamp_pb2.Timestamp
    at_period_end: bool
    def __init__(self, idempotency_key: _Optional[str] = ..., subscription_id: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., at_period_end: _Optional[bool] = ...) -> None: ...

class MigrateSubscriptionRequest(_message.Message):
    __slots__ = ("idempotency_key", "subscription_id", "effective_at", "version")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_AT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    subscription_id: str
    effective_at: _timestamp_pb2.Timestamp
    version: int
    def __init__(self, idempotency_key: _Optional[str] = ..., subscription_id: _Optional[str] = ..., effective_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., version: _Optional[int] = ...) -> None: ...

class PropertyFilter(_message.Message):
    __slots__ = ("property", "values")
    PROPERTY_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    property: str
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, property: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ...) -> None: ...

class DimensionPrice(_message.Message):
    __slots__ = ("value", "price")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    value: str
    price: Price
    def __init__(self, value: _Optional[str] = ..., price: _Optional[_Union[Price, _Mapping]] = ...) -> None: ...

class TimeOfUse(_message.Message):
    __slots__ = ("time_zone", "peak_hours", "peak_days", "peak_price")
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    PEAK_HOURS_FIELD_NUMBER: _ClassVar[int]
    PEAK_DAYS_FIELD_NUMBER: _ClassVar[int]
    PEAK_PRICE_FIELD_NUMBER: _ClassVar[int]
    time_zone: str
    peak_hours: _containers.RepeatedScalarFieldContainer[int]
    peak_days: _containers.RepeatedScalarFieldContainer[int]
    peak_price: Price
    def __init__(self, time_zone: _Optional[str] = ..., peak_hours: _Optional[_Iterable[int]] = ..., peak_days: _Optional[_Iterable[int]] = ..., peak_price: _Optional[_Union[Price, _Mapping]] = ...) -> None: ...

class TaxRule(_message.Message):
    __slots__ = ("region", "name", "rate", "inclusive", "updated_at")
    REGION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    INCLUSIVE_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    region: str
    name: str
    rate: str
    inclusive: bool
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, region: _Optional[str] = ..., name: _Optional[str] = ..., rate: _Optional[str] = ..., inclusive: _Optional[bool] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SetTaxRuleRequest(_message.Message):
    __slots__ = ("idempotency_key", "region", "name", "rate", "inclusive")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    INCLUSIVE_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    region: str
    name: str
    rate: str
    inclusive: bool
    def __init__(self, idempotency_key: _Optional[str] = ..., region: _Optional[str] = ..., name: _Optional[str] = ..., rate: _Optional[str] = ..., inclusive: _Optional[bool] = ...) -> None: ...

class ListTaxRulesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTaxRulesResponse(_message.Message):
    __slots__ = ("rules", "next_page_token")
    RULES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    rules: _containers.RepeatedCompositeFieldContainer[TaxRule]
    next_page_token: str
    def __init__(self, rules: _Optional[_Iterable[_Union[TaxRule, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SetCustomerTaxRegionRequest(_message.Message):
    __slots__ = ("idempotency_key", "customer_id", "tax_region")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    TAX_REGION_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    customer_id: str
    tax_region: str
    def __init__(self, idempotency_key: _Optional[str] = ..., customer_id: _Optional[str] = ..., tax_region: _Optional[str] = ...) -> None: ...

class Coupon(_message.Message):
    __slots__ = ("coupon_code", "name", "percent_off", "amount_off", "currency", "duration_periods", "applies_to", "created_at")
    COUPON_CODE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PERCENT_OFF_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_OFF_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    DURATION_PERIODS_FIELD_NUMBER: _ClassVar[int]
    APPLIES_TO_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    coupon_code: str
    name: str
    percent_off: str
    amount_off: str
    currency: str
    duration_periods: int
    applies_to: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, coupon_code: _Optional[str] = ..., name: _Optional[str] = ..., percent_off: _Optional[str] = ..., amount_off: _Optional[str] = ..., currency: _Optional[str] = ..., duration_periods: _Optional[int] = ..., applies_to: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateCouponRequest(_message.Message):
    __slots__ = ("idempotency_key", "coupon_code", "name", "percent_off", "amount_off", "currency", "duration_periods", "applies_to")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    COUPON_CODE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PERCENT_OFF_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_OFF_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    DURATION_PERIODS_FIELD_NUMBER: _ClassVar[int]
    APPLIES_TO_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    coupon_code: str
    name: str
    percent_off: str
    amount_off: str
    currency: str
    duration_periods: int
    applies_to: str
    def __init__(self, idempotency_key: _Optional[str] = ..., coupon_code: _Optional[str] = ..., name: _Optional[str] = ..., percent_off: _Optional[str] = ..., amount_off: _Optional[str] = ..., currency: _Optional[str] = ..., duration_periods: _Optional[int] = ..., applies_to: _Optional[str] = ...) -> None: ...

class ListCouponsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListCouponsResponse(_message.Message):
    __slots__ = ("coupons", "next_page_token")
    COUPONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    coupons: _containers.RepeatedCompositeFieldContainer[Coupon]
    next_page_token: str
    def __init__(self, coupons: _Optional[_Iterable[_Union[Coupon, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RedeemCouponRequest(_message.Message):
    __slots__ = ("idempotency_key", "customer_id", "coupon_code", "redeemed_at")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    COUPON_CODE_FIELD_NUMBER: _ClassVar[int]
    REDEEMED_AT_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    customer_id: str
    coupon_code: str
    redeemed_at: _timestamp_pb2.Timestamp
    def __init__(self, idempotency_key: _Optional[str] = ..., customer_id: _Optional[str] = ..., coupon_code: _Optional[str] = ..., redeemed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CouponRedemption(_message.Message):
    __slots__ = ("customer_id", "coupon", "redeemed_at", "created_at")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    COUPON_FIELD_NUMBER: _ClassVar[int]
    REDEEMED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    coupon: Coupon
    redeemed_at: _timestamp_pb2.Timestamp
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, customer_id: _Optional[str] = ..., coupon: _Optional[_Union[Coupon, _Mapping]] = ..., redeemed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
