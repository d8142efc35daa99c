"""creditctl watch: an account's balance live (WatchBalance): the snapshot, then one line per committed
change with its sequence; --after N resumes after a sequence; --count N stops after N changes."""

from __future__ import annotations

import json

import click
from credits.ledger.v1 import ledger_pb2 as lpb
from credits.ledger.v1 import ledger_pb2_grpc

from creditctl.arguments import iso
from creditctl.connection import Metadata, call_ledger
from creditctl.help_listing import Command
from creditctl.output import Format, format_options


def _record(change: lpb.BalanceChange) -> dict[str, object]:
    return {"type": lpb.ChangeType.Name(change.type).removeprefix("CHANGE_"), "sequence": change.sequence,
            "recorded_at": iso(change.recorded_at, "recorded_at") if change.HasField("recorded_at") else "",
            "balances": {b.unit: {"available": b.available, "held": b.held, "balance": b.balance}
                         for b in change.balances}, "reason": change.reason}


def _line(change: lpb.BalanceChange) -> str:
    r = _record(change)
    units = "  ".join(f"{b.unit} available {b.available} held {b.held}" for b in change.balances) or "no credit"
    return f"#{r['sequence']:<8} {r['type']:<8} {units}" + (f"  ({change.reason})" if change.reason else "")


@click.command("watch", cls=Command, help="an account's balance, live: a snapshot, then every change")
@click.argument("account")
@click.option("--after", type=int, default=0, help="resume after this sequence (0: start with a snapshot)")
@click.option("--count", type=int, default=0, help="stop after this many changes (0: until Ctrl-C)")
@format_options()
def command(account: str, after: int, count: int, fmt: Format) -> int:
    async def work(stub: ledger_pb2_grpc.LedgerServiceStub, md: Metadata) -> int:
        seen = 0
        async for message in stub.WatchBalance(lpb.WatchBalanceRequest(account_id=account, after_sequence=after),
                                               metadata=md):
            for change in (message, *message.following):  # a backlog arrives as one message: a line each
                click.echo(json.dumps(_record(change)) if fmt == Format.JSON else _line(change))
                seen += 1
                if count and seen >= count:
                    return 0
        return 0

    return call_ledger(work)
