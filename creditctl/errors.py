"""What creditctl says when a command cannot do its job: one line on stderr and an exit status.

User mistakes (a bad flag value, a missing API key, an unknown account), refused gRPC calls and
unreachable services or databases are reported as one line, never a traceback. Anything else is
a bug in creditctl and keeps its traceback.

Exit statuses, as creditctl has always answered: 0 done; 1 the command ran and found a failure
(violations, a failed saga, a key that does not exist) or a database could not be reached; 2 bad
usage or settings; 3 a bench target missed (--check); 130 interrupted. A missing API key or a
refused call exits 2 for the ledger and the billing front door, 1 for the invoice and audit
services (creditctl.connection).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import click
import grpc

USAGE = 2  # what argparse and click both answer to a bad command line


class UserError(SystemExit):
    """A mistake the user can fix, or a refusal to pass on: `message` is the one line to print.

    A SystemExit carrying the exit status, so a function that stops the CLI with it needs no
    handler of its own; `creditctl.main.main` prints the line on stderr before it lets it go.
    """

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(status)
        self.message = message

    def __str__(self) -> str:
        return self.message


# What to check after the status line, for the refusals a person can act on at once.
_HINTS = {
    "UNAUTHENTICATED": "check CREDITS_API_KEY (creditctl tenants create / keys create)",
    "PERMISSION_DENIED": "the key's role may not do this (service_runtime/permissions.py lists who may)",
}


# The idempotency key creditctl generated for this run's mutation (creditctl.records.key_for): named in
# the line of a call whose answer may have been lost, so the person can retry it safely.
_generated_key: list[str] = []
_ANSWER_MAY_BE_LOST = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN", "INTERNAL")


def remember_generated_key(key: str) -> None:
    _generated_key[:] = [key]


def rpc_line(err: grpc.RpcError, target: str = "") -> str:
    """One line: `CODE: details`, e.g. `INVALID_ARGUMENT: charges[0].amount: has more than 2 decimal places`.

    The services put the field first in the details; a refusal that may be retried adds when
    (google.rpc.RetryInfo), an unreachable service names `target` (its address and setting), and
    an authentication or permission refusal says what to check.
    """
    if not isinstance(err, grpc.aio.AioRpcError | grpc.Call):
        return f"{type(err).__name__}: {err}"
    code = err.code().name
    details = " ".join(str(err.details() or "").split())  # one line, whatever the server sent
    line = f"{code}: {details}" if details else code
    retry_s = _retry_after_s(err)
    if retry_s is not None:
        line += f" (retry in {retry_s:.1f} s)"
    if code in ("UNAVAILABLE", "DEADLINE_EXCEEDED") and target:
        line += f" — {target}: is the stack up? (creditctl up)"
    elif code in _HINTS:
        line += f" — {_HINTS[code]}"
    if code in _ANSWER_MAY_BE_LOST and _generated_key:
        line += f"; retry safely with --idempotency-key {_generated_key[0]}"
    return line


def _retry_after_s(err: grpc.aio.AioRpcError | grpc.Call) -> float | None:
    """The retry delay of google.rpc.RetryInfo in the status details, if the server sent one."""
    try:
        from google.rpc import error_details_pb2, status_pb2

        metadata = err.trailing_metadata() or ()
        for key, value in metadata:
            if key == "grpc-status-details-bin":
                status = status_pb2.Status.FromString(value)
                for detail in status.details:
                    info = error_details_pb2.RetryInfo()
                    if detail.Unpack(info):
                        return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    except Exception:  # details we cannot read change nothing about the line
        return None
    return None


@contextmanager
def rpc_refusals(status: int, target: str = "") -> Iterator[None]:
    """A failed gRPC call inside the block becomes a UserError with `status`; `target` names the
    service, its address and setting for an unreachable one."""
    try:
        yield
    except grpc.RpcError as err:
        raise UserError(rpc_line(err, target), status) from None


def _program_failed(err: subprocess.CalledProcessError | subprocess.TimeoutExpired) -> str:
    """`creditctl: pg_ctl failed (exit 1): <its last line> (log: ...)` for a program creditctl ran."""
    cmd = [str(c) for c in (err.cmd if isinstance(err.cmd, list | tuple) else [err.cmd])]
    name = next((Path(c).name for c in cmd if "/" in c), cmd[0] if cmd else "a program")
    if isinstance(err, subprocess.TimeoutExpired):
        return f"creditctl: {name} did not finish within {err.timeout:.0f} s (a loaded machine? try again)"
    output = err.stderr or err.output or b""
    text = output.decode(errors="replace") if isinstance(output, bytes) else str(output)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    said = [line for line in lines if any(w in line.lower() for w in ("could not", "error", "fatal", "failed"))]
    last = (said or lines or [""])[-1]
    log = cmd[cmd.index("-l") + 1] if "-l" in cmd[:-1] else ""
    return f"creditctl: {name} failed (exit {err.returncode})" + (f": {last}" if last else "") + \
        (f" (log: {log})" if log else "")


def _usage_line(err: click.UsageError) -> str:
    path = err.ctx.command_path if err.ctx is not None else "creditctl"
    return f"{path}: {err.format_message()} (see '{path} --help')"


def _as_user_error(err: BaseException) -> UserError | None:
    """The one line for what a user can act on; None for a bug."""
    if isinstance(err, UserError):
        return err
    if isinstance(err, click.UsageError):
        return UserError(_usage_line(err), err.exit_code)
    if isinstance(err, click.ClickException):
        return UserError(f"creditctl: {err.format_message()}", err.exit_code)
    if isinstance(err, click.Abort):
        return UserError("creditctl: interrupted", 130)
    if isinstance(err, grpc.RpcError):
        return UserError(rpc_line(err), 1)
    if isinstance(err, asyncpg.PostgresError):
        return UserError(f"database: {type(err).__name__}: {err}", 1)
    if isinstance(err, subprocess.CalledProcessError | subprocess.TimeoutExpired):  # e.g. pg_ctl did not start
        return UserError(_program_failed(err), 1)
    if isinstance(err, OSError):  # a refused connection, a port in use, a binary not installed, a timeout
        return UserError(f"creditctl: {err or type(err).__name__}", 1)
    return None


@contextmanager
def reported() -> Iterator[None]:
    """Prints a user error raised in the block as its one line on stderr, then raises it as UserError.

    click's "no command given" keeps its full help text, as a newcomer typing `creditctl` wants.
    """
    try:
        yield
    except click.exceptions.NoArgsIsHelpError as err:
        click.echo(err.format_message(), err=True)
        raise UserError(err.format_message(), err.exit_code) from None
    except (Exception, UserError) as err:
        known = _as_user_error(err)
        if known is None:
            raise
        click.echo(known.message, err=True)
        if known is err:
            raise
        raise known from None
