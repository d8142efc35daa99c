import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LotType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOT_TYPE_UNSPECIFIED: _ClassVar[LotType]
    PURCHASED: _ClassVar[LotType]
    PROMOTIONAL: _ClassVar[LotType]
    COMPENSATORY: _ClassVar[LotType]
    ROLLOVER: _ClassVar[LotType]

class ChargeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHARGE_KIND_UNSPECIFIED: _ClassVar[ChargeKind]
    USAGE: _ClassVar[ChargeKind]
    ADD_ON: _ClassVar[ChargeKind]
    FIXED_FEE: _ClassVar[ChargeKind]
    LICENSE: _ClassVar[ChargeKind]

class HoldStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HOLD_STATUS_UNSPECIFIED: _ClassVar[HoldStatus]
    PENDING: _ClassVar[HoldStatus]
    COMMITTED: _ClassVar[HoldStatus]
    RELEASED: _ClassVar[HoldStatus]
    TOMBSTONE: _ClassVar[HoldStatus]

class ExpiredLotPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPIRED_LOT_POLICY_UNSPECIFIED: _ClassVar[ExpiredLotPolicy]
    EXPIRE_AT_ONCE: _ClassVar[ExpiredLotPolicy]
    REINSTATE_WITH_GRACE: _ClassVar[ExpiredLotPolicy]

class EntryKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENTRY_KIND_UNSPECIFIED: _ClassVar[EntryKind]
    GRANT: _ClassVar[EntryKind]
    HOLD: _ClassVar[EntryKind]
    POST: _ClassVar[EntryKind]
    RELEASE: _ClassVar[EntryKind]
    EXPIRE: _ClassVar[EntryKind]
    VOID: _ClassVar[EntryKind]
    REINSTATE: _ClassVar[EntryKind]
    TRANSFER_OUT: _ClassVar[EntryKind]
    DEBIT: _ClassVar[EntryKind]

class SortKey(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SORT_KEY_UNSPECIFIED: _ClassVar[SortKey]
    PRIORITY_ASC: _ClassVar[SortKey]
    EXPIRY_SOONEST: _ClassVar[SortKey]
    TYPE_ORDER: _ClassVar[SortKey]
    SCOPE_NARROWEST: _ClassVar[SortKey]
    COST_BASIS_LOWEST: _ClassVar[SortKey]
    EFFECTIVE_OLDEST: _ClassVar[SortKey]
    CREATION_ORDER: _ClassVar[SortKey]

class GrantRequestStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRANT_REQUEST_STATUS_UNSPECIFIED: _ClassVar[GrantRequestStatus]
    PENDING_APPROVAL: _ClassVar[GrantRequestStatus]
    APPROVED: _ClassVar[GrantRequestStatus]
    REJECTED: _ClassVar[GrantRequestStatus]

class MovementType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MOVEMENT_TYPE_UNSPECIFIED: _ClassVar[MovementType]
    MOVEMENT_GRANT: _ClassVar[MovementType]
    MOVEMENT_CONSUMPTION: _ClassVar[MovementType]
    MOVEMENT_HOLD_PLACED: _ClassVar[MovementType]
    MOVEMENT_HOLD_RELEASED: _ClassVar[MovementType]
    MOVEMENT_EXPIRATION: _ClassVar[MovementType]
    MOVEMENT_VOID: _ClassVar[MovementType]
    MOVEMENT_REVERSAL: _ClassVar[MovementType]
    MOVEMENT_TRANSFER_IN: _ClassVar[MovementType]
    MOVEMENT_TRANSFER_OUT: _ClassVar[MovementType]

class ExportFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPORT_FORMAT_UNSPECIFIED: _ClassVar[ExportFormat]
    EXPORT_CSV: _ClassVar[ExportFormat]
    EXPORT_JSON: _ClassVar[ExportFormat]

class ExportKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPORT_KIND_UNSPECIFIED: _ClassVar[ExportKind]
    EXPORT_STATEMENT: _ClassVar[ExportKind]
    EXPORT_ENTRIES: _ClassVar[ExportKind]

class ChangeType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANGE_TYPE_UNSPECIFIED: _ClassVar[ChangeType]
    CHANGE_SNAPSHOT: _ClassVar[ChangeType]
    CHANGE_UPDATE: _ClassVar[ChangeType]
    CHANGE_RESYNC: _ClassVar[ChangeType]
LOT_TYPE_UNSPECIFIED: LotType
PURCHASED: LotType
PROMOTIONAL: LotType
COMPENSATORY: LotType
ROLLOVER: LotType
CHARGE_KIND_UNSPECIFIED: ChargeKind
USAGE: ChargeKind
ADD_ON: ChargeKind
FIXED_FEE: ChargeKind
LICENSE: ChargeKind
HOLD_STATUS_UNSPECIFIED: HoldStatus
PENDING: HoldStatus
COMMITTED: HoldStatus
RELEASED: HoldStatus
TOMBSTONE: HoldStatus
EXPIRED_LOT_POLICY_UNSPECIFIED: ExpiredLotPolicy
EXPIRE_AT_ONCE: ExpiredLotPolicy
REINSTATE_WITH_GRACE: ExpiredLotPolicy
ENTRY_KIND_UNSPECIFIED: EntryKind
GRANT: EntryKind
HOLD: EntryKind
POST: EntryKind
RELEASE: EntryKind
EXPIRE: EntryKind
VOID: EntryKind
REINSTATE: EntryKind
TRANSFER_OUT: EntryKind
DEBIT: EntryKind
SORT_KEY_UNSPECIFIED: SortKey
PRIORITY_ASC: SortKey
EXPIRY_SOONEST: SortKey
TYPE_ORDER: SortKey
SCOPE_NARROWEST: SortKey
COST_BASIS_LOWEST: SortKey
EFFECTIVE_OLDEST: SortKey
CREATION_ORDER: SortKey
GRANT_REQUEST_STATUS_UNSPECIFIED: GrantRequestStatus
PENDING_APPROVAL: GrantRequestStatus
APPROVED: GrantRequestStatus
REJECTED: GrantRequestStatus
MOVEMENT_TYPE_UNSPECIFIED: MovementType
MOVEMENT_GRANT: MovementType
MOVEMENT_CONSUMPTION: MovementType
MOVEMENT_HOLD_PLACED: MovementType
MOVEMENT_HOLD_RELEASED: MovementType
MOVEMENT_EXPIRATION: MovementType
MOVEMENT_VOID: MovementType
MOVEMENT_REVERSAL: MovementType
MOVEMENT_TRANSFER_IN: MovementType
MOVEMENT_TRANSFER_OUT: MovementType
EXPORT_FORMAT_UNSPECIFIED: ExportFormat
EXPORT_CSV: ExportFormat
EXPORT_JSON: ExportFormat
EXPORT_KIND_UNSPECIFIED: ExportKind
EXPORT_STATEMENT: ExportKind
EXPORT_ENTRIES: ExportKind
CHANGE_TYPE_UNSPECIFIED: ChangeType
CHANGE_SNAPSHOT: ChangeType
CHANGE_UPDATE: ChangeType
CHANGE_RESYNC: ChangeType

class RevokePortalLinkRequest(_message.Message):
    __slots__ = ("idempotency_key", "link", "reason")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    LINK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    link: str
    reason: str
    def __init__(self, idempotency_key: _Optional[str] = ..., link: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class PortalLinkRevocation(_message.Message):
    __slots__ = ("session_id", "customer_id", "account_id", "expires_at", "revoked_at", "reason", "revoked_by")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REVOKED_BY_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    customer_id: str
    account_id: str
    expires_at: _timestamp_pb2.Timestamp
    revoked_at: _timestamp_pb2.Timestamp
    reason: str
    revoked_by: str
    def __init__(self, session_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., account_id: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., revoked_by: _Optional[str] = ...) -> None: ...

class Account(_message.Message):
    __slots__ = ("account_id", "parent_account_id", "name", "created_at")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    parent_account_id: str
    name: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, account_id: _Optional[str] = ..., parent_account_id: _Optional[str] = ..., name: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateAccountRequest(_message.Message):
    __slots__ = ("idempotency_key", "account_id", "parent_account_id", "name")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    account_id: str
    parent_account_id: str
    name: str
    def __init__(self, idempotency_key: _Optional[str] = ..., account_id: _Optional[str] = ..., parent_account_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class GetAccountRequest(_message.Message):
    __slots__ = ("account_id",)
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    def __init__(self, account_id: _Optional[str] = ...) -> None: ...

class ListAccountsRequest(_message.Message):
    __slots__ = ("parent_account_id", "page_size", "page_token")
    PARENT_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent_account_id: str
    page_size: int
    page_token: str
    def __init__(self, parent_account_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAccountsResponse(_message.Message):
    __slots__ = ("accounts", "next_page_token")
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    accounts: _containers.RepeatedCompositeFieldContainer[Account]
    next_page_token: str
    def __init__(self, accounts: _Optional[_Iterable[_Union[Account, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Unit(_message.Message):
    __slots__ = ("code", "scale")
    CODE_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    code: str
    scale: int
    def __init__(self, code: _Optional[str] = ..., scale: _Optional[int] = ...) -> None: ...

class DefineUnitRequest(_message.Message):
    __slots__ = ("idempotency_key", "code", "scale")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    code: str
    scale: int
    def __init__(self, idempotency_key: _Optional[str] = ..., code: _Optional[str] = ..., scale: _Optional[int] = ...) -> None: ...

class ListUnitsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListUnitsResponse(_message.Message):
    __slots__ = ("units",)
    UNITS_FIELD_NUMBER: _ClassVar[int]
    units: _containers.RepeatedCompositeFieldContainer[Unit]
    def __init__(self, units: _Optional[_Iterable[_Union[Unit, _Mapping]]] = ...) -> None: ...

class Rate(_message.Message):
    __slots__ = ("unit", "currency", "rate", "effective_at", "version", "created_at")
    UNIT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_AT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    unit: str
    currency: str
    rate: str
    effective_at: _timestamp_pb2.Timestamp
    version: int
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, unit: _Optional[str] = ..., currency: _Optional[str] = ..., rate: _Optional[str] = ..., effective_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., version: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PublishRateRequest(_message.Message):
    __slots__ = ("idempotency_key", "unit", "currency", "rate", "effective_at")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_AT_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    unit: str
    currency: str
    rate: str
    effective_at: _timestamp_pb2.Timestamp
    def __init__(self, idempotency_key: _Optional[str] = ..., unit: _Optional[str] = ..., currency: _Optional[str] = ..., rate: _Optional[str] = ..., effective_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListRatesRequest(_message.Message):
    __slots__ = ("unit", "currency")
    UNIT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    unit: str
    currency: str
    def __init__(self, unit: _Optional[str] = ..., currency: _Optional[str] = ...) -> None: ...

class ListRatesResponse(_message.Message):
    __slots__ = ("rates",)
    RATES_FIELD_NUMBER: _ClassVar[int]
    rates: _containers.RepeatedCompositeFieldContainer[Rate]
    def __init__(self, rates: _Optional[_Iterable[_Union[Rate, _Mapping]]] = ...) -> None: ...

class Scope(_message.Message):
    __slots__ = ("kinds", "names")
    KINDS_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    kinds: _containers.RepeatedScalarFieldContainer[ChargeKind]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kinds: _Optional[_Iterable[_Union[ChargeKind, str]]] = ..., names: _Optional[_Iterable[str]] = ...) -> None: ...

class LotBalance(_message.Message):
    __slots__ = ("granted", "reinstated", "available", "held", "consumed", "expired", "voided", "transferred_out", "pending_expiry")
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    REINSTATED_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    CONSUMED_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    VOIDED_FIELD_NUMBER: _ClassVar[int]
    TRANSFERRED_OUT_FIELD_NUMBER: _ClassVar[int]
    PENDING_EXPIRY_FIELD_NUMBER: _ClassVar[int]
    granted: str
    reinstated: str
    available: str
    held: str
    consumed: str
    expired: str
    voided: str
    transferred_out: str
    pending_expiry: str
    def __init__(self, granted: _Optional[str] = ..., reinstated: _Optional[str] = ..., available: _Optional[str] = ..., held: _Optional[str] = ..., consumed: _Optional[str] = ..., expired: _Optional[str] = ..., voided: _Optional[str] = ..., transferred_out: _Optional[str] = ..., pending_expiry: _Optional[str] = ...) -> None: ...

class RolloverPolicy(_message.Message):
    __slots__ = ("max_amount", "max_percent", "expires_after_s")
    MAX_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_PERCENT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    max_amount: str
    max_percent: int
    expires_after_s: int
    def __init__(self, max_amount: _Optional[str] = ..., max_percent: _Optional[int] = ..., expires_after_s: _Optional[int] = ...) -> None: ...

class Lot(_message.Message):
    __slots__ = ("lot_id", "account_id", "type", "unit", "amount", "priority", "effective_at", "expires_at", "scope", "cost_basis", "source", "reason_code", "campaign_id", "incident_id", "granted_by", "created_at", "balance", "origin_lot_id", "voided_at", "usable_until", "grant_request", "rollover")
    LOT_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    COST_BASIS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REASON_CODE_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    INCIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    GRANTED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_LOT_ID_FIELD_NUMBER: _ClassVar[int]
    VOIDED_AT_FIELD_NUMBER: _ClassVar[int]
    USABLE_UNTIL_FIELD_NUMBER: _ClassVar[int]
    GRANT_REQUEST_FIELD_NUMBER: _ClassVar[int]
    ROLLOVER_FIELD_NUMBER: _ClassVar[int]
    lot_id: str
    account_id: str
    type: LotType
    unit: str
    amount: str
    priority: int
    effective_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    scope: Scope
    cost_basis: str
    source: str
    reason_code: str
    campaign_id: str
    incident_id: str
    granted_by: str
    created_at: _timestamp_pb2.Timestamp
    balance: LotBalance
    origin_lot_id: str
    voided_at: _timestamp_pb2.Timestamp
    usable_until: _timestamp_pb2.Timestamp
    grant_request: GrantRequest
    rollover: RolloverPolicy
    def __init__(self, lot_id: _Optional[str] = ..., account_id: _Optional[str] = ..., type: _Optional[_Union[LotType, str]] = ..., unit: _Optional[str] = ..., amount: _Optional[str] = ..., priority: _Optional[int] = ..., effective_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., scope: _Optional[_Union[Scope, _Mapping]] = ..., cost_basis: _Optional[str] = ..., source: _Optional[str] = ..., reason_code: _Optional[str] = ..., campaign_id: _Optional[str] = ..., incident_id: _Optional[str] = ..., granted_by: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., balance: _Optional[_Union[LotBalance, _Mapping]] = ..., origin_lot_id: _Optional[str] = ..., voided_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., usable_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., grant_request: _Optional[_Union[GrantRequest, _Mapping]] = ..., rollover: _Optional[_Union[RolloverPolicy, _Mapping]] = ...) -> None: ...

class GrantCreditsRequest(_message.Message):
    __slots__ = ("idempotency_key", "account_id", "type", "unit", "amount", "priority", "effective_at", "expires_at", "scope", "cost_basis", "source", "reason_code", "campaign_id", "incident_id", "rollover")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    COST_BASIS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REASON_CODE_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    INCIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROLLOVER_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    account_id: str
    type: LotType
    unit: str
    amount: str
    priority: int
    effective_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    scope: Scope
    cost_basis: str
    source: str
    reason_code: str
    campaign_id: str
    incident_id: str
    rollover: RolloverPolicy
    def __init__(self, idempotency_key: _Optional[str] = ..., account_id: _Optional[str] = ..., type: _Optional[_Union[LotType, str]] = ..., unit: _Optional[str] = ..., amount: _Optional[str] = ..., priority: _Optional[int] = ..., effective_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., scope: _Optional[_Union[Scope, _Mapping]] = ..., cost_basis: _Optional[str] = ..., source: _Optional[str] = ..., reason_code: _Optional[str] = ..., campaign_id: _Optional[str] = ..., incident_id: _Optional[str] = ..., rollover: _Optional[_Union[RolloverPolicy, _Mapping]] = ...) -> None: ...

class GetLotRequest(_message.Message):
    __slots__ = ("lot_id", "as_of")
    LOT_ID_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    lot_id: str
    as_of: _timestamp_pb2.Timestamp
    def __init__(self, lot_id: _Optional[str] = ..., as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListLotsRequest(_message.Message):
    __slots__ = ("account_id", "unit", "include_empty", "page_size", "page_token")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EMPTY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    unit: str
    include_empty: bool
    page_size: int
    page_token: str
    def __init__(self, account_id: _Optional[str] = ..., unit: _Optional[str] = ..., include_empty: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListLotsResponse(_message.Message):
    __slots__ = ("lots", "next_page_token")
    LOTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    lots: _containers.RepeatedCompositeFieldContainer[Lot]
    next_page_token: str
    def __init__(self, lots: _Optional[_Iterable[_Union[Lot, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class VoidGrantRequest(_message.Message):
    __slots__ = ("idempotency_key", "lot_id", "reason")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    LOT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    lot_id: str
    reason: str
    def __init__(self, idempotency_key: _Optional[str] = ..., lot_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class VoidGrantResponse(_message.Message):
    __slots__ = ("lot", "voided_amount")
    LOT_FIELD_NUMBER: _ClassVar[int]
    VOIDED_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    lot: Lot
    voided_amount: str
    def __init__(self, lot: _Optional[_Union[Lot, _Mapping]] = ..., voided_amount: _Optional[str] = ...) -> None: ...

class BalanceBucket(_message.Message):
    __slots__ = ("unit", "type", "available", "held", "consumed", "expired", "voided", "granted", "reinstated", "transferred_out", "upcoming", "pending_expiry")
    UNIT_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    CONSUMED_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    VOIDED_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    REINSTATED_FIELD_NUMBER: _ClassVar[int]
    TRANSFERRED_OUT_FIELD_NUMBER: _ClassVar[int]
    UPCOMING_FIELD_NUMBER: _ClassVar[int]
    PENDING_EXPIRY_FIELD_NUMBER: _ClassVar[int]
    unit: str
    type: LotType
    available: str
    held: str
    consumed: str
    expired: str
    voided: str
    granted: str
    reinstated: str
    transferred_out: str
    upcoming: str
    pending_expiry: str
    def __init__(self, unit: _Optional[str] = ..., type: _Optional[_Union[LotType, str]] = ..., available: _Optional[str] = ..., held: _Optional[str] = ..., consumed: _Optional[str] = ..., expired: _Optional[str] = ..., voided: _Optional[str] = ..., granted: _Optional[str] = ..., reinstated: _Optional[str] = ..., transferred_out: _Optional[str] = ..., upcoming: _Optional[str] = ..., pending_expiry: _Optional[str] = ...) -> None: ...

class Balance(_message.Message):
    __slots__ = ("account_id", "as_of", "totals", "by_type")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    BY_TYPE_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    as_of: _timestamp_pb2.Timestamp
    totals: _containers.RepeatedCompositeFieldContainer[BalanceBucket]
    by_type: _containers.RepeatedCompositeFieldContainer[BalanceBucket]
    def __init__(self, account_id: _Optional[str] = ..., as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., totals: _Optional[_Iterable[_Union[BalanceBucket, _Mapping]]] = ..., by_type: _Optional[_Iterable[_Union[BalanceBucket, _Mapping]]] = ...) -> None: ...

class GetBalanceRequest(_message.Message):
    __slots__ = ("account_id", "as_of")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    as_of: _timestamp_pb2.Timestamp
    def __init__(self, account_id: _Optional[str] = ..., as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("entry_id", "account_id", "lot_id", "kind", "amount", "unit", "effective_at", "recorded_at", "actor", "reason", "reference", "hold_key", "policy_version")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    LOT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_AT_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    HOLD_KEY_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    entry_id: int
    account_id: str
    lot_id: str
    kind: EntryKind
    amount: str
    unit: str
    effective_at: _timestamp_pb2.Timestamp
    recorded_at: _timestamp_pb2.Timestamp
    actor: str
    reason: str
    reference: str
    hold_key: str
    policy_version: int
    def __init__(self, entry_id: _Optional[int] = ..., account_id: _Optional[str] = ..., lot_id: _Optional[str] = ..., kind: _Optional[_Union[EntryKind, str]] = ..., amount: _Optional[str] = ..., unit: _Optional[str] = ..., effective_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., recorded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., reference: _Optional[str] = ..., hold_key: _Optional[str] = ..., policy_version: _Optional[int] = ...) -> None: ...

class ListEntriesRequest(_message.Message):
    __slots__ = ("account_id", "lot_id", "kinds", "reference", "to", "page_size", "page_token")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    LOT_ID_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    lot_id: str
    kinds: _containers.RepeatedScalarFieldContainer[EntryKind]
    reference: str
    to: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, account_id: _Optional[str] = ..., lot_id: _Optional[str] = ..., kinds: _Optional[_Iterable[_Union[EntryKind, str]]] = ..., reference: _Optional[str] = ..., to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., **kwargs) -> None: ...

class ListEntriesResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetLotBoundariesRequest(_message.Message):
    __slots__ = ("account_id", "unit", "period_start", "period_end")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    unit: str
    period_start: _timestamp_pb2.Timestamp
    period_end: _timestamp_pb2.Timestamp
    def __init__(self, account_id: _Optional[str] = ..., unit: _Optional[str] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetLotBoundariesResponse(_message.Message):
    __slots__ = ("instants",)
    INSTANTS_FIELD_NUMBER: _ClassVar[int]
    instants: _containers.RepeatedCompositeFieldContainer[_timestamp_pb2.Timestamp]
    def __init__(self, instants: _Optional[_Iterable[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]]] = ...) -> None: ...

class Charge(_message.Message):
    __slots__ = ("charge_id", "kind", "name", "amount", "service_start", "service_end")
    CHARGE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_START_FIELD_NUMBER: _ClassVar[int]
    SERVICE_END_FIELD_NUMBER: _ClassVar[int]
    charge_id: str
    kind: ChargeKind
    name: str
    amount: str
    service_start: _timestamp_pb2.Timestamp
    service_end: _timestamp_pb2.Timestamp
    def __init__(self, charge_id: _Optional[str] = ..., kind: _Optional[_Union[ChargeKind, str]] = ..., name: _Optional[str] = ..., amount: _Optional[str] = ..., service_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., service_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Allocation(_message.Message):
    __slots__ = ("charge_id", "lot_id", "lot_type", "amount", "posted", "policy_version")
    CHARGE_ID_FIELD_NUMBER: _ClassVar[int]
    LOT_ID_FIELD_NUMBER: _ClassVar[int]
    LOT_TYPE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    POSTED_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    charge_id: str
    lot_id: str
    lot_type: LotType
    amount: str
    posted: str
    policy_version: int
    def __init__(self, charge_id: _Optional[str] = ..., lot_id: _Optional[str] = ..., lot_type: _Optional[_Union[LotType, str]] = ..., amount: _Optional[str] = ..., posted: _Optional[str] = ..., policy_version: _Optional[int] = ...) -> None: ...

class Hold(_message.Message):
    __slots__ = ("hold_key", "account_id", "unit", "status", "requested", "reserved", "posted", "released", "allocations", "created_at", "ttl_expires_at", "resolved_at", "reference", "policy_version", "release_on_ttl")
    HOLD_KEY_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    POSTED_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    TTL_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_AT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    RELEASE_ON_TTL_FIELD_NUMBER: _ClassVar[int]
    hold_key: str
    account_id: str
    unit: str
    status: HoldStatus
    requested: str
    reserved: str
    posted: str
    released: str
    allocations: _containers.RepeatedCompositeFieldContainer[Allocation]
    created_at: _timestamp_pb2.Timestamp
    ttl_expires_at: _timestamp_pb2.Timestamp
    resolved_at: _timestamp_pb2.Timestamp
    reference: str
    policy_version: int
    release_on_ttl: bool
    def __init__(self, hold_key: _Optional[str] = ..., account_id: _Optional[str] = ..., unit: _Optional[str] = ..., status: _Optional[_Union[HoldStatus, str]] = ..., requested: _Optional[str] = ..., reserved: _Optional[str] = ..., posted: _Optional[str] = ..., released: _Optional[str] = ..., allocations: _Optional[_Iterable[_Union[Allocation, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ttl_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resolved_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reference: _Optional[str] = ..., policy_version: _Optional[int] = ..., release_on_ttl: _Optional[bool] = ...) -> None: ...

class ReserveCreditsRequest(_message.Message):
    __slots__ = ("idempotency_key", "hold_key", "account_id", "unit", "charges", "up_to", "ttl_s", "release_on_ttl", "reference")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    HOLD_KEY_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    CHARGES_FIELD_NUMBER: _ClassVar[int]
    UP_TO_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    RELEASE_ON_TTL_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    hold_key: str
    account_id: str
    unit: str
    charges: _containers.RepeatedCompositeFieldContainer[Charge]
    up_to: bool
    ttl_s: int
    release_on_ttl: bool
    reference: str
    def __init__(self, idempotency_key: _Optional[str] = ..., hold_key: _Optional[str] = ..., account_id: _Optional[str] = ..., unit: _Optional[str] = ..., charges: _Optional[_Iterable[_Union[Charge, _Mapping]]] = ..., up_to: _Optional[bool] = ..., ttl_s: _Optional[int] = ..., release_on_ttl: _Optional[bool] = ..., reference: _Optional[str] = ...) -> None: ...

class CommitHoldRequest(_message.Message):
    __slots__ = ("idempotency_key", "hold_key", "amount")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    HOLD_KEY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    hold_key: str
    amount: str
    def __init__(self, idempotency_key: _Optional[str] = ..., hold_key: _Optional[str] = ..., amount: _Optional[str] = ...) -> None: ...

class ReleaseHoldRequest(_message.Message):
    __slots__ = ("idempotency_key", "hold_key", "account_id", "reason")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    HOLD_KEY_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    hold_key: str
    account_id: str
    reason: str
    def __init__(self, idempotency_key: _Optional[str] = ..., hold_key: _Optional[str] = ..., account_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class GetHoldRequest(_message.Message):
    __slots__ = ("hold_key",)
    HOLD_KEY_FIELD_NUMBER: _ClassVar[int]
    hold_key: str
    def __init__(self, hold_key: _Optional[str] = ...) -> None: ...

class ListHoldsRequest(_message.Message):
    __slots__ = ("account_id", "status", "created_before", "hold_key_prefix", "page_size", "page_token")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    HOLD_KEY_PREFIX_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    status: HoldStatus
    created_before: _timestamp_pb2.Timestamp
    hold_key_prefix: str
    page_size: int
    page_token: str
    def __init__(self, account_id: _Optional[str] = ..., status: _Optional[_Union[HoldStatus, str]] = ..., created_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., hold_key_prefix: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListHoldsResponse(_message.Message):
    __slots__ = ("holds", "next_page_token")
    HOLDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    holds: _containers.RepeatedCompositeFieldContainer[Hold]
    next_page_token: str
    def __init__(self, holds: _Optional[_Iterable[_Union[Hold, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DebitCreditsRequest(_message.Message):
    __slots__ = ("idempotency_key", "account_id", "unit", "charges", "reference", "up_to")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    CHARGES_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    UP_TO_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    account_id: str
    unit: str
    charges: _containers.RepeatedCompositeFieldContainer[Charge]
    reference: str
    up_to: bool
    def __init__(self, idempotency_key: _Optional[str] = ..., account_id: _Optional[str] = ..., unit: _Optional[str] = ..., charges: _Optional[_Iterable[_Union[Charge, _Mapping]]] = ..., reference: _Optional[str] = ..., up_to: _Optional[bool] = ...) -> None: ...

class BatchDebitCreditsRequest(_message.Message):
    __slots__ = ("debits",)
    DEBITS_FIELD_NUMBER: _ClassVar[int]
    debits: _containers.RepeatedCompositeFieldContainer[DebitCreditsRequest]
    def __init__(self, debits: _Optional[_Iterable[_Union[DebitCreditsRequest, _Mapping]]] = ...) -> None: ...

class DebitResult(_message.Message):
    __slots__ = ("hold", "error")
    HOLD_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    hold: Hold
    error: RpcError
    def __init__(self, hold: _Optional[_Union[Hold, _Mapping]] = ..., error: _Optional[_Union[RpcError, _Mapping]] = ...) -> None: ...

class RpcError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class BatchDebitCreditsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[DebitResult]
    def __init__(self, results: _Optional[_Iterable[_Union[DebitResult, _Mapping]]] = ...) -> None: ...

class ExpireLotsRequest(_message.Message):
    __slots__ = ("idempotency_key", "as_of", "account_id")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    as_of: _timestamp_pb2.Timestamp
    account_id: str
    def __init__(self, idempotency_key: _Optional[str] = ..., as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., account_id: _Optional[str] = ...) -> None: ...

class ExpireLotsResponse(_message.Message):
    __slots__ = ("lots_expired", "lots")
    LOTS_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    LOTS_FIELD_NUMBER: _ClassVar[int]
    lots_expired: int
    lots: _containers.RepeatedCompositeFieldContainer[Lot]
    def __init__(self, lots_expired: _Optional[int] = ..., lots: _Optional[_Iterable[_Union[Lot, _Mapping]]] = ...) -> None: ...

class RecordSettlementRequest(_message.Message):
    __slots__ = ("idempotency_key", "account_id", "invoiced_through")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    INVOICED_THROUGH_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    account_id: str
    invoiced_through: _timestamp_pb2.Timestamp
    def __init__(self, idempotency_key: _Optional[str] = ..., account_id: _Optional[str] = ..., invoiced_through: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetSettlementRequest(_message.Message):
    __slots__ = ("account_id",)
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    def __init__(self, account_id: _Optional[str] = ...) -> None: ...

class Settlement(_message.Message):
    __slots__ = ("account_id", "billed", "invoiced_through")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    BILLED_FIELD_NUMBER: _ClassVar[int]
    INVOICED_THROUGH_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    billed: bool
    invoiced_through: _timestamp_pb2.Timestamp
    def __init__(self, account_id: _Optional[str] = ..., billed: _Optional[bool] = ..., invoiced_through: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReleaseExpiredHoldsRequest(_message.Message):
    __slots__ = ("idempotency_key", "as_of")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    as_of: _timestamp_pb2.Timestamp
    def __init__(self, idempotency_key: _Optional[str] = ..., as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReleaseExpiredHoldsResponse(_message.Message):
    __slots__ = ("hold_keys",)
    HOLD_KEYS_FIELD_NUMBER: _ClassVar[int]
    hold_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, hold_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class ReverseHoldRequest(_message.Message):
    __slots__ = ("idempotency_key", "hold_key", "expired_lot_policy", "grace_s", "reason")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    HOLD_KEY_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_LOT_POLICY_FIELD_NUMBER: _ClassVar[int]
    GRACE_S_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    hold_key: str
    expired_lot_policy: ExpiredLotPolicy
    grace_s: int
    reason: str
    def __init__(self, idempotency_key: _Optional[str] = ..., hold_key: _Optional[str] = ..., expired_lot_policy: _Optional[_Union[ExpiredLotPolicy, str]] = ..., grace_s: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class ReverseHoldResponse(_message.Message):
    __slots__ = ("hold_key", "reinstated", "expired_at_once")
    HOLD_KEY_FIELD_NUMBER: _ClassVar[int]
    REINSTATED_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_AT_ONCE_FIELD_NUMBER: _ClassVar[int]
    hold_key: str
    reinstated: _containers.RepeatedCompositeFieldContainer[Allocation]
    expired_at_once: str
    def __init__(self, hold_key: _Optional[str] = ..., reinstated: _Optional[_Iterable[_Union[Allocation, _Mapping]]] = ..., expired_at_once: _Optional[str] = ...) -> None: ...

class ReverseReferenceRequest(_message.Message):
    __slots__ = ("idempotency_key", "hold_key", "expired_lot_policy", "grace_s", "reason")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    HOLD_KEY_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_LOT_POLICY_FIELD_NUMBER: _ClassVar[int]
    GRACE_S_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    hold_key: str
    expired_lot_policy: ExpiredLotPolicy
    grace_s: int
    reason: str
    def __init__(self, idempotency_key: _Optional[str] = ..., hold_key: _Optional[str] = ..., expired_lot_policy: _Optional[_Union[ExpiredLotPolicy, str]] = ..., grace_s: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class ReverseReferenceResponse(_message.Message):
    __slots__ = ("hold_key", "reinstated", "expired_at_once")
    HOLD_KEY_FIELD_NUMBER: _ClassVar[int]
    REINSTATED_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_AT_ONCE_FIELD_NUMBER: _ClassVar[int]
    hold_key: str
    reinstated: _containers.RepeatedCompositeFieldContainer[Allocation]
    expired_at_once: str
    def __init__(self, hold_key: _Optional[str] = ..., reinstated: _Optional[_Iterable[_Union[Allocation, _Mapping]]] = ..., expired_at_once: _Optional[str] = ...) -> None: ...

class TransferCreditsRequest(_message.Message):
    __slots__ = ("idempotency_key", "from_account_id", "to_account_id", "unit", "amount", "reason")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    FROM_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    TO_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    from_account_id: str
    to_account_id: str
    unit: str
    amount: str
    reason: str
    def __init__(self, idempotency_key: _Optional[str] = ..., from_account_id: _Optional[str] = ..., to_account_id: _Optional[str] = ..., unit: _Optional[str] = ..., amount: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class TransferLeg(_message.Message):
    __slots__ = ("source_lot_id", "destination_lot_id", "amount")
    SOURCE_LOT_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_LOT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    source_lot_id: str
    destination_lot_id: str
    amount: str
    def __init__(self, source_lot_id: _Optional[str] = ..., destination_lot_id: _Optional[str] = ..., amount: _Optional[str] = ...) -> None: ...

class TransferCreditsResponse(_message.Message):
    __slots__ = ("transfer_id", "legs", "reversed")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    LEGS_FIELD_NUMBER: _ClassVar[int]
    REVERSED_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    legs: _containers.RepeatedCompositeFieldContainer[TransferLeg]
    reversed: bool
    def __init__(self, transfer_id: _Optional[str] = ..., legs: _Optional[_Iterable[_Union[TransferLeg, _Mapping]]] = ..., reversed: _Optional[bool] = ...) -> None: ...

class ReverseTransferRequest(_message.Message):
    __slots__ = ("idempotency_key", "transfer_id")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    transfer_id: str
    def __init__(self, idempotency_key: _Optional[str] = ..., transfer_id: _Optional[str] = ...) -> None: ...

class SetTransferLimitRequest(_message.Message):
    __slots__ = ("idempotency_key", "account_id", "unit", "max_per_transfer")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_TRANSFER_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    account_id: str
    unit: str
    max_per_transfer: str
    def __init__(self, idempotency_key: _Optional[str] = ..., account_id: _Optional[str] = ..., unit: _Optional[str] = ..., max_per_transfer: _Optional[str] = ...) -> None: ...

class TransferLimit(_message.Message):
    __slots__ = ("account_id", "unit", "max_per_transfer")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_TRANSFER_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    unit: str
    max_per_transfer: str
    def __init__(self, account_id: _Optional[str] = ..., unit: _Optional[str] = ..., max_per_transfer: _Optional[str] = ...) -> None: ...

class ConsumptionPolicy(_message.Message):
    __slots__ = ("account_id", "version", "sort_keys", "type_order", "created_at")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SORT_KEYS_FIELD_NUMBER: _ClassVar[int]
    TYPE_ORDER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    version: int
    sort_keys: _containers.RepeatedScalarFieldContainer[SortKey]
    type_order: _containers.RepeatedScalarFieldContainer[LotType]
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, account_id: _Optional[str] = ..., version: _Optional[int] = ..., sort_keys: _Optional[_Iterable[_Union[SortKey, str]]] = ..., type_order: _Optional[_Iterable[_Union[LotType, str]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SetConsumptionPolicyRequest(_message.Message):
    __slots__ = ("idempotency_key", "account_id", "sort_keys", "type_order")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    SORT_KEYS_FIELD_NUMBER: _ClassVar[int]
    TYPE_ORDER_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    account_id: str
    sort_keys: _containers.RepeatedScalarFieldContainer[SortKey]
    type_order: _containers.RepeatedScalarFieldContainer[LotType]
    def __init__(self, idempotency_key: _Optional[str] = ..., account_id: _Optional[str] = ..., sort_keys: _Optional[_Iterable[_Union[SortKey, str]]] = ..., type_order: _Optional[_Iterable[_Union[LotType, str]]] = ...) -> None: ...

class GetConsumptionPolicyRequest(_message.Message):
    __slots__ = ("account_id",)
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    def __init__(self, account_id: _Optional[str] = ...) -> None: ...

class ExplainAllocationRequest(_message.Message):
    __slots__ = ("hold_key",)
    HOLD_KEY_FIELD_NUMBER: _ClassVar[int]
    hold_key: str
    def __init__(self, hold_key: _Optional[str] = ...) -> None: ...

class LotConsidered(_message.Message):
    __slots__ = ("lot_id", "lot_type", "eligible", "why", "allocated", "sort_values")
    LOT_ID_FIELD_NUMBER: _ClassVar[int]
    LOT_TYPE_FIELD_NUMBER: _ClassVar[int]
    ELIGIBLE_FIELD_NUMBER: _ClassVar[int]
    WHY_FIELD_NUMBER: _ClassVar[int]
    ALLOCATED_FIELD_NUMBER: _ClassVar[int]
    SORT_VALUES_FIELD_NUMBER: _ClassVar[int]
    lot_id: str
    lot_type: LotType
    eligible: bool
    why: str
    allocated: str
    sort_values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, lot_id: _Optional[str] = ..., lot_type: _Optional[_Union[LotType, str]] = ..., eligible: _Optional[bool] = ..., why: _Optional[str] = ..., allocated: _Optional[str] = ..., sort_values: _Optional[_Iterable[str]] = ...) -> None: ...

class ChargeExplanation(_message.Message):
    __slots__ = ("charge_id", "lots")
    CHARGE_ID_FIELD_NUMBER: _ClassVar[int]
    LOTS_FIELD_NUMBER: _ClassVar[int]
    charge_id: str
    lots: _containers.RepeatedCompositeFieldContainer[LotConsidered]
    def __init__(self, charge_id: _Optional[str] = ..., lots: _Optional[_Iterable[_Union[LotConsidered, _Mapping]]] = ...) -> None: ...

class ExplainAllocationResponse(_message.Message):
    __slots__ = ("hold_key", "policy", "charges")
    HOLD_KEY_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    CHARGES_FIELD_NUMBER: _ClassVar[int]
    hold_key: str
    policy: ConsumptionPolicy
    charges: _containers.RepeatedCompositeFieldContainer[ChargeExplanation]
    def __init__(self, hold_key: _Optional[str] = ..., policy: _Optional[_Union[ConsumptionPolicy, _Mapping]] = ..., charges: _Optional[_Iterable[_Union[ChargeExplanation, _Mapping]]] = ...) -> None: ...

class VerifyJournalRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VerifyJournalResponse(_message.Message):
    __slots__ = ("ok", "entries", "lots", "violations")
    OK_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    LOTS_FIELD_NUMBER: _ClassVar[int]
    VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    entries: int
    lots: int
    violations: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ok: _Optional[bool] = ..., entries: _Optional[int] = ..., lots: _Optional[int] = ..., violations: _Optional[_Iterable[str]] = ...) -> None: ...

class SetSupportGrantLimitsRequest(_message.Message):
    __slots__ = ("idempotency_key", "unit", "max_per_grant", "max_per_day", "approval_threshold")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_GRANT_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_DAY_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    unit: str
    max_per_grant: str
    max_per_day: str
    approval_threshold: str
    def __init__(self, idempotency_key: _Optional[str] = ..., unit: _Optional[str] = ..., max_per_grant: _Optional[str] = ..., max_per_day: _Optional[str] = ..., approval_threshold: _Optional[str] = ...) -> None: ...

class GetSupportGrantLimitsRequest(_message.Message):
    __slots__ = ("unit",)
    UNIT_FIELD_NUMBER: _ClassVar[int]
    unit: str
    def __init__(self, unit: _Optional[str] = ...) -> None: ...

class SupportGrantLimits(_message.Message):
    __slots__ = ("unit", "max_per_grant", "max_per_day", "is_default", "approval_threshold")
    UNIT_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_GRANT_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_DAY_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    unit: str
    max_per_grant: str
    max_per_day: str
    is_default: bool
    approval_threshold: str
    def __init__(self, unit: _Optional[str] = ..., max_per_grant: _Optional[str] = ..., max_per_day: _Optional[str] = ..., is_default: _Optional[bool] = ..., approval_threshold: _Optional[str] = ...) -> None: ...

class GrantRequest(_message.Message):
    __slots__ = ("request_id", "status", "grant", "requested_by", "limit_exceeded", "decided_by", "decision_reason", "lot_id", "created_at", "decided_at", "requested_by_owner", "decided_by_owner")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_EXCEEDED_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    DECISION_REASON_FIELD_NUMBER: _ClassVar[int]
    LOT_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_OWNER_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_OWNER_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    status: GrantRequestStatus
    grant: GrantCreditsRequest
    requested_by: str
    limit_exceeded: str
    decided_by: str
    decision_reason: str
    lot_id: str
    created_at: _timestamp_pb2.Timestamp
    decided_at: _timestamp_pb2.Timestamp
    requested_by_owner: str
    decided_by_owner: str
    def __init__(self, request_id: _Optional[str] = ..., status: _Optional[_Union[GrantRequestStatus, str]] = ..., grant: _Optional[_Union[GrantCreditsRequest, _Mapping]] = ..., requested_by: _Optional[str] = ..., limit_exceeded: _Optional[str] = ..., decided_by: _Optional[str] = ..., decision_reason: _Optional[str] = ..., lot_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., decided_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., requested_by_owner: _Optional[str] = ..., decided_by_owner: _Optional[str] = ...) -> None: ...

class GetGrantRequestRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class ListGrantRequestsRequest(_message.Message):
    __slots__ = ("status", "account_id", "page_size", "page_token")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    status: GrantRequestStatus
    account_id: str
    page_size: int
    page_token: str
    def __init__(self, status: _Optional[_Union[GrantRequestStatus, str]] = ..., account_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListGrantRequestsResponse(_message.Message):
    __slots__ = ("requests", "next_page_token")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[GrantRequest]
    next_page_token: str
    def __init__(self, requests: _Optional[_Iterable[_Union[GrantRequest, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ApproveGrantRequestRequest(_message.Message):
    __slots__ = ("idempotency_key", "request_id", "reason")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    request_id: str
    reason: str
    def __init__(self, idempotency_key: _Optional[str] = ..., request_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RejectGrantRequestRequest(_message.Message):
    __slots__ = ("idempotency_key", "request_id", "reason")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    request_id: str
    reason: str
    def __init__(self, idempotency_key: _Optional[str] = ..., request_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class StatementLot(_message.Message):
    __slots__ = ("lot_id", "type", "amount", "expires_at")
    LOT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    lot_id: str
    type: LotType
    amount: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, lot_id: _Optional[str] = ..., type: _Optional[_Union[LotType, str]] = ..., amount: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StatementItem(_message.Message):
    __slots__ = ("charge_id", "name", "amount")
    CHARGE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    charge_id: str
    name: str
    amount: str
    def __init__(self, charge_id: _Optional[str] = ..., name: _Optional[str] = ..., amount: _Optional[str] = ...) -> None: ...

class StatementLine(_message.Message):
    __slots__ = ("type", "recorded_at", "reference", "hold_key", "reason", "amount", "available_change", "balance", "available", "lots", "items", "first_entry_id", "last_entry_id")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    HOLD_KEY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_CHANGE_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    LOTS_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    FIRST_ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    type: MovementType
    recorded_at: _timestamp_pb2.Timestamp
    reference: str
    hold_key: str
    reason: str
    amount: str
    available_change: str
    balance: str
    available: str
    lots: _containers.RepeatedCompositeFieldContainer[StatementLot]
    items: _containers.RepeatedCompositeFieldContainer[StatementItem]
    first_entry_id: int
    last_entry_id: int
    def __init__(self, type: _Optional[_Union[MovementType, str]] = ..., recorded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reference: _Optional[str] = ..., hold_key: _Optional[str] = ..., reason: _Optional[str] = ..., amount: _Optional[str] = ..., available_change: _Optional[str] = ..., balance: _Optional[str] = ..., available: _Optional[str] = ..., lots: _Optional[_Iterable[_Union[StatementLot, _Mapping]]] = ..., items: _Optional[_Iterable[_Union[StatementItem, _Mapping]]] = ..., first_entry_id: _Optional[int] = ..., last_entry_id: _Optional[int] = ...) -> None: ...

class StatementTypeTotals(_message.Message):
    __slots__ = ("type", "opening_balance", "credits_in", "credits_out", "closing_balance", "closing_available")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OPENING_BALANCE_FIELD_NUMBER: _ClassVar[int]
    CREDITS_IN_FIELD_NUMBER: _ClassVar[int]
    CREDITS_OUT_FIELD_NUMBER: _ClassVar[int]
    CLOSING_BALANCE_FIELD_NUMBER: _ClassVar[int]
    CLOSING_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    type: LotType
    opening_balance: str
    credits_in: str
    credits_out: str
    closing_balance: str
    closing_available: str
    def __init__(self, type: _Optional[_Union[LotType, str]] = ..., opening_balance: _Optional[str] = ..., credits_in: _Optional[str] = ..., credits_out: _Optional[str] = ..., closing_balance: _Optional[str] = ..., closing_available: _Optional[str] = ...) -> None: ...

class ExpiryPoint(_message.Message):
    __slots__ = ("expires_at", "lot_id", "type", "amount")
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    LOT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    expires_at: _timestamp_pb2.Timestamp
    lot_id: str
    type: LotType
    amount: str
    def __init__(self, expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lot_id: _Optional[str] = ..., type: _Optional[_Union[LotType, str]] = ..., amount: _Optional[str] = ...) -> None: ...

class GetStatementRequest(_message.Message):
    __slots__ = ("account_id", "unit", "to", "page_size", "page_token", "trailing_days")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TRAILING_DAYS_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    unit: str
    to: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    trailing_days: int
    def __init__(self, account_id: _Optional[str] = ..., unit: _Optional[str] = ..., to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., trailing_days: _Optional[int] = ..., **kwargs) -> None: ...

class Statement(_message.Message):
    __slots__ = ("account_id", "unit", "to", "opening_balance", "opening_available", "closing_balance", "closing_available", "credits_in", "credits_out", "lines", "next_page_token", "by_type", "expiry_timeline", "trailing_days", "trailing_consumption", "days_until_depletion", "entries")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    OPENING_BALANCE_FIELD_NUMBER: _ClassVar[int]
    OPENING_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    CLOSING_BALANCE_FIELD_NUMBER: _ClassVar[int]
    CLOSING_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    CREDITS_IN_FIELD_NUMBER: _ClassVar[int]
    CREDITS_OUT_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    BY_TYPE_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_TIMELINE_FIELD_NUMBER: _ClassVar[int]
    TRAILING_DAYS_FIELD_NUMBER: _ClassVar[int]
    TRAILING_CONSUMPTION_FIELD_NUMBER: _ClassVar[int]
    DAYS_UNTIL_DEPLETION_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    unit: str
    to: _timestamp_pb2.Timestamp
    opening_balance: str
    opening_available: str
    closing_balance: str
    closing_available: str
    credits_in: str
    credits_out: str
    lines: _containers.RepeatedCompositeFieldContainer[StatementLine]
    next_page_token: str
    by_type: _containers.RepeatedCompositeFieldContainer[StatementTypeTotals]
    expiry_timeline: _containers.RepeatedCompositeFieldContainer[ExpiryPoint]
    trailing_days: int
    trailing_consumption: str
    days_until_depletion: str
    entries: int
    def __init__(self, account_id: _Optional[str] = ..., unit: _Optional[str] = ..., to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., opening_balance: _Optional[str] = ..., opening_available: _Optional[str] = ..., closing_balance: _Optional[str] = ..., closing_available: _Optional[str] = ..., credits_in: _Optional[str] = ..., credits_out: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[StatementLine, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., by_type: _Optional[_Iterable[_Union[StatementTypeTotals, _Mapping]]] = ..., expiry_timeline: _Optional[_Iterable[_Union[ExpiryPoint, _Mapping]]] = ..., trailing_days: _Optional[int] = ..., trailing_consumption: _Optional[str] = ..., days_until_depletion: _Optional[str] = ..., entries: _Optional[int] = ..., **kwargs) -> None: ...

class ExportStatementRequest(_message.Message):
    __slots__ = ("account_id", "unit", "to", "format", "kind")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    unit: str
    to: _timestamp_pb2.Timestamp
    format: ExportFormat
    kind: ExportKind
    def __init__(self, account_id: _Optional[str] = ..., unit: _Optional[str] = ..., to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., format: _Optional[_Union[ExportFormat, str]] = ..., kind: _Optional[_Union[ExportKind, str]] = ..., **kwargs) -> None: ...

class ExportChunk(_message.Message):
    __slots__ = ("data", "entries_done", "entries_total")
    DATA_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_DONE_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    entries_done: int
    entries_total: int
    def __init__(self, data: _Optional[bytes] = ..., entries_done: _Optional[int] = ..., entries_total: _Optional[int] = ...) -> None: ...

class WatchBalanceRequest(_message.Message):
    __slots__ = ("account_id", "after_sequence", "include_entries")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    after_sequence: int
    include_entries: bool
    def __init__(self, account_id: _Optional[str] = ..., after_sequence: _Optional[int] = ..., include_entries: _Optional[bool] = ...) -> None: ...

class UnitBalance(_message.Message):
    __slots__ = ("unit", "available", "held", "balance")
    UNIT_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    unit: str
    available: str
    held: str
    balance: str
    def __init__(self, unit: _Optional[str] = ..., available: _Optional[str] = ..., held: _Optional[str] = ..., balance: _Optional[str] = ...) -> None: ...

class BalanceChange(_message.Message):
    __slots__ = ("type", "account_id", "sequence", "recorded_at", "balances", "entries", "reason", "following")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AT_FIELD_NUMBER: _ClassVar[int]
    BALANCES_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FOLLOWING_FIELD_NUMBER: _ClassVar[int]
    type: ChangeType
    account_id: str
    sequence: int
    recorded_at: _timestamp_pb2.Timestamp
    balances: _containers.RepeatedCompositeFieldContainer[UnitBalance]
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    reason: str
    following: _containers.RepeatedCompositeFieldContainer[BalanceChange]
    def __init__(self, type: _Optional[_Union[ChangeType, str]] = ..., account_id: _Optional[str] = ..., sequence: _Optional[int] = ..., recorded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., balances: _Optional[_Iterable[_Union[UnitBalance, _Mapping]]] = ..., entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., reason: _Optional[str] = ..., following: _Optional[_Iterable[_Union[BalanceChange, _Mapping]]] = ...) -> None: ...
