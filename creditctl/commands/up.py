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
@click.option("--webhook-receiver", is_flag=True,
              help="also a local webhook receiver that verifies and prints every event it is sent")
@click.option("--webhook-port", type=int, default=8787, help="the receiver's port (default 8787)")
def command(data_dir: str, webhook_receiver: bool, webhook_port: int) -> int:
    from stack.launcher import serve_forever

    settings = load_settings(stack=False, **({"data_dir": Path(data_dir)} if data_dir else {}))
    configure_logging("text", settings, clock_only=True)  # a person watches it: the time of day
    asyncio.run(serve_forever(settings, webhook_port if webhook_receiver else None))
    return 0
