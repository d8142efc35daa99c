"""creditctl entry point: the root command group, with one module per top-level command in creditctl/commands/.

`main(argv)` returns the exit status of the command that ran. A user mistake, a refused call or an
unreachable service is printed as one line on stderr and raised as `creditctl.errors.UserError`
(a SystemExit carrying the status), as a bad command line always did.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from creditctl.commands import (
    accounts,
    alerts,
    allowances,
    audit,
    balances,
    bench,
    billing,
    chaos,
    completion,
    config,
    coupons,
    customers,
    demo,
    drafts,
    explain,
    finance,
    grants,
    holds,
    invoices,
    keys,
    ledger,
    lots,
    meters,
    migrate,
    operation,
    plans,
    policy,
    portal,
    rates,
    reconcile,
    sagas,
    settlements,
    statements,
    subscriptions,
    taxes,
    tenants,
    topups,
    transfers,
    units,
    up,
    usage,
    watch,
    webhooks,
)
from creditctl.errors import reported
from creditctl.help_listing import Group

# Each module defines its top-level command as `command`; listed in this order by `creditctl --help`.
COMMANDS = (up, demo, migrate, tenants, keys, ledger, grants, allowances, balances, statements, invoices, sagas,
            billing, operation, audit, reconcile, chaos, bench,
            # the product, one group per family of RPCs (a person's first hour: README "CLI tour")
            accounts, units, rates, lots, holds, transfers, explain, policy, settlements,
            customers, meters, plans, subscriptions, usage, drafts, alerts, webhooks, topups, finance, config,
            completion, watch, portal, coupons, taxes)


# How `creditctl --help` groups the commands for a newcomer; a command listed nowhere appears under "More".
SECTIONS = (
    ("Start", ("up", "demo", "tenants", "keys", "config", "completion")),
    ("Credits (ledger)", ("accounts", "units", "rates", "grants", "lots", "balances", "watch", "statements", "holds",
                          "transfers", "explain", "policy", "settlements", "allowances", "alerts", "webhooks",
                          "topups")),
    ("Billing (catalog, usage, invoices, sagas)", ("customers", "meters", "plans", "subscriptions", "usage", "drafts",
                                                   "invoices", "sagas", "billing", "operation", "portal",
                                                   "coupons", "taxes")),
    ("Finance", ("finance",)),
    ("Operations", ("migrate", "ledger", "audit", "reconcile", "chaos", "bench")),
)


def build_cli() -> click.Group:
    root = Group("creditctl", help="Credits engine for usage-based billing. Instants everywhere: ISO 8601, "
                 "'now', or relative (+30d, -24h). Reads take --json, lists --csv.",
                 context_settings={"help_option_names": ["-h", "--help"], "show_default": True,
                                   "max_content_width": 110})
    root.sections = SECTIONS
    click.version_option(package_name="credits-engine", prog_name="creditctl", message="%(prog)s %(version)s")(root)
    for module in COMMANDS:
        root.add_command(module.command)
    return root


cli = build_cli()


def main(argv: Sequence[str] | None = None) -> int:
    with reported():
        status = cli.main(args=list(argv) if argv is not None else None, prog_name="creditctl",
                          standalone_mode=False)
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
