"""creditctl config show: every CREDITS_* setting, its value and where it came from.

Sources: `env` (the environment), `stack (<data dir>/stack.json)` (the addresses the running `creditctl
up` recorded), `default`. Secrets (the API key, the coordinator's keys, DSN passwords) are never printed.
A value that does not parse is the one line naming the variable (exit 2), as for every command.
"""

from __future__ import annotations

import click

from creditctl.connection import load_settings
from creditctl.help_listing import Group
from creditctl.output import Format, emit_rows, format_options
from service_runtime.settings import describe


@click.group("config", cls=Group, help="the CREDITS_* settings: value and source of each")
def command() -> None:
    pass


@command.command("show", help="every CREDITS_* variable: its value and where it came from (env, the running "
                 "stack's file, default)")
@click.option("--all", "show_all", is_flag=True, help="also the harness-only variables")
@format_options(csv_=True)
def show(show_all: bool, fmt: Format) -> int:
    rows = describe(load_settings())
    if not show_all:
        rows = [r for r in rows if not r["description"].startswith("harness:")]
    emit_rows(rows, ("variable", "value", "source", "description"), fmt)
    return 0
