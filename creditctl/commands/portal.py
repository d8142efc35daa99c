"""creditctl portal link CUSTOMER: a signed, expiring, read-only link to the customer portal for one
customer (CreatePortalLink; CREDITS_INVOICE_ADDR). Hand it to the customer; it carries no API key.
creditctl portal revoke LINK: ends that one link at once (RevokePortalLink; CREDITS_LEDGER_ADDR)."""

from __future__ import annotations

import click
from credits.invoice.v1 import invoice_pb2 as ipb
from credits.ledger.v1 import ledger_pb2 as lpb

from creditctl.arguments import iso
from creditctl.connection import rpc
from creditctl.help_listing import Group
from creditctl.output import Format, emit_record, format_options
from creditctl.records import idempotency_option, key_for
from creditctl.times import parse_duration


@click.group("portal", cls=Group, help="the customer portal: session links for customers")
def command() -> None:
    pass


@command.command("link", help="a read-only portal link for one customer (default: valid 1h)")
@click.argument("customer_id")
@click.option("--ttl", default="1h", show_default=True, help="how long the link works: 30m, 12h, 7d (at most 30d)")
@format_options(quiet=True)
def link(customer_id: str, ttl: str, fmt: Format) -> int:
    span = parse_duration(ttl)
    if span is None:
        raise click.BadParameter("a duration like 30m, 12h or 7d", param_hint="--ttl")
    made = rpc("invoice", "CreatePortalLink", ipb.CreatePortalLinkRequest(customer_id=customer_id,
                                                                          ttl_s=int(span.total_seconds())))
    if fmt == Format.QUIET:
        click.echo(made.url)
        return 0
    emit_record({"customer_id": made.customer_id, "ledger_account_id": made.ledger_account_id, "url": made.url,
                 "expires_at": iso(made.expires_at, "expires_at")}, fmt, id_field="url")
    return 0


@command.command("revoke", help="end one portal link at once: its pages answer 403 from the next request on")
@click.argument("link")
@click.option("--reason", default="", help="why (kept with the revocation)")
@idempotency_option
@format_options()
def revoke(link: str, reason: str, idempotency_key: str, fmt: Format) -> int:
    done = rpc("ledger", "RevokePortalLink", lpb.RevokePortalLinkRequest(
        idempotency_key=key_for(idempotency_key), link=link, reason=reason))
    emit_record({"session_id": done.session_id, "customer_id": done.customer_id, "account_id": done.account_id,
                 "revoked_at": iso(done.revoked_at, "revoked_at"), "expires_at": iso(done.expires_at, "expires_at"),
                 "reason": done.reason, "revoked_by": done.revoked_by}, fmt, id_field="session_id")
    return 0
