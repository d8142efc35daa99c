"""The decimal places each side keeps, read from each side's own catalog (never a table of our own).

- Ledger amounts (hold allocations and postings) are integers in the unit's scale: the ledger's unit
  catalog, its built-in units plus those the tenant defined (`ledger_service.storage.catalog`).
- Invoice amounts (`credits_minor`, credit applications) are integers in the invoice currency's
  ISO 4217 minor unit, from the one catalog of money both services use (`service_runtime.currencies`).

Both are turned into exact Decimals before they are compared, so 3000 yen posted by the ledger
(scale 0) equal 3000 yen applied on the invoice, and 1111 fils (KWD, scale 3) equal 1.111 KWD.
"""

from __future__ import annotations

from decimal import Decimal

import asyncpg

from ledger_service.storage.catalog import UnitCatalog
from service_runtime.currencies import scale_of


async def ledger_scales(pool: asyncpg.Pool, tenant_id: str) -> dict[str, int]:
    """unit code -> scale, for every unit the tenant's ledger knows (built in or defined)."""
    return dict(await UnitCatalog(pool).list(tenant_id))


def invoice_scale(currency: str) -> int | None:
    """The minor-unit scale the invoice service bills `currency` in; None if it does not bill it."""
    return scale_of(currency)


def exact(amount: int, scale: int) -> Decimal:
    """An integer amount in minor units of `scale` as an exact Decimal (1111, 3 -> 1.111)."""
    return Decimal(amount).scaleb(-scale)
