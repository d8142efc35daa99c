"""creditctl balances: an account's balance per unit and per lot type (CREDITS_LEDGER_ADDR, CREDITS_API_KEY)."""

from __future__ import annotations

from datetime import datetime

import click
from credits.ledger.v1 import ledger_pb2 as lpb
from credits.ledger.v1 import ledger_pb2_grpc

from creditctl.arguments import iso
from creditctl.connection import Metadata, call_ledger
from creditctl.help_listing import Command
from creditctl.output import print_json, print_table
from creditctl.times import INSTANT
from service_runtime.proto_time import to_timestamp

BALANCE_COLUMNS = ("available", "held", "consumed", "expired", "voided", "granted", "reinstated",
                   "transferred_out", "upcoming", "pending_expiry")


def _bucket(b: lpb.BalanceBucket) -> dict[str, str]:
    return {"unit": b.unit, **({"type": lpb.LotType.Name(b.type)} if b.type else {}),
            **{c: getattr(b, c) for c in BALANCE_COLUMNS}}


@click.command("balances", cls=Command, help="an account's balance per unit and per lot type")
@click.argument("account")
@click.option("--as-of", type=INSTANT, default=None)
@click.option("--json", "as_json", is_flag=True)
def command(account: str, as_of: datetime | None, as_json: bool) -> int:
    request = lpb.GetBalanceRequest(account_id=account)
    if as_of:
        request.as_of.CopyFrom(to_timestamp(as_of))

    async def work(stub: ledger_pb2_grpc.LedgerServiceStub, md: Metadata) -> lpb.Balance:
        return await stub.GetBalance(request, metadata=md)

    bal = call_ledger(work)
    totals, by_type = [_bucket(b) for b in bal.totals], [_bucket(b) for b in bal.by_type]
    if as_json:
        print_json({"account_id": bal.account_id, "as_of": iso(bal.as_of, "as_of"), "totals": totals,
                    "by_type": by_type})
        return 0
    click.echo(f"account {bal.account_id}, as of {iso(bal.as_of, 'as_of')}")
    cols: tuple[str, ...] = ("unit", *BALANCE_COLUMNS)
    if totals:
        print_table(cols, [[t[c] for c in cols] for t in totals])
    else:
        click.echo("(no credits)")
    if by_type:
        click.echo()
        cols = ("unit", "type", *BALANCE_COLUMNS)
        print_table(cols, [[t.get(c, "") for c in cols] for t in by_type])
    return 0
