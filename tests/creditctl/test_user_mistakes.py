"""A user mistake (unknown account, missing API key, bad flag value, ...) is one line on stderr and a
non-zero exit status, never a traceback: creditctl run as a process, against a real ledger server."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from creditctl.errors import UserError
from creditctl.main import main
from tests.ledger.conftest import Ledger

ROOT = Path(__file__).resolve().parents[2]


async def creditctl(*args: str, **env: str) -> tuple[int, str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "creditctl.main", *args, cwd=ROOT,
                                                env={**environ, **env}, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


async def test_unknown_account_is_the_ledgers_answer_in_one_line(ledger: Ledger) -> None:
    code, out, err = await creditctl("grants", "create", "nobody", "--amount", "5.00", "--idempotency-key", "k1",
                                     CREDITS_LEDGER_ADDR=f"127.0.0.1:{ledger.port}", CREDITS_API_KEY=ledger.key)
    line = one_line(err)
    assert code == 2 and out == ""
    assert line.startswith("NOT_FOUND: ") and "nobody" in line


@pytest.mark.parametrize(("args", "status", "names"), [
    (("balances", "acct"), 2, "CREDITS_API_KEY"),
    (("invoices", "list"), 1, "CREDITS_API_KEY"),
    (("audit",), 1, "CREDITS_API_KEY"),
])
async def test_missing_api_key_says_which_setting(args: tuple[str, ...], status: int, names: str) -> None:
    code, out, err = await creditctl(*args)
    assert code == status and out == "" and names in one_line(err)


@pytest.mark.parametrize(("args", "names"), [
    (("grants", "create", "acct", "--amount", "1", "--expires-at", "next tuesday"), "--expires-at"),
    (("bench", "ledger", "--seconds", "0"), "--seconds"),
    (("keys", "create", "acme", "--expires-in", "5y"), "--expires-in"),
    (("invoices", "list", "--status", "PAID"), "--status"),
    (("statements", "acct", "--limit", "many"), "--limit"),
    (("tenants", "create", "a b"), "TENANT_ID"),
    (("grants", "create", "acct"), "--amount"),
    (("grants", "explode"), "explode"),
])
async def test_bad_command_line_is_a_usage_error_naming_the_flag(args: tuple[str, ...], names: str) -> None:
    code, out, err = await creditctl(*args, CREDITS_API_KEY="ck_unused.unused")
    line = one_line(err)
    assert code == 2 and out == "" and names in line and "--help" in line


async def test_unreachable_service_and_database_are_one_line() -> None:
    code, _, err = await creditctl("balances", "acct", CREDITS_LEDGER_ADDR="127.0.0.1:1", CREDITS_API_KEY="ck_x.y")
    assert code == 2 and one_line(err).startswith("UNAVAILABLE: ")
    dsn = "postgresql://credits@127.0.0.1:1/nowhere"
    code, _, err = await creditctl("keys", "list", CREDITS_LEDGER_DSN=dsn, CREDITS_INVOICE_DSN=dsn)
    assert code == 1 and "127.0.0.1" in one_line(err)


async def test_a_bad_setting_names_the_variables() -> None:
    code, _, err = await creditctl("migrate", CREDITS_EMBEDDED_PG_PORT="fifty")
    assert code == 2 and "CREDITS_" in one_line(err) and "fifty" in err


def test_in_process_main_prints_the_line_and_raises_it(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CREDITS_API_KEY", raising=False)
    with pytest.raises(UserError, match="CREDITS_API_KEY") as raised:
        main(["balances", "acct"])
    assert raised.value.code == 2
    assert capsys.readouterr().err.strip() == str(raised.value)
    assert main(["bench", "--help"]) == 0
    assert "ledger" in capsys.readouterr().out


@pytest.mark.parametrize(("setting", "as_address"), [("CREDITS_TEMPORAL_PORT", False), ("CREDITS_LEDGER_ADDR", True)])
async def test_a_port_in_use_names_the_port_and_its_setting(tmp_path: Path, setting: str, as_address: bool) -> None:
    """`creditctl up` refuses before it starts anything: one line with the port and the setting to change."""
    import socket

    from service_runtime.embedded_postgres import free_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = {"CREDITS_DATA_DIR": str(tmp_path / "data"), "CREDITS_EMBEDDED_PG_PORT": str(free_port()),
               "CREDITS_TEMPORAL_PORT": "0", "CREDITS_TEMPORAL_UI_PORT": str(free_port()),
               "CREDITS_LEDGER_ADDR": "127.0.0.1:0", "CREDITS_INVOICE_ADDR": "127.0.0.1:0",
               "CREDITS_BILLING_ADDR": "127.0.0.1:0", "CREDITS_PORTAL_ADDR": "127.0.0.1:0"}
        env[setting] = f"127.0.0.1:{port}" if as_address else str(port)
        code, _, err = await asyncio.wait_for(creditctl("up", **env), 60)
    line = one_line(err)
    assert code == 1 and f"port {port} is in use" in line and setting in line, line
    assert not (tmp_path / "data" / "postgres").exists()  # nothing was started


def test_a_program_that_failed_is_one_line_with_its_last_words_and_log() -> None:
    """The embedded Postgres not starting (pg_ctl) is one line naming the program, its answer and its log."""
    import subprocess

    from creditctl.errors import _as_user_error

    err = subprocess.CalledProcessError(
        1, ["runuser", "-u", "embedded_postgres", "--", "/opt/pg/bin/pg_ctl", "-D", "/d/pgdata", "-l",
            "/d/postgres.log", "start"], stderr=b"waiting for server to start.... stopped waiting\n"
                                               b"pg_ctl: could not start server\nExamine the log output.\n")
    known = _as_user_error(err)
    assert known is not None and known.code == 1
    assert known.message == "creditctl: pg_ctl failed (exit 1): pg_ctl: could not start server (log: /d/postgres.log)"


async def test_reconcile_with_the_stack_down_could_not_run(tmp_path: Path) -> None:
    """Nothing checked is neither a pass nor a violation: exit 2 and the reason, in one line."""
    from service_runtime.embedded_postgres import free_port

    code, out, err = await creditctl("reconcile", CREDITS_DATA_DIR=str(tmp_path / "data"),
                                     CREDITS_EMBEDDED_PG_PORT=str(free_port()))
    line = one_line(err)
    assert code == 2 and out == "" and line.startswith("reconcile could not run: a service database is unreachable")
