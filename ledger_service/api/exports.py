"""ExportStatement's rows: statement lines or journal entries as CSV or JSON lines, chunk by chunk.

The columns are fixed per kind (a spreadsheet or a loader can rely on them); amounts are the
decimal strings of the wire, instants ISO 8601 UTC. A statement export ends with a SUMMARY row
(opening and closing balances, credits in and out) so a file alone reconciles.
"""

from __future__ import annotations

from typing import Any

from credits.ledger.v1 import ledger_pb2 as pb

from ledger_service.domain.journal import Entry
from ledger_service.domain.statements import Line
from ledger_service.operations.statements import ExportProgress, StatementView
from service_runtime.amounts import format_minor
from service_runtime.export_rows import render

LINE_COLUMNS = ("row", "recorded_at", "movement", "amount", "available_change", "balance", "available", "unit",
                "reference", "hold_key", "reason", "lots", "items", "first_entry_id", "last_entry_id")
ENTRY_COLUMNS = ("entry_id", "recorded_at", "effective_at", "kind", "amount", "unit", "lot_id", "reference",
                 "hold_key", "reason", "actor")


def _iso(value: Any) -> str:
    return value.isoformat().replace("+00:00", "Z") if value is not None else ""


def line_row(line: Line, view: StatementView) -> dict[str, Any]:
    s = view.scale
    return {
        "row": "LINE", "recorded_at": _iso(line.recorded_at), "movement": line.movement.value,
        "amount": format_minor(line.change.balance, s), "available_change": format_minor(line.change.available, s),
        "balance": format_minor(line.after.balance, s), "available": format_minor(line.after.available, s),
        "unit": view.unit, "reference": line.reference, "hold_key": line.hold_key, "reason": line.reason,
        "lots": ";".join(f"{lot}={format_minor(a, s)}" for lot, a in line.lots),
        "items": ";".join(f"{cid}({name})={format_minor(a, s)}" for cid, name, a in line.items),
        "first_entry_id": line.first_entry_id, "last_entry_id": line.last_entry_id,
    }


def summary_row(view: StatementView) -> dict[str, Any]:
    s = view.scale
    return {"row": "SUMMARY", "recorded_at": _iso(view.end), "movement": "",
            "amount": format_minor(view.closing.balance - view.opening.balance, s),
            "available_change": format_minor(view.closing.available - view.opening.available, s),
            "balance": format_minor(view.closing.balance, s), "available": format_minor(view.closing.available, s),
            "unit": view.unit, "reference": f"opening {format_minor(view.opening.balance, s)}",
            "hold_key": "", "reason": f"in {format_minor(view.credits_in, s)} out {format_minor(view.credits_out, s)}",
            "lots": "", "items": "", "first_entry_id": "", "last_entry_id": ""}


def entry_row(e: Entry, scale: int) -> dict[str, Any]:
    return {"entry_id": e.entry_id, "recorded_at": _iso(e.recorded_at), "effective_at": _iso(e.effective_at),
            "kind": e.kind.value, "amount": format_minor(e.amount, scale), "unit": e.unit, "lot_id": e.lot_id,
            "reference": e.reference, "hold_key": e.hold_key, "reason": e.reason, "actor": e.actor}


def chunk(progress: ExportProgress, raw: bool, as_json: bool, first: bool) -> pb.ExportChunk:
    view = progress.view
    rows: list[dict[str, Any]]
    if raw:
        rows = [entry_row(e, view.scale) for e in progress.rows if isinstance(e, Entry)]
    else:
        rows = [line_row(ln, view) for ln in progress.rows if isinstance(ln, Line)]
        if progress.last:
            rows.append(summary_row(view))
    data = render(rows, ENTRY_COLUMNS if raw else LINE_COLUMNS, as_json, header=first)
    return pb.ExportChunk(data=data, entries_done=progress.entries_done, entries_total=progress.entries_total)

