"""`creditctl demo`: finalizes the seed invoice on a throw-away stack; at a terminal (or with --keep-up) the
stack stays up until Ctrl-C so the Temporal UI link it prints opens the saga; piped or in CI it exits."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 180


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITS_") and k != "CI"}
    return {**env, "NO_COLOR": "1", "CREDITS_LOG_LEVEL": "WARNING"}


def test_demo_without_a_terminal_finalizes_and_exits() -> None:
    done = subprocess.run([sys.executable, "-m", "creditctl", "demo"], cwd=ROOT, env=_env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "total 100.00, credits 50.00, due 50.00" in done.stdout
    assert "Ctrl-C" not in done.stdout and done.stdout.rstrip().endswith("stack stopped.")


def test_demo_keep_up_serves_the_ui_link_until_ctrl_c() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "creditctl", "demo", "--keep-up"], cwd=ROOT, env=_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        said: list[str] = []
        deadline = time.monotonic() + TIMEOUT_S
        while not any("Ctrl-C stops it" in line for line in said):
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, "".join(said)
            said.append(line)
        link = next(m.group(1) for line in said if (m := re.match(r"Temporal UI:\s+(http://\S+)", line)))
        assert "/workflows/finalize-invoice" in link, link
        with urllib.request.urlopen(link, timeout=10) as page:  # the stack is still up: the UI answers
            assert page.status == 200
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, "".join(said) + rest
        assert rest.rstrip().endswith("stack stopped.")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
