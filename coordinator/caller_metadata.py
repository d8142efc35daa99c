"""Metadata for a front-door call to a participant on the caller's behalf."""

from __future__ import annotations

from typing import Any

from service_runtime import tracing


def on_behalf_of(context: Any) -> list[tuple[str, str]]:
    """The caller's own key (tenant keys are valid in every service, so the answer is what that tenant
    may see) and the trace context."""
    key = dict(context.invocation_metadata() or ()).get("x-api-key", "")
    return [("x-api-key", key), *tracing.outgoing_metadata()]
