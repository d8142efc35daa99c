"""creditctl accounts create|show: ledger accounts, optionally under a parent (CreateAccount, GetAccount)."""

from __future__ import annotations

import click
from credits.ledger.v1 import ledger_pb2 as lpb

from creditctl.connection import rpc
from creditctl.help_listing import Group
from creditctl.output import Format, emit_record, format_options
from creditctl.records import idempotency_option, key_for, record


@click.group("accounts", cls=Group, help="ledger accounts: the holders of credit lots (CREDITS_LEDGER_ADDR)")
def command() -> None:
    pass


@command.command("create", help="create an account; repeated with the same fields, the same account")
@click.argument("account_id")
@click.option("--name", default="", help="default: the account id")
@click.option("--parent", default="", help="the parent account (transfers stay inside one tree)")
@idempotency_option
@format_options(quiet=True)
def create(account_id: str, name: str, parent: str, idempotency_key: str, fmt: Format) -> int:
    # Keyed by the id by default: a retried create returns the account instead of a conflict.
    key = key_for(idempotency_key or f"cli-account-{account_id}")
    account = rpc("ledger", "CreateAccount", lpb.CreateAccountRequest(
        idempotency_key=key, account_id=account_id, name=name or account_id, parent_account_id=parent))
    emit_record(record(account), fmt, id_field="account_id")
    return 0


@command.command("show", help="one account")
@click.argument("account_id")
@format_options()
def show(account_id: str, fmt: Format) -> int:
    emit_record(record(rpc("ledger", "GetAccount", lpb.GetAccountRequest(account_id=account_id))), fmt)
    return 0
