"""Value types of creditctl's flags: durations (`90s`, `30m`, `12h`, `30d`, `1w`) and instants.

Instants are parsed in one place, `creditctl.times` (ISO 8601, `now`, `+30d`, `-24h`); INSTANT and
SINCE are re-exported here for the commands. A value that does not parse is a usage error naming
the flag (exit 2), never a traceback.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import click
from google.protobuf.timestamp_pb2 import Timestamp

from creditctl.times import INSTANT, SINCE, parse_duration
from service_runtime.proto_time import from_timestamp

__all__ = ["DURATION", "INSTANT", "SINCE", "Duration", "iso"]


class Duration(click.ParamType):
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        parsed = parse_duration(str(value))
        if parsed is None:
            self.fail("use a duration like 90s, 30m, 12h, 30d or 1w", param, ctx)
        return parsed


DURATION = Duration()


def iso(ts: Timestamp, field: str) -> str:
    """The instant as ISO 8601 text; "" for an unset Timestamp."""
    return "" if ts.seconds == 0 and ts.nanos == 0 else from_timestamp(ts, field).isoformat()
