"""The one date parser of creditctl: every flag that takes an instant reads it here.

Accepted, the same on every command:
- ISO 8601: `2026-12-31T00:00:00Z`, `2026-12-31T09:30:00+02:00`, `2026-12-31` (midnight); without an
  offset an instant is taken as UTC;
- `now`;
- relative to now: `+30d`, `-24h`, `+1w2d`, `-90s` (units s, m, h, d, w; several may follow each other).

Flags that look back (`--since`) also take a bare duration as "that long ago" (`--since 24h`), as
`audit --since` always did. A value that does not parse is a usage error naming the flag (exit 2).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import click

SECONDS_PER = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(?:\d+[smhdw])+")
_PART = re.compile(r"(\d+)([smhdw])")
EXAMPLES = "an ISO 8601 instant (2026-12-31T00:00:00Z), 'now', or relative to now (+30d, -24h)"


def parse_duration(text: str) -> timedelta | None:
    """`90s`, `12h`, `1w2d` as a timedelta; None if `text` is not a duration."""
    if not _DURATION.fullmatch(text):
        return None
    return timedelta(seconds=sum(int(n) * SECONDS_PER[u] for n, u in _PART.findall(text)))


def parse_instant(text: str, *, now: datetime | None = None, bare_duration_ago: bool = False) -> datetime:
    """An aware UTC datetime for `text` (see the module docstring); ValueError if it does not parse."""
    value = text.strip()
    current = now or datetime.now(UTC)
    if value.lower() == "now":
        return current
    if value[:1] in "+-" and (delta := parse_duration(value[1:])) is not None:
        return current + delta if value[0] == "+" else current - delta
    if bare_duration_ago and (delta := parse_duration(value)) is not None:
        return current - delta
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{text!r} is not {EXAMPLES}") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


class Instant(click.ParamType):
    """A click flag type for instants; `bare_duration_ago` for flags that look back (`--since 24h`)."""

    name = "instant"

    def __init__(self, *, bare_duration_ago: bool = False) -> None:
        self.bare_duration_ago = bare_duration_ago

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        try:
            return parse_instant(str(value), bare_duration_ago=self.bare_duration_ago)
        except ValueError as err:
            self.fail(str(err), param, ctx)


INSTANT = Instant()
SINCE = Instant(bare_duration_ago=True)  # `--since 24h` = 24 hours ago; any INSTANT form too
