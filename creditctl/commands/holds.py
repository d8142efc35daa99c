"""creditctl holds list|show|reserve|commit|release|debit|reverse|release-expired: two-phase holds.

A hold reserves credit on specific lots (ReserveCredits), then posts all or part of it (CommitHold)
or gives it back (ReleaseHold); `debit` is both at once (DebitCredits). Saga holds are named
`inv/<invoice id>/<run>`; list them with `--prefix inv/` (or `explain --invoice`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click
from credits.ledger.v1 import ledger_pb2 as lpb

from creditctl.connection import paged, rpc
from creditctl.help_listing import Group
from creditctl.output import Format, emit_record, emit_rows, format_options
from creditctl.records import idempotency_option, key_for, record, set_instant, short_instant
from creditctl.times import INSTANT

STATUSES = ("PENDING", "COMMITTED", "RELEASED", "TOMBSTONE")
KINDS = ("USAGE", "ADD_ON", "FIXED_FEE", "LICENSE")
COLUMNS = ("hold_key", "account_id", "unit", "status", "requested", "reserved", "posted", "released", "created")


def _row(hold: lpb.Hold) -> dict[str, Any]:
    r = record(hold)
    return {**r, "created": short_instant(r.get("created_at", ""))}


def _show(hold: lpb.Hold, fmt: Format) -> int:
    r = record(hold)
    if fmt == Format.TABLE:
        allocations = r.pop("allocations", [])
        emit_record(r, fmt)
        if allocations:
            click.echo()
            emit_rows(allocations, ("charge_id", "lot_id", "lot_type", "amount", "posted"), fmt)
    else:
        emit_record(r, fmt, id_field="hold_key")
    return 0


def charge_options(f: Any) -> Any:
    for option in reversed((
        click.option("--amount", required=True, help="what to reserve, in the unit"),
        click.option("--unit", default="USD", show_default=True),
        click.option("--kind", type=click.Choice(KINDS, case_sensitive=False), default="USAGE", show_default=True),
        click.option("--name", default="", help="meter or add-on name (lots scoped to names need it)"),
        click.option("--at", type=INSTANT, default="now", show_default=True, help="the charge's service time"),
        click.option("--reference", default="", help="what it pays for (invoice id, usage event)"),
        click.option("--up-to", is_flag=True, help="take what is available instead of failing whole"),
    )):
        f = option(f)
    return f


def _charge(amount: str, kind: str, name: str, at: datetime) -> lpb.Charge:
    charge = lpb.Charge(charge_id="c1", kind=lpb.ChargeKind.Value(kind.upper()), name=name, amount=amount)
    set_instant(charge.service_start, at)
    return charge


@click.group("holds", cls=Group, help="holds: reserve, commit, release; list and inspect (CREDITS_LEDGER_ADDR)")
def command() -> None:
    pass


@command.command("list", help="holds, filtered by account, status or key prefix")
@click.option("--account", default="")
@click.option("--status", type=click.Choice(STATUSES, case_sensitive=False), default=None)
@click.option("--prefix", default="", help="hold key prefix, e.g. inv/ for the sagas' holds")
@click.option("--created-before", type=INSTANT, default=None)
@click.option("--limit", type=click.IntRange(min=1), default=1000)
@format_options(csv_=True, quiet=True)
def list_(account: str, status: str | None, prefix: str, created_before: datetime | None, limit: int,
          fmt: Format) -> int:
    request = lpb.ListHoldsRequest(account_id=account, hold_key_prefix=prefix,
                                   status=lpb.HoldStatus.Value(status.upper()) if status else 0)
    set_instant(request.created_before, created_before)
    holds = paged("ledger", "ListHolds", request, "holds", limit=limit)
    emit_rows([_row(h) for h in holds], COLUMNS, fmt)
    return 0


@command.command("show", help="one hold with its allocations per lot")
@click.argument("hold_key")
@format_options()
def show(hold_key: str, fmt: Format) -> int:
    return _show(rpc("ledger", "GetHold", lpb.GetHoldRequest(hold_key=hold_key)), fmt)


@command.command("reserve", help="reserve credit for one charge under HOLD_KEY (ReserveCredits)")
@click.argument("hold_key")
@click.option("--account", required=True)
@charge_options
@click.option("--ttl", "ttl_s", type=int, default=0, help="seconds; 0 = the server's default")
@click.option("--release-on-ttl", is_flag=True, help="let the TTL sweep release it (real-time holds)")
@idempotency_option
@format_options()
def reserve(hold_key: str, account: str, amount: str, unit: str, kind: str, name: str, at: datetime,
            reference: str, up_to: bool, ttl_s: int, release_on_ttl: bool, idempotency_key: str, fmt: Format) -> int:
    hold = rpc("ledger", "ReserveCredits", lpb.ReserveCreditsRequest(
        idempotency_key=key_for(idempotency_key), hold_key=hold_key, account_id=account, unit=unit,
        charges=[_charge(amount, kind, name, at)], up_to=up_to, ttl_s=ttl_s, release_on_ttl=release_on_ttl,
        reference=reference))
    return _show(hold, fmt)


@command.command("commit", help="post a hold, all of it or --amount (the rest is released)")
@click.argument("hold_key")
@click.option("--amount", default="", help="default: everything reserved")
@idempotency_option
@format_options()
def commit(hold_key: str, amount: str, idempotency_key: str, fmt: Format) -> int:
    return _show(rpc("ledger", "CommitHold", lpb.CommitHoldRequest(
        idempotency_key=key_for(idempotency_key), hold_key=hold_key, amount=amount)), fmt)


@command.command("release", help="give a pending hold's credit back to its lots")
@click.argument("hold_key")
@click.option("--reason", default="")
@click.option("--account", default="", help="only to leave a tombstone for a hold that never arrived")
@idempotency_option
@format_options()
def release(hold_key: str, reason: str, account: str, idempotency_key: str, fmt: Format) -> int:
    return _show(rpc("ledger", "ReleaseHold", lpb.ReleaseHoldRequest(
        idempotency_key=key_for(idempotency_key), hold_key=hold_key, account_id=account, reason=reason)), fmt)


@command.command("debit", help="reserve and commit at once (DebitCredits)")
@click.option("--account", required=True)
@charge_options
@idempotency_option
@format_options()
def debit(account: str, amount: str, unit: str, kind: str, name: str, at: datetime, reference: str, up_to: bool,
          idempotency_key: str, fmt: Format) -> int:
    return _show(rpc("ledger", "DebitCredits", lpb.DebitCreditsRequest(
        idempotency_key=key_for(idempotency_key), account_id=account, unit=unit,
        charges=[_charge(amount, kind, name, at)], reference=reference, up_to=up_to)), fmt)


@command.command("reverse", help="give a committed hold's posted credit back to the lots it came from (refunds)")
@click.argument("hold_key")
@click.option("--expired-lot-policy", type=click.Choice(("EXPIRE_AT_ONCE", "REINSTATE_WITH_GRACE"),
                                                        case_sensitive=False), default="EXPIRE_AT_ONCE",
              help="credit going back to a lot already past expiry")
@click.option("--grace", "grace_s", type=int, default=0, help="seconds, with REINSTATE_WITH_GRACE")
@click.option("--reason", default="")
@idempotency_option
@format_options()
def reverse(hold_key: str, expired_lot_policy: str, grace_s: int, reason: str, idempotency_key: str,
            fmt: Format) -> int:
    response = rpc("ledger", "ReverseHold", lpb.ReverseHoldRequest(
        idempotency_key=key_for(idempotency_key), hold_key=hold_key, grace_s=grace_s, reason=reason,
        expired_lot_policy=lpb.ExpiredLotPolicy.Value(expired_lot_policy.upper())))
    r = record(response)
    if fmt == Format.TABLE:
        reinstated = r.pop("reinstated", [])
        emit_record(r, fmt)
        emit_rows(reinstated, ("charge_id", "lot_id", "lot_type", "amount"), fmt, empty="")
    else:
        emit_record(r, fmt)
    return 0


@command.command("release-expired", help="release real-time holds past their TTL, as the sweep does")
@click.option("--as-of", type=INSTANT, default="now", show_default=True)
@idempotency_option
@format_options(csv_=True, quiet=True)
def release_expired(as_of: datetime, idempotency_key: str, fmt: Format) -> int:
    request = lpb.ReleaseExpiredHoldsRequest(idempotency_key=key_for(idempotency_key))
    set_instant(request.as_of, as_of)
    keys = rpc("ledger", "ReleaseExpiredHolds", request).hold_keys
    emit_rows([{"hold_key": k} for k in keys], ("hold_key",), fmt, empty="(no hold past its TTL)")
    return 0
