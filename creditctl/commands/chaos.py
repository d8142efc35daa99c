"""creditctl chaos: a seeded crash/fault campaign on a throw-away multi-process stack, ended by the reconciler.

Exit 1 on any violation. The campaign is proving code: imported only when the command runs.
"""

from __future__ import annotations

import asyncio

import click

from creditctl.help_listing import Command
from creditctl.output import note, print_json


@click.command("chaos", cls=Command, help="seeded crash/fault campaign on a throw-away multi-process stack")
@click.option("--sagas", type=int, default=30, help="finalization/void sagas to run")
@click.option("--seed", type=int, default=1, help="the seed: same seed, same workload and fault schedule")
@click.option("--json", "as_json", is_flag=True, help="machine-readable summary")
@click.option("--keep", default="", help="keep logs and data in this directory")
@click.option("--quiet", is_flag=True, help="no progress lines on stderr")
def command(sagas: int, seed: int, as_json: bool, keep: str, quiet: bool) -> int:
    from harness.chaos import campaign

    config = campaign.CampaignConfig(sagas=sagas, seed=seed, keep_dir=keep)
    result = asyncio.run(campaign.run_campaign(config, progress=None if quiet else note))
    if as_json:
        print_json(result.as_dict())
    else:
        click.echo(result.render())
    return 0 if not result.violations else 1
