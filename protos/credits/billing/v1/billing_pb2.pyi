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
OPERATION_STATUS_UNSPECIFIED: OperationStatus
RUNNING: OperationStatus
COMPLETED: OperationStatus
FAILED: OperationStatus
CANCELED: OperationStatus
TERMINATED: OperationStatus
TIMED_OUT: OperationStatus

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
    __slots__ = ("as_of", "concurrency", "wait", "wait_timeout_s")
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    WAIT_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    as_of: _timestamp_pb2.Timestamp
    concurrency: int
    wait: bool
    wait_timeout_s: int
    def __init__(self, as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., concurrency: _Optional[int] = ..., wait: _Optional[bool] = ..., wait_timeout_s: _Optional[int] = ...) -> None: ...

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
