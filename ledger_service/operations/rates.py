"""Conversion rates: PublishRate, ListRates (rules: service_runtime/rates.py)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

import asyncpg
from google.protobuf.message import Message

from ledger_service.operations.calls import Call, once
from ledger_service.operations.context import Ledger
from ledger_service.storage import rates as storage
from service_runtime.currencies import is_currency
from service_runtime.rates import RateVersion
from service_runtime.rejections import invalid

M = TypeVar("M", bound=Message)
T = TypeVar("T")
Published = tuple[RateVersion, datetime]


async def publish_rate(ledger: Ledger, call: Call[M], rate: RateVersion, pack: Callable[[Published], M]) -> M:
    """A new version of the rate of `rate.unit` into `rate.currency` (version chosen here)."""
    if is_currency(rate.unit):
        raise invalid("unit", f"{rate.unit} is a currency: rates convert a credit unit (e.g. credit) into a currency")
    await ledger.scale(call.tenant_id, rate.unit, "unit")  # a unit the tenant's ledger knows

    async def work(conn: asyncpg.Connection) -> Published:
        return await storage.publish(conn, call.tenant_id, rate, call.actor)

    return await once(ledger, call, work, pack)


async def list_rates(ledger: Ledger, tenant_id: str, unit: str, currency: str,
                     pack: Callable[[list[Published]], T]) -> T:
    return pack(await storage.list_rates(ledger.pool, tenant_id, unit, currency))
