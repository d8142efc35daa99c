"""The row-level security policies, as SQL the migrations apply (see service_runtime.row_security).

`apply_row_security` runs as the owner at the end of every migration run (idempotent): it creates
the app role if allowed, grants it exactly the privileges of the allow-lists next to the migrations
(service_runtime.app_grants), enables RLS and (re)creates the `tenant_isolation` policy on every
table with a tenant_id column, so tables added by later migrations are covered too.
Exempt: `tenants` and `api_keys` (authentication reads them before any tenant is known), and
inserts into `audit_log` (the audit writer batches several tenants' records; reads are isolated).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import asyncpg

from service_runtime.app_grants import apply_grants

# CREDITS_DB_APP_ROLE (declared in service_runtime.settings); read here at import, before any settings
# object exists, because it is the default of functions below.
APP_ROLE = os.environ.get("CREDITS_DB_APP_ROLE", "credits_app")
EXEMPT_TABLES = ("tenants", "api_keys", "schema_migrations")

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


async def apply_row_security(conn: asyncpg.Connection, migration_dirs: Iterable[Path]) -> None:
    """Row security on every tenant table, and the app role's privileges from the allow-lists in
    `migration_dirs` (all the directories migrated into this database)."""
    await conn.execute(apply_sql())
    if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", APP_ROLE):
        await apply_grants(conn, APP_ROLE, migration_dirs)
