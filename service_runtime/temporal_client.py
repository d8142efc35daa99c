"""The one way every process of the project connects to Temporal (`connect_temporal`).

- namespace and TLS come from the settings (CREDITS_TEMPORAL_NAMESPACE, CREDITS_TEMPORAL_TLS*:
  `service_runtime.tls.temporal_tls`), so a CLI command reaches a TLS cluster as the worker does;
- the Temporal SDK core's own log lines (warnings and up) go through Python logging, as
  `temporalio.core...`, to standard error: left alone the core prints them to standard output, into
  the JSON a command prints there (`forward_core_logs`).
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from temporalio.client import Client
    from temporalio.runtime import LoggingConfig, Runtime

    from service_runtime.settings import Settings


def core_logging() -> LoggingConfig:
    """The core's logs at WARN and up, forwarded to the `temporalio.core` logger."""
    from temporalio.runtime import LogForwardingConfig, LoggingConfig, TelemetryFilter

    return LoggingConfig(filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
                         forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")))


@functools.cache  # once per process
def forward_core_logs() -> None:
    """Makes the process's default Temporal runtime forward the core's logs to Python logging (before the
    first client or worker of the process that uses the default runtime)."""
    from temporalio.runtime import Runtime, TelemetryConfig

    Runtime.set_default(Runtime(telemetry=TelemetryConfig(logging=core_logging())), error_if_already_set=False)


async def connect_temporal(address: str, *, settings: Settings | None = None, runtime: Runtime | None = None,
                           tls: Any = None) -> Client:
    """A client of `address` in the settings' namespace, with the settings' TLS (`tls`: False for plaintext,
    e.g. a dev server this process started itself), on `runtime` (default: the process's, see above)."""
    from temporalio.client import Client

    from service_runtime.settings import Settings
    from service_runtime.tls import temporal_tls

    settings = settings or Settings.from_env()
    if runtime is None:
        forward_core_logs()
    return await Client.connect(address, namespace=settings.temporal_namespace, runtime=runtime,
                                tls=temporal_tls() if tls is None else tls)
