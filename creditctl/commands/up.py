"""creditctl up: the whole stack in the foreground (Ctrl-C stops it)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from creditctl.connection import load_settings
from creditctl.help_listing import Command
from service_runtime.logs import configure_logging


@click.command("up", cls=Command, help="run the whole stack in the foreground (Ctrl-C stops it)")
@click.option("--data-dir", default="")
def command(data_dir: str) -> int:
    from stack.launcher import serve_forever

    settings = load_settings(stack=False, **({"data_dir": Path(data_dir)} if data_dir else {}))
    configure_logging("text", settings, clock_only=True)  # a person watches it: the time of day
    asyncio.run(serve_forever(settings))
    return 0
