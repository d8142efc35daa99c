"""creditctl statements: an account's journal entries, oldest first (CREDITS_LEDGER_ADDR, CREDITS_API_KEY)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click
from credits.ledger.v1 import ledger_pb2 as lpb
from credits.ledger.v1 import ledger_pb2_grpc

from creditctl.arguments import iso
from creditctl.connection import Metadata, call_ledger
from creditctl.help_listing import Command
from creditctl.output import Format, emit_rows, format_options, print_json
from creditctl.times import INSTANT, SINCE
from service_runtime.proto_time import to_timestamp

COLUMNS = ("entry_id", "recorded_at", "kind", "amount", "unit", "lot_id", "reference", "reason")


def _row(e: lpb.Entry) -> dict[str, Any]:
    return {"entry_id": e.entry_id, "recorded_at": iso(e.recorded_at, "recorded_at"),
            "effective_at": iso(e.effective_at, "effective_at"), "kind": lpb.EntryKind.Name(e.kind),
            "amount": e.amount, "unit": e.unit, "lot_id": e.lot_id, "reference": e.reference or e.hold_key,
            "actor": e.actor, "reason": e.reason}


@click.command("statements", cls=Command, help="an account's journal entries, oldest first")
@click.argument("account")
@click.option("--since", type=SINCE, default=None, help="recorded at or after: ISO 8601, 24h (ago), -7d")
@click.option("--until", type=INSTANT, default=None, help="recorded before: ISO 8601, now, -1h")
@click.option("--limit", type=int, default=1000, show_default=True)
@format_options(csv_=True)
def command(account: str, since: datetime | None, until: datetime | None, limit: int, fmt: Format) -> int:
    async def work(stub: ledger_pb2_grpc.LedgerServiceStub, md: Metadata) -> tuple[list[lpb.Entry], str]:
        entries: list[lpb.Entry] = []
        token = ""
        while len(entries) < limit:
            request = lpb.ListEntriesRequest(account_id=account, page_size=min(1000, limit - len(entries)),
                                             page_token=token)
            if since:
                getattr(request, "from").CopyFrom(to_timestamp(since))  # `from` is a Python keyword
            if until:
                request.to.CopyFrom(to_timestamp(until))
            response = await stub.ListEntries(request, metadata=md)
            entries.extend(response.entries)
            token = response.next_page_token
            if not token:
                break
        return entries, token

    entries, more = call_ledger(work)
    rows = [_row(e) for e in entries]
    if fmt == Format.JSON:
        print_json({"account_id": account, "entries": rows, "more": bool(more)})
        return 0
    if fmt == Format.TABLE:
        click.echo(f"statement of {account}: {len(rows)} entries" + (" (more: raise --limit)" if more else ""))
    if rows or fmt != Format.TABLE:
        emit_rows(rows, COLUMNS, fmt)
    return 0
