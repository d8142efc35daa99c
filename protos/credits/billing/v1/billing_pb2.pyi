import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OperationStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPERATION_STATUS_UNSPECIFIED: _ClassVar[OperationStatus]
    RUNNING: _ClassVar[OperationStatus]
    COMPLETED: _ClassVar[OperationStatus]
    FAILED: _ClassVar[OperationStatus]
    CANCELED: _ClassVar[OperationStatus]
    TERMINATED: _ClassVar[OperationStatus]
    TIMED_OUT: _ClassVar[OperationStatus]

class AllowanceCadence(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALLOWANCE_CADENCE_UNSPECIFIED: _ClassVar[AllowanceCadence]
    MONTHLY: _ClassVar[AllowanceCadence]
    WEEKLY: _ClassVar[AllowanceCadence]
    DAILY: _ClassVar[AllowanceCadence]

class FirstGrant(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FIRST_GRANT_UNSPECIFIED: _ClassVar[FirstGrant]
    PRO_RATED: _ClassVar[FirstGrant]
    FULL: _ClassVar[FirstGrant]
    NONE: _ClassVar[FirstGrant]
OPERATION_STATUS_UNSPECIFIED: OperationStatus
RUNNING: OperationStatus
COMPLETED: OperationStatus
FAILED: OperationStatus
CANCELED: OperationStatus
TERMINATED: OperationStatus
TIMED_OUT: OperationStatus
ALLOWANCE_CADENCE_UNSPECIFIED: AllowanceCadence
MONTHLY: AllowanceCadence
WEEKLY: AllowanceCadence
DAILY: AllowanceCadence
FIRST_GRANT_UNSPECIFIED: FirstGrant
PRO_RATED: FirstGrant
FULL: FirstGrant
NONE: FirstGrant

class Progress(_message.Message):
    __slots__ = ("total", "done", "failed", "stage")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    total: int
    done: int
    failed: int
    stage: str
    def __init__(self, total: _Optional[int] = ..., done: _Optional[int] = ..., failed: _Optional[int] = ..., stage: _Optional[str] = ...) -> None: ...

class Operation(_message.Message):
    __slots__ = ("operation_id", "kind", "status", "result_json", "error", "progress", "outcome", "ui_url", "run_id")
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    UI_URL_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    operation_id: str
    kind: str
    status: OperationStatus
    result_json: str
    error: str
    progress: Progress
    outcome: str
    ui_url: str
    run_id: str
    def __init__(self, operation_id: _Optional[str] = ..., kind: _Optional[str] = ..., status: _Optional[_Union[OperationStatus, str]] = ..., result_json: _Optional[str] = ..., error: _Optional[str] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., outcome: _Optional[str] = ..., ui_url: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class FinalizeInvoiceRequest(_message.Message):
    __slots__ = ("invoice_id", "wait", "wait_timeout_s")
    INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    WAIT_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    invoice_id: str
    wait: bool
    wait_timeout_s: int
    def __init__(self, invoice_id: _Optional[str] = ..., wait: _Optional[bool] = ..., wait_timeout_s: _Optional[int] = ...) -> None: ...

class VoidInvoiceRequest(_message.Message):
    __slots__ = ("invoice_id", "reason", "wait", "wait_timeout_s")
    INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    WAIT_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    invoice_id: str
    reason: str
    wait: bool
    wait_timeout_s: int
    def __init__(self, invoice_id: _Optional[str] = ..., reason: _Optional[str] = ..., wait: _Optional[bool] = ..., wait_timeout_s: _Optional[int] = ...) -> None: ...

class RunBillingCycleRequest(_message.Message):
    __slots__ = ("as_of", "concurrency", "wait", "wait_timeout_s", "new_run")
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    WAIT_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    NEW_RUN_FIELD_NUMBER: _ClassVar[int]
    as_of: _timestamp_pb2.Timestamp
    concurrency: int
    wait: bool
    wait_timeout_s: int
    new_run: bool
    def __init__(self, as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., concurrency: _Optional[int] = ..., wait: _Optional[bool] = ..., wait_timeout_s: _Optional[int] = ..., new_run: _Optional[bool] = ...) -> None: ...

class CompensateOutageRequest(_message.Message):
    __slots__ = ("incident_id", "account_ids", "amount", "unit", "expires_at", "reason", "wait", "wait_timeout_s")
    INCIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_IDS_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    WAIT_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    incident_id: str
    account_ids: _containers.RepeatedScalarFieldContainer[str]
    amount: str
    unit: str
    expires_at: _timestamp_pb2.Timestamp
    reason: str
    wait: bool
    wait_timeout_s: int
    def __init__(self, incident_id: _Optional[str] = ..., account_ids: _Optional[_Iterable[str]] = ..., amount: _Optional[str] = ..., unit: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., wait: _Optional[bool] = ..., wait_timeout_s: _Optional[int] = ...) -> None: ...

class GetOperationRequest(_message.Message):
    __slots__ = ("operation_id", "wait", "wait_timeout_s")
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    WAIT_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    operation_id: str
    wait: bool
    wait_timeout_s: int
    def __init__(self, operation_id: _Optional[str] = ..., wait: _Optional[bool] = ..., wait_timeout_s: _Optional[int] = ...) -> None: ...

class RolloverPolicy(_message.Message):
    __slots__ = ("max_amount", "max_percent", "expires_after_s")
    MAX_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_PERCENT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    max_amount: str
    max_percent: int
    expires_after_s: int
    def __init__(self, max_amount: _Optional[str] = ..., max_percent: _Optional[int] = ..., expires_after_s: _Optional[int] = ...) -> None: ...

class AllowanceConfig(_message.Message):
    __slots__ = ("account_id", "amount", "unit", "cadence", "lot_type", "priority", "cost_basis", "first_grant", "starts_at", "rollover", "reason")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    CADENCE_FIELD_NUMBER: _ClassVar[int]
    LOT_TYPE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    COST_BASIS_FIELD_NUMBER: _ClassVar[int]
    FIRST_GRANT_FIELD_NUMBER: _ClassVar[int]
    STARTS_AT_FIELD_NUMBER: _ClassVar[int]
    ROLLOVER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    amount: str
    unit: str
    cadence: AllowanceCadence
    lot_type: str
    priority: int
    cost_basis: str
    first_grant: FirstGrant
    starts_at: _timestamp_pb2.Timestamp
    rollover: RolloverPolicy
    reason: str
    def __init__(self, account_id: _Optional[str] = ..., amount: _Optional[str] = ..., unit: _Optional[str] = ..., cadence: _Optional[_Union[AllowanceCadence, str]] = ..., lot_type: _Optional[str] = ..., priority: _Optional[int] = ..., cost_basis: _Optional[str] = ..., first_grant: _Optional[_Union[FirstGrant, str]] = ..., starts_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rollover: _Optional[_Union[RolloverPolicy, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class Allowance(_message.Message):
    __slots__ = ("allowance_id", "config", "schedule_id", "paused", "note", "next_grant_at", "recent", "ui_url", "created_at", "first_grant_operation_id")
    ALLOWANCE_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    NEXT_GRANT_AT_FIELD_NUMBER: _ClassVar[int]
    RECENT_FIELD_NUMBER: _ClassVar[int]
    UI_URL_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FIRST_GRANT_OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    allowance_id: str
    config: AllowanceConfig
    schedule_id: str
    paused: bool
    note: str
    next_grant_at: _timestamp_pb2.Timestamp
    recent: _containers.RepeatedCompositeFieldContainer[AllowanceGrantRun]
    ui_url: str
    created_at: _timestamp_pb2.Timestamp
    first_grant_operation_id: str
    def __init__(self, allowance_id: _Optional[str] = ..., config: _Optional[_Union[AllowanceConfig, _Mapping]] = ..., schedule_id: _Optional[str] = ..., paused: _Optional[bool] = ..., note: _Optional[str] = ..., next_grant_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., recent: _Optional[_Iterable[_Union[AllowanceGrantRun, _Mapping]]] = ..., ui_url: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., first_grant_operation_id: _Optional[str] = ...) -> None: ...

class AllowanceGrantRun(_message.Message):
    __slots__ = ("scheduled_at", "operation_id")
    SCHEDULED_AT_FIELD_NUMBER: _ClassVar[int]
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    scheduled_at: _timestamp_pb2.Timestamp
    operation_id: str
    def __init__(self, scheduled_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., operation_id: _Optional[str] = ...) -> None: ...

class CreateAllowanceRequest(_message.Message):
    __slots__ = ("allowance_id", "config")
    ALLOWANCE_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    allowance_id: str
    config: AllowanceConfig
    def __init__(self, allowance_id: _Optional[str] = ..., config: _Optional[_Union[AllowanceConfig, _Mapping]] = ...) -> None: ...

class GetAllowanceRequest(_message.Message):
    __slots__ = ("allowance_id",)
    ALLOWANCE_ID_FIELD_NUMBER: _ClassVar[int]
    allowance_id: str
    def __init__(self, allowance_id: _Optional[str] = ...) -> None: ...

class ListAllowancesRequest(_message.Message):
    __slots__ = ("account_id", "page_size", "page_token")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    page_size: int
    page_token: str
    def __init__(self, account_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAllowancesResponse(_message.Message):
    __slots__ = ("allowances", "next_page_token")
    ALLOWANCES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    allowances: _containers.RepeatedCompositeFieldContainer[Allowance]
    next_page_token: str
    def __init__(self, allowances: _Optional[_Iterable[_Union[Allowance, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class PauseAllowanceRequest(_message.Message):
    __slots__ = ("allowance_id", "note")
    ALLOWANCE_ID_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    allowance_id: str
    note: str
    def __init__(self, allowance_id: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class ResumeAllowanceRequest(_message.Message):
    __slots__ = ("allowance_id", "note")
    ALLOWANCE_ID_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    allowance_id: str
    note: str
    def __init__(self, allowance_id: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class DeleteAllowanceRequest(_message.Message):
    __slots__ = ("allowance_id", "allow_missing")
    ALLOWANCE_ID_FIELD_NUMBER: _ClassVar[int]
    ALLOW_MISSING_FIELD_NUMBER: _ClassVar[int]
    allowance_id: str
    allow_missing: bool
    def __init__(self, allowance_id: _Optional[str] = ..., allow_missing: _Optional[bool] = ...) -> None: ...

class DeleteAllowanceResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...
