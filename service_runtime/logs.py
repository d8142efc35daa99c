"""Structured JSON logs: one object per line, carrying the request id, tenant and, inside Temporal
activities and workflows, the workflow id and run id — so one request can be followed across
the front door, the worker and both services.

CREDITS_LOG_FORMAT=json (default for servers) or text; CREDITS_LOG_LEVEL=INFO.
"""

from __future__ import annotations

import contextvars
import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service_runtime.settings import Settings

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
tenant_id: contextvars.ContextVar[str] = contextvars.ContextVar("tenant_id", default="")


def _temporal_ids() -> dict[str, str]:
    from temporalio import activity, workflow

    if activity.in_activity():
        info = activity.info()
        return {"workflow_id": info.workflow_id or "", "run_id": info.workflow_run_id or "",
                "activity": info.activity_type}
    if workflow.in_workflow():
        winfo = workflow.info()
        return {"workflow_id": winfo.workflow_id, "run_id": winfo.run_id}
    return {}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if rid := request_id.get():
            out["request_id"] = rid
        if tid := tenant_id.get():
            out["tenant_id"] = tid
        out.update(_temporal_ids())
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(default_format: str = "json", settings: Settings | None = None, *,
                      clock_only: bool = False) -> None:
    """Root logging for a server process, from CREDITS_LOG_FORMAT / CREDITS_LOG_LEVEL (the settings)."""
    from service_runtime.settings import Settings

    settings = settings or Settings.from_env()
    handler = logging.StreamHandler()
    if (settings.log_format or default_format) == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                                               "%H:%M:%S" if clock_only else None))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
