import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Granularity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRANULARITY_UNSPECIFIED: _ClassVar[Granularity]
    MONTH: _ClassVar[Granularity]
    DAY: _ClassVar[Granularity]
GRANULARITY_UNSPECIFIED: Granularity
MONTH: Granularity
DAY: Granularity

class GetFinanceRulesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetFinanceRulesRequest(_message.Message):
    __slots__ = ("idempotency_key", "rules_json")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    RULES_JSON_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    rules_json: str
    def __init__(self, idempotency_key: _Optional[str] = ..., rules_json: _Optional[str] = ...) -> None: ...

class FinanceRules(_message.Message):
    __slots__ = ("version", "rules_json")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RULES_JSON_FIELD_NUMBER: _ClassVar[int]
    version: int
    rules_json: str
    def __init__(self, version: _Optional[int] = ..., rules_json: _Optional[str] = ...) -> None: ...

class ProjectBooksRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BooksStatus(_message.Message):
    __slots__ = ("last_entry_id", "entries_projected", "entries_behind", "closed_through", "projected_now")
    LAST_ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_PROJECTED_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_BEHIND_FIELD_NUMBER: _ClassVar[int]
    CLOSED_THROUGH_FIELD_NUMBER: _ClassVar[int]
    PROJECTED_NOW_FIELD_NUMBER: _ClassVar[int]
    last_entry_id: int
    entries_projected: int
    entries_behind: int
    closed_through: _timestamp_pb2.Timestamp
    projected_now: int
    def __init__(self, last_entry_id: _Optional[int] = ..., entries_projected: _Optional[int] = ..., entries_behind: _Optional[int] = ..., closed_through: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., projected_now: _Optional[int] = ...) -> None: ...

class ClosePeriodRequest(_message.Message):
    __slots__ = ("idempotency_key", "period")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    period: str
    def __init__(self, idempotency_key: _Optional[str] = ..., period: _Optional[str] = ...) -> None: ...

class ClosePeriodResponse(_message.Message):
    __slots__ = ("period", "closed_through", "already_closed")
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    CLOSED_THROUGH_FIELD_NUMBER: _ClassVar[int]
    ALREADY_CLOSED_FIELD_NUMBER: _ClassVar[int]
    period: str
    closed_through: _timestamp_pb2.Timestamp
    already_closed: bool
    def __init__(self, period: _Optional[str] = ..., closed_through: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., already_closed: _Optional[bool] = ...) -> None: ...

class GetRevenueReportRequest(_message.Message):
    __slots__ = ("from_period", "to_period", "granularity")
    FROM_PERIOD_FIELD_NUMBER: _ClassVar[int]
    TO_PERIOD_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    from_period: str
    to_period: str
    granularity: Granularity
    def __init__(self, from_period: _Optional[str] = ..., to_period: _Optional[str] = ..., granularity: _Optional[_Union[Granularity, str]] = ...) -> None: ...

class RevenueRow(_message.Message):
    __slots__ = ("period", "account_id", "lot_type", "currency", "recognized", "breakage", "contra_revenue", "promotional_expense", "goodwill_expense", "deferred_issued", "deferred_closing")
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    LOT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    RECOGNIZED_FIELD_NUMBER: _ClassVar[int]
    BREAKAGE_FIELD_NUMBER: _ClassVar[int]
    CONTRA_REVENUE_FIELD_NUMBER: _ClassVar[int]
    PROMOTIONAL_EXPENSE_FIELD_NUMBER: _ClassVar[int]
    GOODWILL_EXPENSE_FIELD_NUMBER: _ClassVar[int]
    DEFERRED_ISSUED_FIELD_NUMBER: _ClassVar[int]
    DEFERRED_CLOSING_FIELD_NUMBER: _ClassVar[int]
    period: str
    account_id: str
    lot_type: str
    currency: str
    recognized: str
    breakage: str
    contra_revenue: str
    promotional_expense: str
    goodwill_expense: str
    deferred_issued: str
    deferred_closing: str
    def __init__(self, period: _Optional[str] = ..., account_id: _Optional[str] = ..., lot_type: _Optional[str] = ..., currency: _Optional[str] = ..., recognized: _Optional[str] = ..., breakage: _Optional[str] = ..., contra_revenue: _Optional[str] = ..., promotional_expense: _Optional[str] = ..., goodwill_expense: _Optional[str] = ..., deferred_issued: _Optional[str] = ..., deferred_closing: _Optional[str] = ...) -> None: ...

class RevenueReport(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[RevenueRow]
    def __init__(self, rows: _Optional[_Iterable[_Union[RevenueRow, _Mapping]]] = ...) -> None: ...

class GetLiabilityReportRequest(_message.Message):
    __slots__ = ("as_of", "by_customer")
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    BY_CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    as_of: _timestamp_pb2.Timestamp
    by_customer: bool
    def __init__(self, as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., by_customer: _Optional[bool] = ...) -> None: ...

class LiabilityRow(_message.Message):
    __slots__ = ("currency", "lot_type", "account_id", "deferred_gross", "expected_breakage", "deferred_net", "free_outstanding", "lots_money_remaining", "matches_lots")
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    LOT_TYPE_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    DEFERRED_GROSS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_BREAKAGE_FIELD_NUMBER: _ClassVar[int]
    DEFERRED_NET_FIELD_NUMBER: _ClassVar[int]
    FREE_OUTSTANDING_FIELD_NUMBER: _ClassVar[int]
    LOTS_MONEY_REMAINING_FIELD_NUMBER: _ClassVar[int]
    MATCHES_LOTS_FIELD_NUMBER: _ClassVar[int]
    currency: str
    lot_type: str
    account_id: str
    deferred_gross: str
    expected_breakage: str
    deferred_net: str
    free_outstanding: str
    lots_money_remaining: str
    matches_lots: bool
    def __init__(self, currency: _Optional[str] = ..., lot_type: _Optional[str] = ..., account_id: _Optional[str] = ..., deferred_gross: _Optional[str] = ..., expected_breakage: _Optional[str] = ..., deferred_net: _Optional[str] = ..., free_outstanding: _Optional[str] = ..., lots_money_remaining: _Optional[str] = ..., matches_lots: _Optional[bool] = ...) -> None: ...

class LiabilityReport(_message.Message):
    __slots__ = ("as_of", "rows")
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    as_of: _timestamp_pb2.Timestamp
    rows: _containers.RepeatedCompositeFieldContainer[LiabilityRow]
    def __init__(self, as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rows: _Optional[_Iterable[_Union[LiabilityRow, _Mapping]]] = ...) -> None: ...

class GetLiabilityRollForwardRequest(_message.Message):
    __slots__ = ("period",)
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    period: str
    def __init__(self, period: _Optional[str] = ...) -> None: ...

class RollForwardRow(_message.Message):
    __slots__ = ("currency", "opening", "issued", "transferred_in", "transferred_out", "recognized", "breakage", "voided", "closing", "balanced")
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    OPENING_FIELD_NUMBER: _ClassVar[int]
    ISSUED_FIELD_NUMBER: _ClassVar[int]
    TRANSFERRED_IN_FIELD_NUMBER: _ClassVar[int]
    TRANSFERRED_OUT_FIELD_NUMBER: _ClassVar[int]
    RECOGNIZED_FIELD_NUMBER: _ClassVar[int]
    BREAKAGE_FIELD_NUMBER: _ClassVar[int]
    VOIDED_FIELD_NUMBER: _ClassVar[int]
    CLOSING_FIELD_NUMBER: _ClassVar[int]
    BALANCED_FIELD_NUMBER: _ClassVar[int]
    currency: str
    opening: str
    issued: str
    transferred_in: str
    transferred_out: str
    recognized: str
    breakage: str
    voided: str
    closing: str
    balanced: bool
    def __init__(self, currency: _Optional[str] = ..., opening: _Optional[str] = ..., issued: _Optional[str] = ..., transferred_in: _Optional[str] = ..., transferred_out: _Optional[str] = ..., recognized: _Optional[str] = ..., breakage: _Optional[str] = ..., voided: _Optional[str] = ..., closing: _Optional[str] = ..., balanced: _Optional[bool] = ...) -> None: ...

class LiabilityRollForward(_message.Message):
    __slots__ = ("period", "rows")
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    period: str
    rows: _containers.RepeatedCompositeFieldContainer[RollForwardRow]
    def __init__(self, period: _Optional[str] = ..., rows: _Optional[_Iterable[_Union[RollForwardRow, _Mapping]]] = ...) -> None: ...

class GetBreakageReportRequest(_message.Message):
    __slots__ = ("from_period", "to_period", "granularity")
    FROM_PERIOD_FIELD_NUMBER: _ClassVar[int]
    TO_PERIOD_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    from_period: str
    to_period: str
    granularity: Granularity
    def __init__(self, from_period: _Optional[str] = ..., to_period: _Optional[str] = ..., granularity: _Optional[_Union[Granularity, str]] = ...) -> None: ...

class BreakageRow(_message.Message):
    __slots__ = ("period", "method", "lot_type", "currency", "expired", "expected", "total")
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    LOT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    period: str
    method: str
    lot_type: str
    currency: str
    expired: str
    expected: str
    total: str
    def __init__(self, period: _Optional[str] = ..., method: _Optional[str] = ..., lot_type: _Optional[str] = ..., currency: _Optional[str] = ..., expired: _Optional[str] = ..., expected: _Optional[str] = ..., total: _Optional[str] = ...) -> None: ...

class BreakageReport(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[BreakageRow]
    def __init__(self, rows: _Optional[_Iterable[_Union[BreakageRow, _Mapping]]] = ...) -> None: ...

class GetProgramReportRequest(_message.Message):
    __slots__ = ("from_period", "to_period")
    FROM_PERIOD_FIELD_NUMBER: _ClassVar[int]
    TO_PERIOD_FIELD_NUMBER: _ClassVar[int]
    from_period: str
    to_period: str
    def __init__(self, from_period: _Optional[str] = ..., to_period: _Optional[str] = ...) -> None: ...

class ProgramRow(_message.Message):
    __slots__ = ("lot_type", "source", "campaign_id", "unit", "currency", "lots", "lots_redeemed", "units_issued", "units_consumed", "units_expired", "units_remaining", "value_issued", "consumption_rate", "breakage_rate", "redemption_rate", "median_time_to_consumption_s", "units_weighted_median_time_to_consumption_s", "units_weighted_mean_time_to_consumption_s")
    LOT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    LOTS_FIELD_NUMBER: _ClassVar[int]
    LOTS_REDEEMED_FIELD_NUMBER: _ClassVar[int]
    UNITS_ISSUED_FIELD_NUMBER: _ClassVar[int]
    UNITS_CONSUMED_FIELD_NUMBER: _ClassVar[int]
    UNITS_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    UNITS_REMAINING_FIELD_NUMBER: _ClassVar[int]
    VALUE_ISSUED_FIELD_NUMBER: _ClassVar[int]
    CONSUMPTION_RATE_FIELD_NUMBER: _ClassVar[int]
    BREAKAGE_RATE_FIELD_NUMBER: _ClassVar[int]
    REDEMPTION_RATE_FIELD_NUMBER: _ClassVar[int]
    MEDIAN_TIME_TO_CONSUMPTION_S_FIELD_NUMBER: _ClassVar[int]
    UNITS_WEIGHTED_MEDIAN_TIME_TO_CONSUMPTION_S_FIELD_NUMBER: _ClassVar[int]
    UNITS_WEIGHTED_MEAN_TIME_TO_CONSUMPTION_S_FIELD_NUMBER: _ClassVar[int]
    lot_type: str
    source: str
    campaign_id: str
    unit: str
    currency: str
    lots: int
    lots_redeemed: int
    units_issued: str
    units_consumed: str
    units_expired: str
    units_remaining: str
    value_issued: str
    consumption_rate: float
    breakage_rate: float
    redemption_rate: float
    median_time_to_consumption_s: float
    units_weighted_median_time_to_consumption_s: float
    units_weighted_mean_time_to_consumption_s: float
    def __init__(self, lot_type: _Optional[str] = ..., source: _Optional[str] = ..., campaign_id: _Optional[str] = ..., unit: _Optional[str] = ..., currency: _Optional[str] = ..., lots: _Optional[int] = ..., lots_redeemed: _Optional[int] = ..., units_issued: _Optional[str] = ..., units_consumed: _Optional[str] = ..., units_expired: _Optional[str] = ..., units_remaining: _Optional[str] = ..., value_issued: _Optional[str] = ..., consumption_rate: _Optional[float] = ..., breakage_rate: _Optional[float] = ..., redemption_rate: _Optional[float] = ..., median_time_to_consumption_s: _Optional[float] = ..., units_weighted_median_time_to_consumption_s: _Optional[float] = ..., units_weighted_mean_time_to_consumption_s: _Optional[float] = ...) -> None: ...

class ProgramReport(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[ProgramRow]
    def __init__(self, rows: _Optional[_Iterable[_Union[ProgramRow, _Mapping]]] = ...) -> None: ...

class ExportJournalRequest(_message.Message):
    __slots__ = ("period", "page_size", "page_token")
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    period: str
    page_size: int
    page_token: str
    def __init__(self, period: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class JournalLine(_message.Message):
    __slots__ = ("entry_id", "line_no", "posting_at", "effective_at", "gl_account", "gl_code", "debit", "credit", "currency", "account_id", "lot_id", "lot_type", "campaign_id", "entry_kind", "hold_key", "reference", "memo")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    LINE_NO_FIELD_NUMBER: _ClassVar[int]
    POSTING_AT_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_AT_FIELD_NUMBER: _ClassVar[int]
    GL_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    GL_CODE_FIELD_NUMBER: _ClassVar[int]
    DEBIT_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    LOT_ID_FIELD_NUMBER: _ClassVar[int]
    LOT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    ENTRY_KIND_FIELD_NUMBER: _ClassVar[int]
    HOLD_KEY_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    MEMO_FIELD_NUMBER: _ClassVar[int]
    entry_id: int
    line_no: int
    posting_at: _timestamp_pb2.Timestamp
    effective_at: _timestamp_pb2.Timestamp
    gl_account: str
    gl_code: str
    debit: str
    credit: str
    currency: str
    account_id: str
    lot_id: str
    lot_type: str
    campaign_id: str
    entry_kind: str
    hold_key: str
    reference: str
    memo: str
    def __init__(self, entry_id: _Optional[int] = ..., line_no: _Optional[int] = ..., posting_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., effective_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., gl_account: _Optional[str] = ..., gl_code: _Optional[str] = ..., debit: _Optional[str] = ..., credit: _Optional[str] = ..., currency: _Optional[str] = ..., account_id: _Optional[str] = ..., lot_id: _Optional[str] = ..., lot_type: _Optional[str] = ..., campaign_id: _Optional[str] = ..., entry_kind: _Optional[str] = ..., hold_key: _Optional[str] = ..., reference: _Optional[str] = ..., memo: _Optional[str] = ...) -> None: ...

class ExportJournalResponse(_message.Message):
    __slots__ = ("lines", "next_page_token")
    LINES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedCompositeFieldContainer[JournalLine]
    next_page_token: str
    def __init__(self, lines: _Optional[_Iterable[_Union[JournalLine, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CreateFinanceLinkRequest(_message.Message):
    __slots__ = ("ttl_s",)
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    ttl_s: int
    def __init__(self, ttl_s: _Optional[int] = ...) -> None: ...

class FinanceLink(_message.Message):
    __slots__ = ("token", "url", "expires_at")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    token: str
    url: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, token: _Optional[str] = ..., url: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
