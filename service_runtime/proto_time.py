"""google.protobuf.Timestamp ⇄ aware UTC datetimes, exact and fast, with range checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from service_runtime.rejections import invalid

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_SECONDS = 253402300799  # 9999-12-31T23:59:59Z


def to_timestamp(value: datetime) -> Timestamp:
    delta = value - EPOCH  # integer arithmetic; protobuf's FromDatetime is slow pure Python
    return Timestamp(seconds=delta.days * 86400 + delta.seconds, nanos=delta.microseconds * 1000)


def from_timestamp(ts: Timestamp, field: str) -> datetime:
    """An aware UTC datetime; INVALID_ARGUMENT naming `field` if out of range."""
    if not 0 <= ts.seconds <= _MAX_SECONDS or not 0 <= ts.nanos < 1_000_000_000:
        raise invalid(field, "is out of range")
    return datetime.fromtimestamp(ts.seconds, UTC) + timedelta(microseconds=ts.nanos // 1000)


def to_microseconds(ts: Timestamp, field: str) -> int:
    """Microseconds since the epoch (the hot paths' integer form); INVALID_ARGUMENT naming `field` if
    out of range, like `from_timestamp`."""
    seconds, nanos = ts.seconds, ts.nanos
    if not 0 <= seconds <= _MAX_SECONDS or not 0 <= nanos < 1_000_000_000:
        raise invalid(field, "is out of range")
    return seconds * 1_000_000 + nanos // 1000
