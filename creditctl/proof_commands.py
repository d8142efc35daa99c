"""creditctl reconcile | chaos: the proof harness (SPEC §11).

`reconcile` reads both service databases (settings: CREDITS_LEDGER_DSN / CREDITS_INVOICE_DSN, or
the embedded Postgres of `creditctl up`) and Temporal (CREDITS_TEMPORAL_ADDR, default the one
`creditctl up` starts) and prints every violation with the ids to look at; exit 1 when any.

`chaos --sagas N --seed S` runs a seeded fault campaign against a throw-away stack of separate OS
processes (see harness/chaos/) and ends with the reconciler; exit 1 on any violation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from service_runtime.settings import Settings


async def _reconcile(settings: Settings, temporal_addr: str, as_json: bool) -> int:
    from temporalio.client import Client

    from coordinator.reconciler import reconcile
    from service_runtime.databases import resolve_databases

    dbs = resolve_databases(settings, start_embedded=False)
    client: Client | None = None
    note = ""
    try:
        client = await asyncio.wait_for(Client.connect(temporal_addr, namespace=settings.temporal_namespace), 5)
    except Exception as exc:  # reported; the database checks still run
        note = f"temporal at {temporal_addr} unreachable ({exc}); decision and quiet checks skipped"
    report = await reconcile(dbs.ledger_dsn, dbs.invoice_dsn, client)
    if as_json:
        print(json.dumps({**report.as_dict(), "note": note}, indent=2))
    else:
        if note:
            print(note, file=sys.stderr)
        print(report.render())
    return 0 if report.ok else 1


def _cmd_reconcile(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    return asyncio.run(_reconcile(settings, args.temporal or settings.temporal_addr or "127.0.0.1:7233", args.json))


def _cmd_chaos(args: argparse.Namespace) -> int:
    from harness.chaos.campaign import CampaignConfig, run_campaign

    def say(msg: str) -> None:
        if not args.quiet:
            print(f"… {msg}", file=sys.stderr, flush=True)

    config = CampaignConfig(sagas=args.sagas, seed=args.seed, keep_dir=args.keep)
    result = asyncio.run(run_campaign(config, progress=say))
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(result.render())
    return 0 if not result.violations else 1


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    r = sub.add_parser("reconcile", help="cross-check ledger, invoices and Temporal once the system is quiet")
    r.add_argument("--json", action="store_true", help="machine-readable report")
    r.add_argument("--temporal", default="", help="Temporal frontend (default: settings, else 127.0.0.1:7233)")
    r.set_defaults(func=_cmd_reconcile)
    c = sub.add_parser("chaos", help="seeded crash/fault campaign on a throw-away multi-process stack")
    c.add_argument("--sagas", type=int, default=30, help="finalization/void sagas to run")
    c.add_argument("--seed", type=int, default=1, help="the seed: same seed, same workload and fault schedule")
    c.add_argument("--json", action="store_true", help="machine-readable summary")
    c.add_argument("--keep", default="", help="keep logs and data in this directory")
    c.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    c.set_defaults(func=_cmd_chaos)
