"""creditctl audit: the audit trail of the ledger and invoice services, merged and oldest first."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import click
from credits.audit.v1 import audit_pb2, audit_pb2_grpc
from google.protobuf.json_format import MessageToDict

from creditctl.arguments import DURATION
from creditctl.connection import AUDIT_REFUSED, api_key_metadata, load_settings, require_api_key
from creditctl.errors import rpc_refusals
from creditctl.help_listing import Command
from creditctl.output import print_json
from service_runtime.proto_time import to_timestamp
from service_runtime.settings import Settings
from service_runtime.tls import open_channel


@dataclass(frozen=True)
class AuditQuery:
    subject: str = ""
    actor: str = ""
    action: str = ""
    since: timedelta | None = None
    refused_only: bool = False
    limit: int = 100


async def query_audit(settings: Settings, query: AuditQuery) -> list[dict[str, object]]:
    """Audit records from the ledger and invoice services (gRPC, CREDITS_API_KEY), oldest first."""
    request = audit_pb2.QueryAuditRequest(subject=query.subject, key_id=query.actor, method=query.action,
                                          refused_only=query.refused_only, page_size=query.limit)
    if query.since:
        getattr(request, "from").CopyFrom(to_timestamp(datetime.now(UTC) - query.since))  # `from` is a keyword
    records: list[dict[str, object]] = []
    for service, addr in (("ledger", settings.ledger_addr), ("invoice", settings.invoice_addr)):
        async with open_channel(addr) as channel:
            out = await audit_pb2_grpc.AuditServiceStub(channel).QueryAudit(
                request, metadata=api_key_metadata(settings.api_key), timeout=10)
        for r in out.records:
            records.append({"service": service, **MessageToDict(r, preserving_proto_field_name=True)})
    return sorted(records, key=lambda r: str(r.get("at", "")))


@click.command("audit", cls=Command, help="the audit trail of the ledger and invoice services (CREDITS_API_KEY)")
@click.option("--subject", default="", help="e.g. account_id=acme or invoice_id=inv_1")
@click.option("--actor", default="", help="key id")
@click.option("--action", default="", help="method name, e.g. GrantCredits")
@click.option("--since", type=DURATION, default=None, help="e.g. 24h")
@click.option("--refused", is_flag=True, help="only refused attempts")
@click.option("--limit", type=int, default=100)
@click.option("--json", "as_json", is_flag=True)
def command(subject: str, actor: str, action: str, since: timedelta | None, refused: bool, limit: int,
            as_json: bool) -> int:
    settings = load_settings()
    require_api_key(settings, AUDIT_REFUSED)
    with rpc_refusals(AUDIT_REFUSED):
        records = asyncio.run(query_audit(settings, AuditQuery(subject, actor, action, since, refused, limit)))
    if as_json:
        print_json(records)
        return 0
    click.echo(f"{'at':27} {'service':8} {'actor':13} {'role':9} {'action':28} {'code':20} subjects")
    for r in records:
        verb = str(r.get("method", "")).rsplit("/", 1)[-1]
        subjects = ",".join(r.get("subjects", []))  # type: ignore[arg-type]
        click.echo(f"{r.get('at', '')!s:27} {r['service']!s:8} {r.get('key_id', '')!s:13} {r.get('role', '')!s:9} "
                   f"{verb:28} {r.get('code', '')!s:20} {subjects}")
    return 0
