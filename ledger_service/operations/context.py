"""What every ledger operation needs, built once per server: pool, writer, unit catalog, gate, clock."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from ledger_service.storage.account_writer import AccountWriter
from ledger_service.storage.catalog import UnitCatalog
from ledger_service.storage.grant_approvals import SupportGate
from service_runtime.settings import Settings


def new_id(prefix: str) -> str:
    """A server-chosen id (lots, grant requests, transfers): `<prefix>_<16 hex digits>`."""
    return f"{prefix}_{secrets.token_hex(8)}"


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Ledger:
    pool: asyncpg.Pool
    settings: Settings
    clock: Callable[[], datetime]
    units: UnitCatalog
    writer: AccountWriter
    gate: SupportGate

    @classmethod
    def create(cls, pool: asyncpg.Pool, settings: Settings, clock: Callable[[], datetime] = utc_now) -> Ledger:
        writer = AccountWriter(pool, clock=clock, gather_within_s=settings.group_commit_window_ms / 1000)
        return cls(pool, settings, clock, UnitCatalog(pool), writer, SupportGate(pool))

    def now(self) -> datetime:
        return self.clock()

    async def scale(self, tenant_id: str, unit: str, field: str = "unit") -> int:
        """The decimal places of `unit` for this tenant (INVALID_ARGUMENT naming `field` if unknown)."""
        return await self.units.scale(tenant_id, unit, field)
