"""creditctl accounts create|show|list|children: ledger accounts and their trees (CreateAccount, GetAccount,
ListAccounts)."""

from __future__ import annotations

import click
from credits.ledger.v1 import ledger_pb2 as lpb

from creditctl.connection import paged, rpc
from creditctl.help_listing import Group
from creditctl.output import Format, emit_record, emit_rows, format_options
from creditctl.records import idempotency_option, key_for, record, records

COLUMNS = ("account_id", "parent_account_id", "name", "created_at")


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


@command.command("list", help="the tenant's accounts by id")
@click.option("--limit", type=click.IntRange(min=1), default=1000)
@format_options(csv_=True, quiet=True)
def list_(limit: int, fmt: Format) -> int:
    found = paged("ledger", "ListAccounts", lpb.ListAccountsRequest(), "accounts", limit=limit)
    emit_rows(records(found), COLUMNS, fmt)
    return 0


@command.command("children", help="ACCOUNT's direct children (the accounts a transfer from it may reach are its tree)")
@click.argument("account_id")
@format_options(csv_=True, quiet=True)
def children(account_id: str, fmt: Format) -> int:
    found = paged("ledger", "ListAccounts", lpb.ListAccountsRequest(parent_account_id=account_id), "accounts")
    emit_rows(records(found), COLUMNS, fmt, empty=f"({account_id} has no child accounts)")
    return 0
