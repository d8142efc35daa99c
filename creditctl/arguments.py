"""Value types of creditctl's flags: durations (`90s`, `30m`, `12h`, `30d`) and ISO 8601 instants.

A value that does not parse is a usage error naming the flag (exit 2), never a traceback.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from google.protobuf.timestamp_pb2 import Timestamp

from service_runtime.proto_time import from_timestamp

_SECONDS_PER = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Duration(click.ParamType):
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        m = re.fullmatch(r"(\d+)([smhd])", str(value))
        if not m:
            self.fail("use a duration like 90s, 30m, 12h or 30d", param, ctx)
        return timedelta(seconds=int(m.group(1)) * _SECONDS_PER[m.group(2)])


class Instant(click.ParamType):
    """An ISO 8601 instant, e.g. 2026-12-31T00:00:00Z; without an offset it is taken as UTC."""

    name = "instant"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            parsed = value
        else:
            try:
                parsed = datetime.fromisoformat(str(value))
            except ValueError:
                self.fail(f"{value!r} is not an ISO 8601 instant (e.g. 2026-12-31T00:00:00Z)", param, ctx)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


DURATION = Duration()
INSTANT = Instant()


def iso(ts: Timestamp, field: str) -> str:
    """The instant as ISO 8601 text; "" for an unset Timestamp."""
    return "" if ts.seconds == 0 and ts.nanos == 0 else from_timestamp(ts, field).isoformat()


def idempotency_key_or_new(given: str, as_json: bool) -> str:
    """The caller's --idempotency-key, or a fresh one printed on stderr so a retry can reuse it."""
    if given:
        return given
    key = f"cli-{uuid.uuid4()}"
    if not as_json:
        click.echo(f"idempotency key  {key}  (pass --idempotency-key {key} to retry safely)", err=True)
    return key
