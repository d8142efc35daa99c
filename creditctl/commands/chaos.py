"""creditctl chaos: a seeded crash/fault campaign on a throw-away multi-process stack, ended by the reconciler.

Exit 1 on any violation; exit 3 when a planned fault was not applied (it missed its window, found nothing
to act on, or raised), unless --tolerate-missed-faults. The campaign is proving code: imported only when
the command runs.
"""

from __future__ import annotations

import asyncio
from typing import Any

import click

from creditctl.help_listing import Command
from creditctl.output import note, print_json

FAULTS_NOT_APPLIED = 3


@click.command("chaos", cls=Command, help="seeded crash/fault campaign on a throw-away multi-process stack")
@click.option("--sagas", type=int, default=30, help="finalization/void sagas to run")
@click.option("--topups", type=int, default=0,
              help="instead: N auto top-up crossings under ledger kills and payment faults (money vs credit audit)")
@click.option("--cycle", type=int, default=0,
              help="instead: a billing cycle of N customers finalizing inline under worker/ledger/invoice kills, a "
                   "Postgres restart (a round per 40 customers), front-door finalizations racing it (one per 10, "
                   "at least 4) and a lost front-door run (one per 40); every invoice audited (finalized "
                   "once, whole credit applied), then reconciled; --json keys: faults_applied, "
                   "faults_not_applied, cycle, second_cycle, gave_way, compensated, refused_at_prepare, races, "
                   "violations")
@click.option("--seed", type=int, default=1, help="the seed: same seed, same workload and fault schedule")
@click.option("--json", "as_json", is_flag=True,
              help="one JSON object: faults_planned and faults_applied (per kind), faults_total (applied), "
                   "faults_not_applied, violations, bank_reads, traffic, fault_log")
@click.option("--keep", default="", help="keep logs and data in this directory")
@click.option("--quiet", is_flag=True, help="no progress lines on stderr")
@click.option("--tolerate-missed-faults", is_flag=True,
              help="exit 0 even if a planned fault was not applied (listed in the report either way)")
def command(sagas: int, topups: int, cycle: int, seed: int, as_json: bool, keep: str, quiet: bool,
            tolerate_missed_faults: bool) -> int:
    if topups:
        return _topups(topups, seed, as_json, quiet)
    if cycle:
        return _cycle(cycle, seed, as_json, keep, quiet, tolerate_missed_faults)
    from harness.chaos import campaign

    config = campaign.CampaignConfig(sagas=sagas, seed=seed, keep_dir=keep)
    result = asyncio.run(campaign.run_campaign(config, progress=None if quiet else note))
    if as_json:
        print_json(result.as_dict())
    else:
        click.echo(result.render())
    return exit_code(result, tolerate_missed_faults)


def exit_code(result: Any, tolerate_missed_faults: bool) -> int:
    """1 on a violation; FAULTS_NOT_APPLIED when a planned fault was not applied (unless tolerated); else 0.
    `result` is a harness.chaos.campaign.CampaignResult (not imported here: product code never imports harness)."""
    if result.violations:
        return 1
    if not result.all_faults_applied and not tolerate_missed_faults:
        note(f"chaos: {len(result.faults_not_applied)} planned faults not applied (--tolerate-missed-faults "
             "to accept)")
        return FAULTS_NOT_APPLIED
    return 0


def _topups(topups: int, seed: int, as_json: bool, quiet: bool) -> int:
    """`chaos --topups N`: exit 1 on any duplicate charge or credit, unpaid credit, paid charge without credit."""
    from harness.chaos import topups as campaign

    result = asyncio.run(campaign.run(topups=topups, seed=seed, progress=None if quiet else note))
    if as_json:
        print_json(result.as_dict())
    else:
        click.echo(result.render())
    return 1 if result.violations else 0


def _cycle(customers: int, seed: int, as_json: bool, keep: str, quiet: bool, tolerate_missed_faults: bool) -> int:
    """`chaos --cycle N`: exit 1 on any violation, FAULTS_NOT_APPLIED when a planned fault was not applied."""
    from harness.chaos import cycle_chaos

    if customers < 12:
        raise click.BadParameter("at least 12 customers (races, a lost run and kills need a cycle that long)",
                                 param_hint="--cycle")
    config = cycle_chaos.CycleChaosConfig(customers=customers, seed=seed, keep_dir=keep, races=max(4, customers // 10),
                                          lost_runs=max(1, customers // 40))
    result = asyncio.run(cycle_chaos.run_cycle_chaos(config, progress=None if quiet else note))
    if as_json:
        print_json(result.as_dict())
    else:
        click.echo(result.render())
    if result.violations:
        return 1
    if result.faults_not_applied and not tolerate_missed_faults:
        note(f"chaos: {len(result.faults_not_applied)} planned faults not applied (--tolerate-missed-faults "
             "to accept)")
        return FAULTS_NOT_APPLIED
    return 0
