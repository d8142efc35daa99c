"""The payment provider as the ledger sees it: charge with an idempotency key, find a charge by that key.

An answer that did not arrive (timeout, lost response, 5xx) is `PaymentUnknown`: the charge may or may
not exist, so the caller asks again (`find`) with the same key — never assumes success or failure.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


class PaymentStatus(enum.StrEnum):
    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    PENDING = "pending"


@dataclass(frozen=True)
class Payment:
    charge_id: str
    status: PaymentStatus
    amount: int          # minor units of `currency`
    currency: str
    message: str = ""


class PaymentUnknown(Exception):
    """No answer: the charge's existence and outcome are unknown (ask again with the same key)."""


class PaymentProvider(Protocol):
    async def charge(self, idempotency_key: str, amount: int, currency: str, payment_method: str,
                     description: str) -> Payment:
        """Creates (or, for a key seen before, returns) the charge; raises PaymentUnknown."""
        ...

    async def find(self, idempotency_key: str) -> Payment | None:
        """The charge made under `idempotency_key`, or None if there is none; raises PaymentUnknown."""
        ...
