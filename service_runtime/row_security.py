"""Tenant isolation in depth: Postgres row-level security under every tenant filter.

Every query already filters by tenant_id. Beneath that, each table with a tenant_id column gets a
policy `tenant_id = current_setting('app.tenant_id')`, and the services connect as a role that is
neither superuser nor owner (`credits_app`), so the policies apply to them: a query that forgot its
tenant filter still sees only the calling tenant's rows, and cannot write another tenant's.

- Migrations run as the owner and end with `apply_row_security` (idempotent): create the role if
  allowed, grant it DML, enable RLS and (re)create the policies on every tenant table, so tables
  added by later migrations are covered too.
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
import os
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

APP_ROLE = os.environ.get("CREDITS_DB_APP_ROLE", "credits_app")
EXEMPT_TABLES = ("tenants", "api_keys", "schema_migrations")

# The tenant of the call in progress; set by the gRPC auth interceptor.
current_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("current_tenant", default="")

# The policies compare with `(SELECT current_setting(...))`: a sub-select is evaluated once per
# statement (an init plan), where a bare function call in a policy is evaluated per row.
APPLY = """
DO $rls$
DECLARE
    t text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
        BEGIN
            CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'cannot create role {role}: create it and grant it login';
        END;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO {role}', current_database());
        GRANT USAGE ON SCHEMA public TO {role};
        GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};
        GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role};
    END IF;
    FOR t IN
        SELECT c.table_name FROM information_schema.columns c
        JOIN information_schema.tables tb ON tb.table_schema = c.table_schema AND tb.table_name = c.table_name
        WHERE c.table_schema = 'public' AND c.column_name = 'tenant_id' AND tb.table_type = 'BASE TABLE'
          AND c.table_name NOT IN ({exempt})
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('DROP POLICY IF EXISTS tenant_isolation ON %I', t);
        IF t = 'audit_log' THEN
            EXECUTE format('CREATE POLICY tenant_isolation ON %I FOR SELECT '
                           'USING (tenant_id = (SELECT current_setting(''app.tenant_id'', true)))', t);
            EXECUTE format('DROP POLICY IF EXISTS audit_append ON %I', t);
            EXECUTE format('CREATE POLICY audit_append ON %I FOR INSERT WITH CHECK (true)', t);
        ELSE
            EXECUTE format('CREATE POLICY tenant_isolation ON %I '
                           'USING (tenant_id = (SELECT current_setting(''app.tenant_id'', true))) '
                           'WITH CHECK (tenant_id = (SELECT current_setting(''app.tenant_id'', true)))', t);
        END IF;
    END LOOP;
END
$rls$;
"""


def apply_sql(role: str = APP_ROLE) -> str:
    if not role.replace("_", "").isalnum():
        raise ValueError(f"unsafe role name {role!r}")
    exempt = ", ".join(f"'{t}'" for t in EXEMPT_TABLES)
    return APPLY.replace("{role}", role).replace("{exempt}", exempt)


async def apply_row_security(conn: asyncpg.Connection) -> None:
    await conn.execute(apply_sql())


def enabled() -> bool:
    return os.environ.get("CREDITS_ROW_SECURITY", "1").lower() not in {"0", "false", "no"}


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
    from service_runtime.postgres import create_pool  # here: postgres imports this module

    return await create_pool(dsn, min_size=min_size, max_size=max_size, setup=set_tenant, reset=_keep_session,
                             connection_class=TenantScopedConnection)
