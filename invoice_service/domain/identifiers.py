"""Validation of caller-chosen identifiers and free text: bad input is rejected naming the field."""

from __future__ import annotations

import re

from service_runtime import free_text
from service_runtime.rejections import invalid

ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,64}")
KEY_PATTERN = re.compile(r"[\x21-\x7e]{1,200}")  # printable ASCII, no spaces
MAX_TEXT = 500
# Event quantities: at most 18 integer digits and 9 decimals, optionally negative.
QUANTITY_PATTERN = re.compile(r"-?(0|[1-9]\d{0,17})(\.\d{1,9})?")


def check_id(value: str, field: str) -> str:
    if not ID_PATTERN.fullmatch(value):
        shown = value[:40] + ("..." if len(value) > 40 else "")
        raise invalid(field, f"must be 1-64 of letters, digits and . _ : - (got {shown!r})")
    return value


def check_optional_id(value: str, field: str) -> str:
    return check_id(value, field) if value else ""


def check_key(value: str, field: str = "idempotency_key", *, required: bool = True) -> str:
    if not value and not required:
        return ""
    if not value:
        raise invalid(field, "is required")
    if not KEY_PATTERN.fullmatch(value):
        raise invalid(field, "must be 1-200 printable ASCII characters without spaces")
    return value


def check_text(value: str, field: str, max_len: int = MAX_TEXT) -> str:
    """Free text: the same rule as the ledger (service_runtime.free_text), so a reason the invoice
    service accepts in a saga is never refused by the ledger after the decision."""
    return free_text.check_text(value, field, max_len)
