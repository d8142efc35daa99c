"""The one rule for caller-chosen identifiers and keys, used by every service (and the front door).

- **Identifiers** (account, customer, meter, plan, invoice, lot, unit codes chosen by the caller):
  `[A-Za-z0-9._:-]{1,64}`, exactly what the protos document.
- **Keys** (idempotency keys, hold keys, approval/request keys): 1-200 printable ASCII characters
  without spaces. Keys may carry `/` because derived keys are paths (`inv/<invoice>/<run>`,
  `<workflow>/<run>/<step>`; see `coordinator/naming.py`).

Bad input is INVALID_ARGUMENT naming the field; nothing is trimmed or rewritten.
"""

from __future__ import annotations

import re

from service_runtime.rejections import invalid

ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,64}")
ID_RULE = "must be 1-64 of letters, digits and . _ : -"
MAX_KEY_LENGTH = 200
KEY_PATTERN = re.compile(rf"[\x21-\x7e]{{1,{MAX_KEY_LENGTH}}}")  # printable ASCII, no spaces
KEY_RULE = f"must be 1-{MAX_KEY_LENGTH} printable ASCII characters without spaces"


def _shown(value: str) -> str:
    return value[:40] + ("..." if len(value) > 40 else "")


def is_id(value: str) -> bool:
    return ID_PATTERN.fullmatch(value) is not None


def check_id(value: str, field: str, *, required: bool = True) -> str:
    """An identifier; "" is accepted only when `required` is False (and returned as "")."""
    if not value:
        if required:
            raise invalid(field, "is required")
        return ""
    if not ID_PATTERN.fullmatch(value):
        raise invalid(field, f"{ID_RULE} (got {_shown(value)!r})")
    return value


def check_optional_id(value: str, field: str) -> str:
    return check_id(value, field, required=False)


def check_key(value: str, field: str = "idempotency_key", *, required: bool = True) -> str:
    """An idempotency key or another caller key; every mutation requires its idempotency key."""
    if not value:
        if required:
            raise invalid(field, "is required for every mutation" if field == "idempotency_key" else "is required")
        return ""
    if not KEY_PATTERN.fullmatch(value):
        raise invalid(field, KEY_RULE)
    return value
