"""One settings object for every CREDITS_* variable: each variable the code or the docs name is declared
there; a bad value is one line naming it (creditctl and the servers alike); `creditctl config show` says
where each value came from, the running stack's recorded addresses included."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from service_runtime.settings import (
    Settings,
    SettingsError,
    describe,
    env_name,
    read_stack_file,
    remove_stack_file,
    write_stack_file,
)
from tests.creditctl.test_user_mistakes import creditctl, one_line

ROOT = Path(__file__).resolve().parents[2]
NAMED = re.compile(r"\bCREDITS_[A-Z0-9_]*[A-Z0-9]\b")
SCANNED = ("*.py", "*.md", "*.yaml", "*.yml", "Dockerfile")


def _named_in_the_tree() -> set[str]:
    """Every CREDITS_* name in product code, deploy files and docs (tests have their own knobs)."""
    names: set[str] = set()
    for pattern in SCANNED:
        for path in ROOT.rglob(pattern):
            parts = path.relative_to(ROOT).parts
            if parts[0] in {"tests", "protos", ".git"} or ".credits-data" in parts:
                continue
            names |= set(NAMED.findall(path.read_text(errors="replace")))
    return names - {"CREDITS_TLS", "CREDITS_X"}  # "CREDITS_TLS_*" in prose; the docstring's placeholder


def test_every_variable_the_tree_names_is_declared_once() -> None:
    declared = {env_name(f) for f in Settings.model_fields}
    named = _named_in_the_tree()
    assert len(named) > 40
    assert named - declared == set()


@pytest.mark.parametrize(("variable", "value", "says"), [
    ("CREDITS_EMBEDDED_PG_PORT", "fifty", "valid integer"),
    ("CREDITS_LOG_LEVEL", "loud", "'INFO'"),
    ("CREDITS_CLOCK_SKEW_S", "-5", "greater than or equal to 0"),
    ("CREDITS_TLS_REQUIRED", "perhaps", "boolean"),
    ("CREDITS_COORDINATOR_KEYS", "[1]", "JSON object"),
])
def test_a_bad_value_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str,
                                                     says: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as raised:
        Settings.from_env()
    line = str(raised.value)
    assert "\n" not in line and line.startswith(f"{variable}={value!r}: ") and says in line


def test_values_parse_and_an_argument_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDITS_LOG_LEVEL", "debug")
    monkeypatch.setenv("CREDITS_ROW_SECURITY", "0")
    monkeypatch.setenv("CREDITS_TEMPORAL_ADDR", "")  # empty is unset
    settings = Settings.from_env(ledger_addr="127.0.0.1:1")
    assert (settings.log_level, settings.row_security, settings.temporal_addr) == ("DEBUG", False, "")
    assert settings.ledger_addr == "127.0.0.1:1" and settings.data_dir.is_absolute()


def test_the_running_stacks_addresses_fill_what_the_environment_leaves_unset(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CREDITS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CREDITS_INVOICE_ADDR", "127.0.0.1:7")
    monkeypatch.delenv("CREDITS_LEDGER_ADDR", raising=False)
    monkeypatch.delenv("CREDITS_TEMPORAL_ADDR", raising=False)
    write_stack_file(tmp_path, {"ledger_addr": "127.0.0.1:5", "invoice_addr": "127.0.0.1:6",
                                "temporal_addr": "127.0.0.1:9", "api_key": "never read from the file"})
    settings = Settings.from_env(stack=True)
    assert (settings.ledger_addr, settings.invoice_addr, settings.temporal_addr) == (
        "127.0.0.1:5", "127.0.0.1:7", "127.0.0.1:9")  # the environment wins over the file
    assert Settings.from_env().ledger_addr == "127.0.0.1:50051"  # servers never read it
    sources = {r["variable"]: r["source"] for r in describe(settings)}
    assert sources["CREDITS_LEDGER_ADDR"].startswith("stack (") and sources["CREDITS_INVOICE_ADDR"] == "env"
    assert sources["CREDITS_HOLD_TTL_S"] == "default"
    remove_stack_file(tmp_path)
    assert read_stack_file(tmp_path) == {}
    (tmp_path / "stack.json").write_text(json.dumps({"pid": 2**22 + 12345, "ledger_addr": "127.0.0.1:5"}))
    assert read_stack_file(tmp_path) == {}  # its process is gone: a stale file is ignored


def test_secrets_are_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDITS_API_KEY", "ck_0123abcd.s3cr3t")
    monkeypatch.setenv("CREDITS_LEDGER_DSN", "postgresql://owner:hunter2@db:5432/ledger")
    shown = {r["variable"]: r["value"] for r in describe(Settings.from_env())}
    assert shown["CREDITS_API_KEY"] == "ck_0123abcd.*** (set)"
    assert shown["CREDITS_LEDGER_DSN"] == "postgresql://owner:***@db:5432/ledger"
    assert "s3cr3t" not in json.dumps(shown) and "hunter2" not in json.dumps(shown)


async def test_config_show_prints_each_value_and_its_source() -> None:
    code, out, err = await creditctl("config", "show", "--json", CREDITS_HOLD_TTL_S="60")
    assert code == 0, err
    rows = {r["variable"]: r for r in json.loads(out)}
    assert rows["CREDITS_HOLD_TTL_S"]["value"] == "60" and rows["CREDITS_HOLD_TTL_S"]["source"] == "env"
    assert rows["CREDITS_CLOCK_SKEW_S"] == {"variable": "CREDITS_CLOCK_SKEW_S", "value": "300", "source": "default",
                                            "description": rows["CREDITS_CLOCK_SKEW_S"]["description"]}
    assert "CREDITS_FAULTS" not in rows  # harness-only: with --all
    code, out, _ = await creditctl("config", "show", "--csv", "--all")
    assert code == 0 and out.startswith("variable,value,source,description\n") and "CREDITS_FAULTS," in out
    code, out, err = await creditctl("config", "show", CREDITS_HOLD_TTL_S="soon")
    assert code == 2 and out == "" and one_line(err).startswith("settings: CREDITS_HOLD_TTL_S='soon': ")


@pytest.mark.parametrize("module", ["ledger_service.server", "invoice_service.server", "coordinator.worker"])
def test_a_server_refuses_a_bad_value_in_one_line(module: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")}
    env.update(CREDITS_POOL_MAX_SIZE="lots", PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, "-m", module], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 2 and one_line(done.stderr).startswith("settings: CREDITS_POOL_MAX_SIZE='lots': ")


async def test_a_server_whose_port_is_taken_says_which_port_and_setting() -> None:
    import asyncio
    import socket

    from invoice_service.storage import MIGRATIONS_DIR as INVOICE_MIGRATIONS
    from service_runtime.databases import TENANCY_MIGRATIONS
    from tests.postgres_fixtures import fresh_database

    dsn = await fresh_database("invoice", [TENANCY_MIGRATIONS, INVOICE_MIGRATIONS])
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env.update(CREDITS_INVOICE_DSN=dsn, CREDITS_INVOICE_ADDR=f"127.0.0.1:{port}", PYTHONWARNINGS="ignore",
                   CREDITS_LOG_LEVEL="ERROR")
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "invoice_service.server", cwd=ROOT, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    line = one_line(err.decode())
    assert proc.returncode == 1 and line.startswith(f"port {port} is in use (CREDITS_INVOICE_ADDR=127.0.0.1:{port})")
