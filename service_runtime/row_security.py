"""Tenant isolation in depth: Postgres row-level security under every tenant filter.

Every query already filters by tenant_id. Beneath that, each table with a tenant_id column gets a
policy `tenant_id = current_setting('app.tenant_id')`, and the services connect as a role that is
neither superuser nor owner (`credits_app`), so the policies apply to them: a query that forgot its
tenant filter still sees only the calling tenant's rows, and cannot write another tenant's.

- Migrations run as the owner and end with `row_policies.apply_row_security` (idempotent): create
  the role if allowed, grant it DML, enable RLS and (re)create the policies on every tenant table,
  so tables added by later migrations are covered too.
- Service pools (`create_tenant_pool`) log in as the role (`app_dsn`) and scope `app.tenant_id` to
  the calling key's tenant on every acquire (`set_tenant`); a connection acquired outside a call
  sees no tenant rows. Each connection remembers the tenant its session is scoped to, so acquiring
  it for the same tenant again costs no round trip, and releasing it sends no `RESET ALL`: the
  setting is the only session state the services change (advisory locks are transaction-scoped,
  cursors live inside transactions), asyncpg still rolls back a transaction left open, and the
  next acquire re-scopes the session before any query runs.
- Exempt: `tenants` and `api_keys` (authentication reads them before any tenant is known), and
  inserts into `audit_log` (the audit writer batches several tenants' records; reads are isolated).
- Operator tools (migrations, `creditctl ledger verify`, the reconciler, gauges) use the owner DSN.
"""

from __future__ import annotations

import contextvars
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from service_runtime.postgres import create_pool
from service_runtime.row_policies import APP_ROLE

# The tenant of the call in progress; set by the call guard (service_runtime.call_guard.authenticate).
current_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("current_tenant", default="")


def enabled() -> bool:
    """CREDITS_ROW_SECURITY (default on; 0/false/no turns it off), as service_runtime.settings reads it."""
    from service_runtime.settings import Settings

    return Settings.from_env().row_security


def app_dsn(owner_dsn: str, explicit: str = "") -> str:
    """The DSN the service logs in with: `explicit` if given, else the owner DSN with the user
    replaced by the app role (how the embedded Postgres, with local trust, is reached); the owner
    DSN itself when row security is turned off."""
    if explicit:
        return explicit
    if not enabled():
        return owner_dsn
    parts = urlsplit(owner_dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{APP_ROLE}@{host}"))


class TenantScopedConnection(asyncpg.Connection):
    """A connection that knows which tenant its session is scoped to (None: not yet, or unknown)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scoped_tenant: str | None = None

    async def scope_to(self, tenant_id: str) -> None:
        if self.scoped_tenant == tenant_id:
            return
        self.scoped_tenant = None  # unknown until the statement has succeeded
        await self.execute("SELECT set_config('app.tenant_id', $1, false)", tenant_id)
        self.scoped_tenant = tenant_id


async def set_tenant(conn: Any) -> None:
    """Pool `setup`: scope the connection (a TenantScopedConnection, behind the pool's proxy) to the
    calling tenant ('' = no tenant rows at all)."""
    await conn.scope_to(current_tenant.get())


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool `reset`: nothing to send (see the module notes); asyncpg has already rolled back any
    transaction left open."""


async def create_tenant_pool(dsn: str, *, max_size: int, min_size: int = 2) -> asyncpg.Pool:
    """The pool a service's calls use: connections scoped to the calling tenant on acquire."""
    return await create_pool(dsn, min_size=min_size, max_size=max_size, setup=set_tenant, reset=_keep_session,
                             connection_class=TenantScopedConnection)
