"""How creditctl prints, in one place: tables and fields for people, `--json` and `--csv` for scripts.

People at a terminal get rich tables and colours (none when NO_COLOR is set, as rich honours it);
output to a pipe or a file is plain, aligned text with no colour codes. Every read command takes
`--json`, every list `--csv`, and commands that create or list things `-q/--quiet` (ids only, one a
line, for `$(...)` in a shell). Notes and progress go to stderr, so stdout stays the result.
"""

from __future__ import annotations

import csv
import enum
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import click
from rich import box
from rich.console import Console
from rich.table import Table

F = TypeVar("F", bound=Callable[..., Any])


class Format(enum.StrEnum):
    TABLE = "table"
    JSON = "json"
    CSV = "csv"
    QUIET = "quiet"


def format_options(*, csv_: bool = False, quiet: bool = False) -> Callable[[F], F]:
    """Adds --json (and --csv for lists, -q/--quiet for ids only); the command gets `fmt: Format`."""

    def decorate(f: F) -> F:
        if quiet:
            f = click.option("-q", "--quiet", "fmt", flag_value=Format.QUIET, help="only the id(s), one a line")(f)
        if csv_:
            f = click.option("--csv", "fmt", flag_value=Format.CSV, help="CSV with a header row")(f)
        return click.option("--json", "fmt", flag_value=Format.JSON, help="JSON for scripts")(
            click.option("--table", "fmt", flag_value=Format.TABLE, default=True, hidden=True)(f))

    return decorate


def is_terminal() -> bool:
    return sys.stdout.isatty()


def console(*, stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr); plain when not a terminal, colourless under NO_COLOR."""
    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def print_json(value: Any, *, indent: int | None = 2) -> None:
    click.echo(json.dumps(value, indent=indent, default=str))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, default=str, separators=(",", ":"))
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain text: columns as wide as their widest cell, a dashed rule under the headers."""
    cells = [[str(h) for h in headers], *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str = "") -> None:
    """A rich table at a terminal, the plain `table` otherwise."""
    if not is_terminal():
        if title:
            click.echo(title)
        click.echo(table(headers, rows))
        return
    t = Table(*headers, box=box.SIMPLE_HEAD, header_style="bold cyan", title=title or None, title_justify="left")
    for row in rows:
        t.add_row(*(_cell(c) for c in row))
    console().print(t)


def emit_rows(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], fmt: Format, *, id_column: str = "",
              title: str = "", empty: str = "(none)") -> None:
    """A list of records: a table of `columns`, JSON (every field), CSV (`columns`) or the ids."""
    if fmt == Format.JSON:
        print_json(list(rows))
    elif fmt == Format.CSV:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            writer.writerow([_cell(r.get(c)) for c in columns])
    elif fmt == Format.QUIET:
        for r in rows:
            click.echo(r.get(id_column or columns[0], ""))
    elif not rows:
        click.echo(f"{title}\n{empty}" if title else empty)
    else:
        print_table(columns, [[r.get(c, "") for c in columns] for r in rows], title=title)


def print_fields(fields: Mapping[str, Any], *, width: int) -> None:
    """One `name  value` line per field that has a value."""
    for name, value in fields.items():
        if value not in ("", None, [], {}):
            click.echo(f"{name:<{width}} {_cell(value)}")


def emit_record(record: Mapping[str, Any], fmt: Format, *, id_field: str = "") -> None:
    """One record: its fields (those with a value), JSON, or (quiet) its id."""
    if fmt == Format.JSON:
        print_json(dict(record))
    elif fmt == Format.QUIET:
        click.echo(record.get(id_field or next(iter(record), ""), ""))
    elif fmt == Format.CSV:
        emit_rows([record], list(record), fmt)
    elif is_terminal():
        t = Table(box=None, show_header=False, pad_edge=False)
        t.add_column(style="bold")
        t.add_column()
        for name, value in record.items():
            if value not in ("", None, [], {}):
                t.add_row(name, _cell(value))
        console().print(t)
    else:
        print_fields(record, width=max((len(k) for k in record), default=0) + 1)


def note(message: str) -> None:
    """A progress note on stderr, so stdout stays the command's result."""
    click.echo(f"… {message}", err=True)
