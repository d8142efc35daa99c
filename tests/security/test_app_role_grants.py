"""Finding 2 (the app role can delete what guards money): the services' role has exactly the
privileges listed next to the migrations (app_role_grants.txt), each one needed by a statement of
the services; it can neither delete nor rewrite idempotency records, projections, the journal or
keys, so a retry stays a replay."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from credits.invoice.v1 import invoice_pb2 as ipb

from invoice_service.storage import MIGRATIONS_DIR as INVOICE_MIGRATIONS
from ledger_service.storage import MIGRATIONS_DIR as LEDGER_MIGRATIONS
from service_runtime.app_grants import Grant, read_grants
from service_runtime.databases import TENANCY_MIGRATIONS
from service_runtime.row_policies import APP_ROLE
from service_runtime.row_security import app_dsn
from tests.ledger.conftest import Ledger
from tests.postgres_fixtures import fresh_database
from tests.security.conftest import TENANT_A, Stack

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {
    "ledger": ([TENANCY_MIGRATIONS, LEDGER_MIGRATIONS], "ledger_service"),
    "invoice": ([TENANCY_MIGRATIONS, INVOICE_MIGRATIONS], "invoice_service"),
}
# service_runtime modules whose statements run on the services' pools (the rest run as the owner:
# key minting and revocation, migrations).
RUNTIME_APP_MODULES = ("audit.py", "idempotency.py", "refusal_counts.py")
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")

ACTUAL_GRANTS = """
SELECT table_name AS relation, privilege_type AS privilege, '' AS column_name
FROM information_schema.role_table_grants WHERE grantee = $1 AND table_schema = 'public'
UNION
SELECT g.table_name, g.privilege_type, g.column_name FROM information_schema.role_column_grants g
WHERE g.grantee = $1 AND g.table_schema = 'public' AND NOT EXISTS (
    SELECT 1 FROM information_schema.role_table_grants t WHERE t.grantee = $1 AND t.table_schema = 'public'
      AND t.table_name = g.table_name AND t.privilege_type = g.privilege_type)
UNION
SELECT object_name, privilege_type, '' FROM information_schema.role_usage_grants
WHERE grantee = $1 AND object_schema = 'public' AND object_type = 'SEQUENCE'
"""
RELATIONS = """
SELECT c.relname, c.relkind FROM pg_class c
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'S') ORDER BY 1
"""


async def _actual(dsn: str) -> tuple[set[Grant], dict[str, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(ACTUAL_GRANTS, APP_ROLE)
        relations = {r["relname"]: r["relkind"] for r in await conn.fetch(RELATIONS)}
        # has_*_privilege agrees with the information schema (table-level, and per sequence).
        for name, kind in relations.items():
            for privilege in (("USAGE", "SELECT", "UPDATE") if kind == "S" else TABLE_PRIVILEGES):
                fn = "has_sequence_privilege" if kind == "S" else "has_table_privilege"
                held = await conn.fetchval(f"SELECT {fn}($1, $2, $3)", APP_ROLE, f"public.{name}", privilege)
                listed = any(r["relation"] == name and r["privilege"] == privilege and not r["column_name"]
                             for r in rows)
                assert held == listed, (name, privilege)
        return {Grant(r["relation"], r["privilege"], r["column_name"]) for r in rows}, relations
    finally:
        await conn.close()


@pytest.mark.parametrize("service", sorted(SERVICES))
async def test_the_app_role_has_exactly_the_allow_listed_privileges(service: str) -> None:
    dirs, _ = SERVICES[service]
    dsn = await fresh_database(service, dirs)
    actual, relations = await _actual(dsn)
    allowed = read_grants(dirs)
    assert sorted(set(allowed) - set(relations)) == []  # no stale line
    assert sorted(set(relations) - set(allowed)) == []  # every table and sequence decided
    expected = {g for grants in allowed.values() for g in grants}
    assert sorted(map(str, actual - expected)) == []
    assert sorted(map(str, expected - actual)) == []
    # What finding 2 was about, named: no DELETE or UPDATE on idempotency records, no DELETE on
    # projections or the journal, nothing but SELECT on keys.
    assert {g.privilege for g in actual if g.relation == "idempotency_keys"} == {"SELECT", "INSERT"}
    assert {g.privilege for g in actual if g.relation == "api_keys"} == {"SELECT"}
    assert not [g for g in actual if g.privilege in ("TRUNCATE", "REFERENCES", "TRIGGER")]
    if service == "ledger":
        assert not [g for g in actual if g.privilege == "DELETE"]
        assert {g.privilege for g in actual if g.relation == "journal"} == {"SELECT", "INSERT"}


async def _as_app_role(dsn: str, tenant: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(app_dsn(dsn))
    await conn.execute("SELECT set_config('app.tenant_id', $1, false)", tenant)
    return conn


async def test_the_ledger_role_cannot_delete_or_rewrite_what_guards_money(ledger: Ledger) -> None:
    await ledger.account("acme")
    lot = await ledger.grant("acme", "5", key="grant-once")
    conn = await _as_app_role(ledger.dsn, "tenant-a")
    try:
        assert await conn.fetchval("SELECT count(*) FROM idempotency_keys") >= 2  # its own tenant's rows
        for statement in (
            "DELETE FROM idempotency_keys", "UPDATE idempotency_keys SET response = ''",
            "DELETE FROM lot_balances", "UPDATE lot_balances SET account_id = 'elsewhere'",
            "UPDATE lot_balances SET lot_id = 'x'", "DELETE FROM journal", "TRUNCATE journal",
            "DELETE FROM lots", "DELETE FROM accounts", "UPDATE accounts SET name = 'renamed'",
            "DELETE FROM audit_log", "UPDATE api_keys SET revoked_at = NULL", "DELETE FROM api_keys",
            "INSERT INTO api_keys (key_id, tenant_id, key_hash, role) VALUES ('k', 'tenant-a', 'h', 'admin')",
            "INSERT INTO tenants (tenant_id, name) VALUES ('t', 't')", "DELETE FROM schema_migrations",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.execute(statement)
    finally:
        await conn.close()
    again = await ledger.grant("acme", "5", key="grant-once")  # a retry is still a replay
    assert again.lot_id == lot.lot_id
    owner = await asyncpg.connect(ledger.dsn)
    try:
        assert await owner.fetchval("SELECT count(*) FROM lots") == 1
    finally:
        await owner.close()


async def test_the_invoice_role_cannot_delete_or_rewrite_idempotency_records_or_usage(stack: Stack) -> None:
    md = [("x-api-key", stack.keys[TENANT_A]["admin"])]
    await stack.invoice.CreateCustomer(ipb.CreateCustomerRequest(
        idempotency_key="c-grants", customer_id="cust-grants", name="Grants", ledger_account_id="acct"), metadata=md)
    conn = await _as_app_role(stack.invoice_dsn, TENANT_A)
    try:
        for statement in ("DELETE FROM idempotency_keys", "UPDATE idempotency_keys SET response = ''",
                          "DELETE FROM usage_events", "UPDATE usage_events SET quantity = 0",
                          "DELETE FROM customers", "UPDATE customers SET name = 'x'",
                          "UPDATE invoices SET tenant_id = 'x'", "TRUNCATE invoice_counters",
                          "DELETE FROM invoice_counters"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.execute(statement)
    finally:
        await conn.close()


# ---- every listed privilege is one a statement of the services needs --------------------------------

_INSERT = re.compile(r"\bINSERT\s+INTO\s+(\w+)", re.I)
_UPDATE = re.compile(r"\bUPDATE\s+(\w+)(?:\s+(?:AS\s+)?\w+)?\s+SET\b", re.I)
_DELETE = re.compile(r"\bDELETE\s+FROM\s+(\w+)", re.I)
_UPSERT = re.compile(r"\bINSERT\s+INTO\s+(\w+)(?:(?!INSERT\s+INTO).)*?\bON\s+CONFLICT\b[^;]*?\bDO\s+UPDATE\b",
                     re.I | re.S)
_LOCK = re.compile(r"\bFOR\s+(?:NO\s+KEY\s+UPDATE|UPDATE|KEY\s+SHARE|SHARE)\b(?:\s+OF\s+(\w+))?", re.I)
_READ = re.compile(r"\b(?:FROM|JOIN)\s+(\w+)(?:\s+(?:AS\s+)?(\w+))?", re.I)


def _sql_strings(package: Path) -> Iterator[str]:
    """The SQL text of every string constant (f-strings with their holes blanked) in `package`."""
    for path in sorted(package.rglob("*.py")):
        if path.name == "bench.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                yield node.value
            elif isinstance(node, ast.JoinedStr):
                yield "".join(v.value if isinstance(v, ast.Constant) else " x " for v in node.values)


def _needed(texts: list[str]) -> set[tuple[str, str]]:
    """(table, SELECT|INSERT|UPDATE|DELETE|LOCK) that the statements in `texts` need."""
    needed: set[tuple[str, str]] = set()
    for sql in texts:
        if not re.search(r"\b(SELECT|INSERT|UPDATE|DELETE)\b", sql):
            continue
        needed |= {(t, "INSERT") for t in _INSERT.findall(sql)}
        needed |= {(t, "UPDATE") for t in _UPDATE.findall(sql)} | {(t, "UPDATE") for t in _UPSERT.findall(sql)}
        needed |= {(t, "DELETE") for t in _DELETE.findall(sql)}
        if re.search(r"\bRETURNING\b", sql):  # reads what it wrote
            needed |= {(t, "SELECT") for t, p in list(needed) if p in ("INSERT", "UPDATE", "DELETE")}
        needed |= {(t, "SELECT") for t in _UPSERT.findall(sql)}  # DO UPDATE reads the existing row
        aliases = {alias or table: table for table, alias in _READ.findall(sql)} | {t: t for t, _ in _READ.findall(sql)}
        needed |= {(t, "SELECT") for t in aliases.values()}
        for of in _LOCK.findall(sql):
            target = aliases.get(of) if of else (_READ.findall(sql) or [("", "")])[0][0]
            if target:
                needed.add((target, "LOCK"))
    return needed


# Packages whose statements run on a service's pool besides its own (the finance books: ledger server).
ALSO_ON = {"ledger_service": ("finance",)}


def _app_statements(package: str) -> list[str]:
    texts = [t for p in (package, *ALSO_ON.get(package, ())) for t in _sql_strings(ROOT / p)]
    for module in RUNTIME_APP_MODULES:
        path = ROOT / "service_runtime" / module
        if path.exists():
            texts += [n.value for n in ast.walk(ast.parse(path.read_text()))
                      if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    texts += ["SELECT tenant_id, key_hash, role FROM api_keys"]  # KeyResolver.resolve
    return texts


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_listed_privilege_is_needed_by_a_statement_and_every_write_is_listed(service: str) -> None:
    dirs, package = SERVICES[service]
    allowed = read_grants(dirs)
    needed = _needed(_app_statements(package))
    unneeded = []
    for relation, grants in allowed.items():
        for g in grants:
            if g.privilege == "USAGE":  # a sequence: needed by inserts into the table that owns it
                ok = any(relation.startswith(f"{t}_") and (t, "INSERT") in needed for t, _ in needed)
            elif g.privilege == "UPDATE" and g.column == "tenant_id":  # only so that rows can be locked
                ok = (relation, "LOCK") in needed
            elif g.privilege == "UPDATE":
                ok = (relation, "UPDATE") in needed
            else:
                ok = (relation, g.privilege) in needed
            if not ok:
                unneeded.append(str(g))
    assert unneeded == []
    listed = {(g.relation, g.privilege) for grants in allowed.values() for g in grants}
    writes = {(t, p) for t, p in needed if p in ("INSERT", "UPDATE", "DELETE") and t in allowed}
    assert sorted(writes - listed) == []
    locks = {t for t, p in needed if p == "LOCK" and t in allowed}
    assert sorted(t for t in locks if (t, "UPDATE") not in listed) == []
