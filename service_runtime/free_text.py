"""The one rule for free text (reasons, names, references) in every service: bounded, and without
control characters — Postgres text cannot hold NUL, the ledger's bulk writes use control characters
as separators, and a text one service accepts in a saga must never be refused by another after the
saga's decision."""

from __future__ import annotations

import re

from service_runtime.rejections import invalid

CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
MAX_TEXT = 500  # reasons, names, references, unless a field documents another bound


def check_text(value: str, field: str, max_len: int = MAX_TEXT) -> str:
    if len(value) > max_len:
        raise invalid(field, f"is longer than {max_len} characters")
    if CONTROL_CHARACTERS.search(value):
        raise invalid(field, "must not contain control characters")
    return value
