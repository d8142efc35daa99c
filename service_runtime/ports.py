"""A port a process is told to listen on and cannot: one line naming the port and the setting to change.

`creditctl up` checks every port before it starts anything (`check_free`); a server that fails to bind
raises `PortInUse` with the same line (`service_runtime.grpc_server`).
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# Which setting names a server's listen address, by the service it serves.
ADDRESS_SETTING = {"ledger": "CREDITS_LEDGER_ADDR", "invoice": "CREDITS_INVOICE_ADDR",
                   "billing": "CREDITS_BILLING_ADDR"}


class PortInUse(OSError):
    """The message names the port and the setting that chose it."""


def host_port(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port) if port.isdigit() else 0


def in_use(port: int, setting: str, value: str = "") -> PortInUse:
    hint = " (0: any)" if setting == "CREDITS_TEMPORAL_PORT" else ""
    return PortInUse(f"port {port} is in use ({setting}={value or port}): stop what listens there, or set "
                     f"{setting} to a free port{hint}")


def bindable(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now (SO_REUSEADDR, as servers bind: TIME_WAIT is free)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def check_free(host: str, port: int, setting: str, value: str = "") -> None:
    """Raises PortInUse unless `port` (0: any, always free) can be bound on `host`."""
    if port and not bindable(host, port):
        raise in_use(port, setting, value)


def setting_for_service(service_name: str) -> str:
    """CREDITS_LEDGER_ADDR for credits.ledger.v1.LedgerService, ...; "" for another."""
    parts = service_name.split(".")
    return ADDRESS_SETTING.get(parts[1] if len(parts) > 2 else "", "")


@contextmanager
def port_in_use_is_one_line() -> Iterator[None]:
    """For a server's main: a port in use is its one line on stderr and exit 1, not a traceback."""
    try:
        yield
    except PortInUse as err:
        print(err, file=sys.stderr)
        raise SystemExit(1) from None
