"""What the commands share between a flag and an RPC: messages as records, instants as Timestamps,
idempotency keys, and `NAME=VALUE` pairs.

A record is the message as JSON (proto field names, enums by name, instants as RFC 3339, every
field present): what `--json` prints, and where the table columns come from.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from creditctl.errors import remember_generated_key
from service_runtime.proto_time import to_timestamp

F = TypeVar("F", bound=Callable[..., Any])


def record(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def records(messages: Iterable[Message]) -> list[dict[str, Any]]:
    return [record(m) for m in messages]


def set_instant(target: Timestamp, value: datetime | None) -> None:
    """Sets a Timestamp field from a flag's instant; leaves it unset for None."""
    if value is not None:
        target.CopyFrom(to_timestamp(value))


def short_instant(text: str) -> str:
    """`2026-12-31T00:00:00Z` as `2026-12-31 00:00` for a table cell; "" stays ""."""
    if not text:
        return ""
    try:
        return datetime.fromisoformat(text).astimezone(UTC).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return text


def idempotency_option(f: F) -> F:
    return click.option("--idempotency-key", default="",
                        help="the same key retries safely; default: a fresh one (named if the reply is lost)")(f)


def key_for(given: str) -> str:
    """The given key, or a fresh one; a call whose answer may have been lost names it in its error line
    (creditctl.errors), so the retry can reuse it, and every other outcome stays one line."""
    if given:
        return given
    key = f"cli-{uuid.uuid4()}"
    remember_generated_key(key)
    return key


def pairs(values: Iterable[str], flag: str) -> list[tuple[str, str]]:
    """`NAME=VALUE` flag values as pairs; a value without `=` is a usage error naming the flag."""
    out = []
    for value in values:
        name, eq, rest = value.partition("=")
        if not eq or not name:
            raise click.BadParameter(f"{value!r}: use NAME=VALUE", param_hint=flag)
        out.append((name, rest))
    return out
