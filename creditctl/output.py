"""How creditctl prints: JSON for scripts (`--json`), aligned tables and fields for people, notes on stderr."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import click


def print_json(value: Any, *, indent: int | None = 2) -> None:
    click.echo(json.dumps(value, indent=indent))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns as wide as their widest cell, a dashed rule under the headers."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_fields(fields: Mapping[str, Any], *, width: int) -> None:
    """One `name  value` line per field that has a value."""
    for name, value in fields.items():
        if value not in ("", None):
            click.echo(f"{name:<{width}} {value}")


def note(message: str) -> None:
    """A progress note on stderr, so stdout stays the command's result."""
    click.echo(f"… {message}", err=True)
