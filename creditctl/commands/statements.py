"""creditctl statements: an account's statement for a period (GetStatement), or its export as CSV or JSON
lines (ExportStatement, streamed, with a progress bar when written to a file); `--entries` for the raw
journal (ListEntries)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import click
from credits.ledger.v1 import ledger_pb2 as lpb
from credits.ledger.v1 import ledger_pb2_grpc

from creditctl.arguments import iso
from creditctl.connection import Metadata, call_ledger
from creditctl.downloads import download
from creditctl.help_listing import Command
from creditctl.output import Format, emit_rows, format_options, print_fields, print_table
from creditctl.times import INSTANT, SINCE
from service_runtime.proto_time import to_timestamp

COLUMNS = ("entry_id", "recorded_at", "kind", "amount", "unit", "lot_id", "reference", "reason")
LINE_COLUMNS = ("recorded_at", "movement", "amount", "balance", "available", "reference", "detail")


def _row(e: lpb.Entry) -> dict[str, Any]:
    return {"entry_id": e.entry_id, "recorded_at": iso(e.recorded_at, "recorded_at"),
            "effective_at": iso(e.effective_at, "effective_at"), "kind": lpb.EntryKind.Name(e.kind),
            "amount": e.amount, "unit": e.unit, "lot_id": e.lot_id, "reference": e.reference or e.hold_key,
            "actor": e.actor, "reason": e.reason}


def _period(request: Any, since: datetime | None, until: datetime | None) -> Any:
    if since:
        getattr(request, "from").CopyFrom(to_timestamp(since))  # `from` is a Python keyword
    if until:
        request.to.CopyFrom(to_timestamp(until))
    return request


def _detail(line: lpb.StatementLine) -> str:
    if line.items:
        return ", ".join(f"{i.charge_id}{f' ({i.name})' if i.name else ''} {i.amount}" for i in line.items)
    return ", ".join(f"{lot.lot_id} {lpb.LotType.Name(lot.type)}" + (
        f" until {iso(lot.expires_at, 'expires_at')}" if lot.HasField("expires_at") else "") for lot in line.lots)


def _line_row(line: lpb.StatementLine) -> dict[str, Any]:
    return {"recorded_at": iso(line.recorded_at, "recorded_at"),
            "movement": lpb.MovementType.Name(line.type).removeprefix("MOVEMENT_"), "amount": line.amount,
            "balance": line.balance, "available": line.available, "reference": line.reference or line.hold_key,
            "detail": _detail(line)}


def _entries(account: str, since: datetime | None, until: datetime | None, limit: int, fmt: Format) -> int:
    async def work(stub: ledger_pb2_grpc.LedgerServiceStub, md: Metadata) -> tuple[list[lpb.Entry], str]:
        entries: list[lpb.Entry] = []
        token = ""
        while len(entries) < limit:
            request = _period(lpb.ListEntriesRequest(account_id=account, page_size=min(1000, limit - len(entries)),
                                                     page_token=token), since, until)
            response = await stub.ListEntries(request, metadata=md)
            entries.extend(response.entries)
            token = response.next_page_token
            if not token:
                break
        return entries, token

    entries, more = call_ledger(work)
    if fmt == Format.TABLE:
        click.echo(f"journal of {account}: {len(entries)} entries" + (" (more: raise --limit)" if more else ""))
    if entries or fmt != Format.TABLE:
        emit_rows([_row(e) for e in entries], COLUMNS, fmt)
    return 0


def _statement(account: str, unit: str, since: datetime | None, until: datetime | None,
               limit: int) -> tuple[lpb.Statement, list[lpb.StatementLine]]:
    async def work(stub: ledger_pb2_grpc.LedgerServiceStub, md: Metadata) -> tuple[lpb.Statement,
                                                                                    list[lpb.StatementLine]]:
        lines: list[lpb.StatementLine] = []
        token = ""
        while True:
            request = _period(lpb.GetStatementRequest(account_id=account, unit=unit, page_token=token,
                                                      page_size=min(1000, max(1, limit - len(lines)))), since, until)
            page = await stub.GetStatement(request, metadata=md)
            lines.extend(page.lines)
            token = page.next_page_token
            if not token or len(lines) >= limit:
                return page, lines

    return call_ledger(work)


def _show(st: lpb.Statement, lines: list[lpb.StatementLine]) -> None:
    start = iso(getattr(st, "from"), "from") if st.HasField("from") else "the beginning"
    print_fields({
        "account": st.account_id, "unit": st.unit, "period": f"{start} → {iso(st.to, 'to')}",
        "opening balance": f"{st.opening_balance} (available {st.opening_available})",
        "credits in / out": f"{st.credits_in} / {st.credits_out}",
        "closing balance": f"{st.closing_balance} (available {st.closing_available})",
        "days until depletion": (f"{st.days_until_depletion} (consumed {st.trailing_consumption} in "
                                 f"{st.trailing_days} days)") if st.days_until_depletion else "no recent consumption",
    }, width=22)
    print_table(LINE_COLUMNS, [[r[c] for c in LINE_COLUMNS] for r in map(_line_row, lines)],
                title=f"{len(lines)} movements of {st.entries} entries"
                      + (" (more: raise --limit)" if st.next_page_token else ""))
    print_table(("type", "opening", "in", "out", "closing", "available"),
                [[lpb.LotType.Name(t.type), t.opening_balance, t.credits_in, t.credits_out, t.closing_balance,
                  t.closing_available] for t in st.by_type], title="by lot type")
    if st.expiry_timeline:
        print_table(("expires_at", "lot_id", "type", "amount"),
                    [[iso(p.expires_at, "expires_at"), p.lot_id, lpb.LotType.Name(p.type), p.amount]
                     for p in st.expiry_timeline], title="expiry timeline")


def _export(account: str, unit: str, since: datetime | None, until: datetime | None, as_json: bool, raw: bool,
            output: Path | None) -> int:
    request = _period(lpb.ExportStatementRequest(
        account_id=account, unit=unit, format=lpb.EXPORT_JSON if as_json else lpb.EXPORT_CSV,
        kind=lpb.EXPORT_ENTRIES if raw else lpb.EXPORT_STATEMENT), since, until)

    async def work(stub: ledger_pb2_grpc.LedgerServiceStub, md: Metadata) -> int:
        return await download(stub.ExportStatement(request, metadata=md), output, "entries",
                              lambda chunk: (chunk.entries_done, chunk.entries_total))

    written = call_ledger(work)
    if output:
        click.echo(f"wrote {written:,} bytes to {output}", err=True)
    return 0


@click.command("statements", cls=Command,
               help="an account's statement: opening, every movement with its running balance, closing")
@click.argument("account")
@click.option("--unit", default="", help="the unit (default: the account's only unit)")
@click.option("--since", type=SINCE, default=None, help="recorded at or after: ISO 8601, 24h (ago), -7d")
@click.option("--until", type=INSTANT, default=None, help="recorded before: ISO 8601, now, -1h")
@click.option("--limit", type=int, default=1000, show_default=True, help="movements (entries with --entries) shown")
@click.option("--entries", is_flag=True, help="the raw journal entries instead of the statement")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write the --csv / --json export to this file (with a progress bar)")
@format_options(csv_=True)
def command(account: str, unit: str, since: datetime | None, until: datetime | None, limit: int, entries: bool,
            output: Path | None, fmt: Format) -> int:
    if fmt in (Format.CSV, Format.JSON):
        return _export(account, unit, since, until, fmt == Format.JSON, entries, output)
    if output:
        raise click.UsageError("--output needs --csv or --json")
    if entries:
        return _entries(account, since, until, limit, fmt)
    st, lines = _statement(account, unit, since, until, limit)
    _show(st, lines)
    return 0
