"""creditctl migrate: apply the numbered SQL migrations to every service database."""

from __future__ import annotations

import asyncio

import click

from creditctl.connection import load_settings
from creditctl.help_listing import Command
from creditctl.output import print_json
from creditctl.service_databases import migrate_all


@click.command("migrate", cls=Command, help="apply the numbered SQL migrations to every service database")
@click.option("--json", "as_json", is_flag=True)
def command(as_json: bool) -> int:
    applied = asyncio.run(migrate_all(load_settings()))
    if as_json:
        print_json(applied, indent=None)
    else:
        for db, names in applied.items():
            click.echo(f"{db}: {', '.join(names) if names else 'up to date'}")
    return 0
