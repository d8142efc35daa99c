"""creditctl transfers create|reverse|limits: move credit inside one account tree (TransferCredits,
ReverseTransfer, SetTransferLimit). Moved credit keeps its type, expiry, scope and cost basis."""

from __future__ import annotations

import click
from credits.ledger.v1 import ledger_pb2 as lpb

from creditctl.connection import rpc
from creditctl.help_listing import Group
from creditctl.output import Format, emit_record, emit_rows, format_options
from creditctl.records import idempotency_option, key_for, record


def _show(response: lpb.TransferCreditsResponse, fmt: Format) -> int:
    r = record(response)
    if fmt == Format.TABLE:
        legs = r.pop("legs", [])
        emit_record(r, fmt)
        emit_rows(legs, ("source_lot_id", "destination_lot_id", "amount"), fmt, empty="")
    else:
        emit_record(r, fmt, id_field="transfer_id")
    return 0


@click.group("transfers", cls=Group, help="transfers of credit between accounts of one hierarchy")
def command() -> None:
    pass


@command.command("create", help="move AMOUNT from one account to another of the same tree")
@click.argument("from_account")
@click.argument("to_account")
@click.option("--amount", required=True)
@click.option("--unit", default="USD", show_default=True)
@click.option("--reason", default="")
@idempotency_option
@format_options(quiet=True)
def create(from_account: str, to_account: str, amount: str, unit: str, reason: str, idempotency_key: str,
           fmt: Format) -> int:
    return _show(rpc("ledger", "TransferCredits", lpb.TransferCreditsRequest(
        idempotency_key=key_for(idempotency_key), from_account_id=from_account, to_account_id=to_account,
        unit=unit, amount=amount, reason=reason)), fmt)


@command.command("reverse", help="undo a transfer: the credit goes back to the lots it came from")
@click.argument("transfer_id")
@idempotency_option
@format_options()
def reverse(transfer_id: str, idempotency_key: str, fmt: Format) -> int:
    return _show(rpc("ledger", "ReverseTransfer", lpb.ReverseTransferRequest(
        idempotency_key=key_for(idempotency_key), transfer_id=transfer_id)), fmt)


@command.command("limits", help="set the most one transfer out of ACCOUNT may move (SetTransferLimit)")
@click.argument("account_id")
@click.option("--unit", default="USD", show_default=True)
@click.option("--max-per-transfer", default="", help='"" = no limit')
@idempotency_option
@format_options()
def limits(account_id: str, unit: str, max_per_transfer: str, idempotency_key: str, fmt: Format) -> int:
    emit_record(record(rpc("ledger", "SetTransferLimit", lpb.SetTransferLimitRequest(
        idempotency_key=key_for(idempotency_key), account_id=account_id, unit=unit,
        max_per_transfer=max_per_transfer))), fmt)
    return 0
