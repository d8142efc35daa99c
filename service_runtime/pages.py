"""The one rule for pages, used by every List RPC of every service.

- `page_size`: 0 means the default (100); negative is INVALID_ARGUMENT; above 1000 is served as
  1000 (the proto comments say "default 100, max 1000"; AIP-158 coerces rather than refuses).
- `page_token`: opaque. "" is the first page; anything else must be a token this service issued
  (`encode_token`), or INVALID_ARGUMENT naming `page_token`. A token is the URL-safe base64 of the
  cursor's parts; callers never build one by hand.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime

from service_runtime.rejections import invalid

DEFAULT_PAGE = 100
MAX_PAGE = 1000
MAX_TOKEN_LENGTH = 512
_SEPARATOR = "\x1f"


def page_size(value: int, field: str = "page_size") -> int:
    if value < 0:
        raise invalid(field, "must not be negative")
    return min(value or DEFAULT_PAGE, MAX_PAGE)


def encode_token(*parts: str | int) -> str:
    """The next page's token for a cursor made of `parts` (ints and strings without U+001F)."""
    text = _SEPARATOR.join(str(p) for p in parts)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_token(token: str, parts: int, field: str = "page_token") -> tuple[str, ...] | None:
    """The cursor's `parts` strings, or None for the first page."""
    if not token:
        return None
    bad = invalid(field, "is not a page token this service issued")
    if len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        raise bad
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise bad from exc
    if encode_token(text) != token:  # not canonical: not one of ours
        raise bad
    pieces = tuple(text.split(_SEPARATOR))
    if len(pieces) != parts or any(not p or not p.isprintable() for p in pieces):
        raise bad
    return pieces


def decode_int_token(token: str, field: str = "page_token") -> int:
    """A cursor that is one non-negative 63-bit integer (a sequence number); 0 for the first page."""
    decoded = decode_token(token, 1, field)
    if decoded is None:
        return 0
    (text,) = decoded
    if not text.isdigit() or int(text) > 2**63 - 1:
        raise invalid(field, "is not a page token this service issued")
    return int(text)


def decode_time_token(token: str, field: str = "page_token") -> tuple[datetime, str]:
    """A cursor of (an ISO 8601 instant, an id), as lists ordered by time then id page; before every
    row (the earliest instant, "") for the first page."""
    decoded = decode_token(token, 2, field)
    if decoded is None:
        return datetime.min.replace(tzinfo=UTC), ""
    try:
        return datetime.fromisoformat(decoded[0]), decoded[1]
    except ValueError:
        raise invalid(field, "is not a page token this service issued") from None
