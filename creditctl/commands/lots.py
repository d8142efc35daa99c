"""creditctl lots list|show|void|boundaries|expire: an account's credit lots, with an expiry timeline.

`lots list` shows what is usable now and when it runs out: the table of lots, then the timeline of
their expiries, soonest first, with what each leaves available (ListLots, GetLot, VoidGrant,
GetLotBoundaries, ExpireLots).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click
from credits.ledger.v1 import ledger_pb2 as lpb

from creditctl.connection import paged, rpc
from creditctl.help_listing import Group
from creditctl.output import Format, emit_record, emit_rows, format_options, print_table
from creditctl.records import idempotency_option, key_for, record, records, set_instant, short_instant
from creditctl.times import INSTANT

COLUMNS = ("lot_id", "type", "unit", "amount", "available", "priority", "effective", "expires", "expires_in")


def _flat(lot: dict[str, Any], now: datetime) -> dict[str, Any]:
    """A lot's record with its balance and window flattened for a table row."""
    until = lot.get("usable_until") or lot.get("expires_at") or ""
    return {**lot, "available": lot.get("balance", {}).get("available", ""),
            "pending_expiry": lot.get("balance", {}).get("pending_expiry", ""),
            "effective": short_instant(lot.get("effective_at", "")), "expires": short_instant(until) or "never",
            "expires_in": relative(until, now)}


def relative(instant: str, now: datetime) -> str:
    """`in 12d`, `3h ago`, `never` for an RFC 3339 instant relative to `now`."""
    if not instant:
        return "never"
    delta = (datetime.fromisoformat(instant) - now).total_seconds()
    span = abs(delta)
    text = (f"{span / 86400:.0f}d" if span >= 86400 else f"{span / 3600:.0f}h" if span >= 3600
            else f"{span / 60:.0f}m")
    return f"in {text}" if delta >= 0 else f"{text} ago"


def timeline(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Expiries soonest first (never-expiring last), with each unit's available credit left after each."""
    dated = sorted(rows, key=lambda r: (r["expires"] == "never", r["expires"], r["lot_id"]))
    left: dict[str, Any] = {}
    for r in rows:
        left[r["unit"]] = left.get(r["unit"], 0) + _number(r["available"])
    out = []
    for r in dated:
        if r["expires"] == "never":
            out.append(["never", "", f"{r['available']} {r['unit']}", r["lot_id"], r["type"], ""])
            continue
        left[r["unit"]] -= _number(r["available"])
        out.append([r["expires"], r["expires_in"], f"{r['available']} {r['unit']}", r["lot_id"], r["type"],
                    f"{left[r['unit']]} {r['unit']}"])
    return out


def _number(text: str) -> Any:
    from decimal import Decimal

    return Decimal(text or "0")


@click.group("lots", cls=Group, help="credit lots: list with an expiry timeline, show, void (CREDITS_LEDGER_ADDR)")
def command() -> None:
    pass


@command.command("list", help="an account's lots with what is available, and the timeline of their expiries")
@click.argument("account_id")
@click.option("--unit", default="")
@click.option("--include-empty", is_flag=True, help="also lots with nothing left")
@click.option("--limit", type=click.IntRange(min=1), default=1000)
@format_options(csv_=True, quiet=True)
def list_(account_id: str, unit: str, include_empty: bool, limit: int, fmt: Format) -> int:
    lots = paged("ledger", "ListLots", lpb.ListLotsRequest(account_id=account_id, unit=unit,
                                                          include_empty=include_empty), "lots", limit=limit)
    now = datetime.now(UTC)
    rows = [_flat(r, now) for r in records(lots)]
    emit_rows(rows, COLUMNS, fmt, title=f"lots of {account_id}" if fmt == Format.TABLE else "")
    if fmt == Format.TABLE and rows:
        click.echo()
        print_table(("expires", "in", "available", "lot_id", "type", "left after"), timeline(rows),
                    title="expiry timeline")
    return 0


@command.command("show", help="one lot: its window, scope, provenance and balance (now or --as-of)")
@click.argument("lot_id")
@click.option("--as-of", type=INSTANT, default=None, help="replay the balance at this instant")
@format_options()
def show(lot_id: str, as_of: datetime | None, fmt: Format) -> int:
    request = lpb.GetLotRequest(lot_id=lot_id)
    set_instant(request.as_of, as_of)
    emit_record(record(rpc("ledger", "GetLot", request)), fmt)
    return 0


@command.command("void", help="void the unused rest of a lot (VoidGrant)")
@click.argument("lot_id")
@click.option("--reason", default="")
@idempotency_option
@format_options()
def void(lot_id: str, reason: str, idempotency_key: str, fmt: Format) -> int:
    response = rpc("ledger", "VoidGrant", lpb.VoidGrantRequest(idempotency_key=key_for(idempotency_key), lot_id=lot_id,
                                                                reason=reason))
    emit_record({"voided_amount": response.voided_amount, **record(response.lot)}, fmt)
    return 0


@command.command("boundaries", help="instants inside a period where the account's lots start or end")
@click.argument("account_id")
@click.option("--unit", default="USD", show_default=True)
@click.option("--from", "start", type=INSTANT, required=True)
@click.option("--to", "end", type=INSTANT, required=True)
@format_options(csv_=True)
def boundaries(account_id: str, unit: str, start: datetime, end: datetime, fmt: Format) -> int:
    request = lpb.GetLotBoundariesRequest(account_id=account_id, unit=unit)
    set_instant(request.period_start, start)
    set_instant(request.period_end, end)
    instants = record(rpc("ledger", "GetLotBoundaries", request)).get("instants", [])
    emit_rows([{"instant": i} for i in instants], ("instant",), fmt)
    return 0


@command.command("expire", help="expire (or roll over) settled lots past their window now, as the schedule does")
@click.option("--account", default="", help="default: every account of the tenant")
@click.option("--as-of", type=INSTANT, default="now", show_default=True)
@idempotency_option
@format_options(csv_=True)
def expire(account: str, as_of: datetime, idempotency_key: str, fmt: Format) -> int:
    request = lpb.ExpireLotsRequest(idempotency_key=key_for(idempotency_key), account_id=account)
    set_instant(request.as_of, as_of)
    response = rpc("ledger", "ExpireLots", request)
    now = datetime.now(UTC)
    if fmt == Format.TABLE:
        click.echo(f"{response.lots_expired} lot(s) expired")
    emit_rows([_flat(r, now) for r in records(response.lots)], COLUMNS, fmt, empty="")
    return 0
