"""Finding 1 (passwordless superuser): the embedded Postgres asks every role for its password
(SCRAM), on loopback only; the passwords are generated at first start into the data directory,
owner-only, and the services and tools read them from there. A cluster made before passwords
(trust) is secured on its next start."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import asyncpg
import grpc
import pytest
from credits.ledger.v1 import ledger_pb2 as pb
from credits.ledger.v1 import ledger_pb2_grpc

from ledger_service.server import create_ledger_server
from service_runtime.databases import resolve_databases
from service_runtime.embedded_postgres import EmbeddedPostgres, free_port
from service_runtime.postgres_secrets import read_passwords
from service_runtime.row_policies import APP_ROLE
from service_runtime.settings import Settings
from tests.postgres_fixtures import server
from tests.tenancy import add_tenant_key

ROLES = ("postgres", APP_ROLE)


async def _refused(dsn: str, **kw: str) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError, match="password authentication failed"):
        conn = await asyncpg.connect(dsn, **kw)
        await conn.close()


async def _assert_locked(pg: EmbeddedPostgres) -> None:
    """No role gets in without its password, over TCP or the unix socket; with it, each does."""
    for role in ROLES:
        await _refused(f"postgresql://{role}@127.0.0.1:{pg.port}/postgres", passfile="/nonexistent")
        await _refused(f"postgresql://{role}:wrong-password@127.0.0.1:{pg.port}/postgres")
        await _refused(f"postgresql://{role}@/postgres?host={pg.data_dir}&port={pg.port}", passfile="/nonexistent")
        conn = await asyncpg.connect(pg.dsn(user=role))
        try:
            assert await conn.fetchval("SELECT current_user") == role
        finally:
            await conn.close()


async def test_every_role_needs_its_password_on_loopback_only() -> None:
    pg = server()  # started exactly as `creditctl up` starts its embedded Postgres
    await _assert_locked(pg)
    conn = await asyncpg.connect(pg.dsn())
    try:
        rules = await conn.fetch("SELECT type, address, auth_method FROM pg_hba_file_rules")
        assert {r["auth_method"] for r in rules} == {"scram-sha-256"}
        assert {r["address"] for r in rules if r["type"] == "host"} == {"127.0.0.1", "::1"}
        assert await conn.fetchval("SHOW listen_addresses") == "127.0.0.1"
        weak = await conn.fetch("SELECT rolname FROM pg_authid WHERE rolcanlogin "
                                "AND coalesce(rolpassword, '') NOT LIKE 'SCRAM-SHA-256$%'")
        assert [r["rolname"] for r in weak] == []
    finally:
        await conn.close()
    mode = pg.passfile.stat()
    assert stat.S_IMODE(mode.st_mode) == 0o600 and mode.st_uid == os.geteuid()
    assert set(read_passwords(pg.passfile)) == set(ROLES)
    for role in ROLES:  # DSNs name the password file; no secret travels in them
        assert read_passwords(pg.passfile)[role] not in pg.dsn(user=role)


async def test_a_trust_cluster_is_secured_and_the_services_read_the_secrets_from_the_data_directory(
        tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, embedded_pg_port=free_port())
    pg = EmbeddedPostgres(settings.data_dir / "postgres", settings.embedded_pg_port, fsync=False)
    pg.prepare_data_dir()  # initialised as before passwords existed: trust, no password file
    await asyncio.to_thread(pg._cmd, "initdb", "-D", str(pg.pgdata), "--auth=trust", "-U", "postgres", "--no-sync")
    assert not pg.passfile.exists()
    dbs = await asyncio.to_thread(resolve_databases, settings)  # what the servers and creditctl run
    assert dbs.embedded is not None
    try:
        await _assert_locked(dbs.embedded)
        server_, port, pool = await create_ledger_server(dbs.ledger_dsn, "127.0.0.1:0", settings)
        try:
            key = await add_tenant_key(dbs.ledger_dsn, "tenant-a")
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = ledger_pb2_grpc.LedgerServiceStub(channel)
                await stub.CreateAccount(pb.CreateAccountRequest(idempotency_key="a", account_id="acme"),
                                         metadata=[("x-api-key", key)])
            async with pool.acquire() as conn:  # the service logs in as the app role, with its password
                assert await conn.fetchval("SELECT current_user") == APP_ROLE
        finally:
            await server_.stop(0)
            await pool.close()
    finally:
        await asyncio.to_thread(dbs.embedded.stop)
