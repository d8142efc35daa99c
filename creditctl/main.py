"""creditctl entry point: each command module registers its subcommands here."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence

# Each module defines register(subparsers) and sets a `func` default on its parsers.
COMMAND_MODULES = (
    "creditctl.admin_commands",
    "creditctl.ledger_commands",
    "creditctl.invoice_commands",
    "creditctl.coordinator_commands",
    "creditctl.people_commands",
    "creditctl.proof_commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="creditctl", description="Credits engine for usage-based billing")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    warnings.filterwarnings("ignore", module="platformdirs")
    parser = build_parser()
    args = parser.parse_args(argv)
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
