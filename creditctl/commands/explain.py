"""creditctl explain: why each lot was or was not used for each charge of a hold (ExplainAllocation).

`explain HOLD_KEY`, or `explain --invoice INV` for every hold a finalization saga placed for it.
"""

from __future__ import annotations

from typing import Any

import click
from credits.ledger.v1 import ledger_pb2 as lpb

from coordinator.naming import invoice_holds_prefix
from creditctl.connection import paged, rpc
from creditctl.help_listing import Command
from creditctl.output import Format, emit_rows, format_options, print_json
from creditctl.records import record


def _print(ex: dict[str, Any]) -> None:
    policy = ex.get("policy", {})
    click.echo(f"hold {ex['hold_key']}: policy v{policy.get('version', 0)} "
               f"({', '.join(policy.get('sort_keys', [])) or 'default order'})")
    for charge in ex.get("charges", []):
        rows = [{**lot, "eligible": "yes" if lot.get("eligible") else "no",
                 "sort_values": " ".join(lot.get("sort_values", []))} for lot in charge.get("lots", [])]
        emit_rows(rows, ("lot_id", "lot_type", "eligible", "allocated", "why"), Format.TABLE,
                  title=f"charge {charge['charge_id']}")


@click.command("explain", cls=Command, help="which lots paid each charge of a hold, in which order, and why")
@click.argument("hold_key", required=False, default="")
@click.option("--invoice", default="", help="explain the holds the saga placed for this invoice")
@format_options()
def command(hold_key: str, invoice: str, fmt: Format) -> int:
    if bool(hold_key) == bool(invoice):
        raise click.UsageError("give a HOLD_KEY or --invoice, one of them")
    keys = [hold_key] if hold_key else [h.hold_key for h in paged(
        "ledger", "ListHolds", lpb.ListHoldsRequest(hold_key_prefix=invoice_holds_prefix(invoice)), "holds")]
    if not keys:
        raise click.UsageError(f"no hold of invoice {invoice}: it has not been finalized")
    explained = [record(rpc("ledger", "ExplainAllocation", lpb.ExplainAllocationRequest(hold_key=k))) for k in keys]
    if fmt == Format.JSON:
        print_json(explained if invoice else explained[0])
    else:
        for ex in explained:
            _print(ex)
    return 0
