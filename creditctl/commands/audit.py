"""creditctl audit: the audit trail of the ledger and invoice services, merged and oldest first."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

import click
from credits.audit.v1 import audit_pb2, audit_pb2_grpc
from google.protobuf.json_format import MessageToDict

from creditctl.connection import AUDIT_REFUSED, api_key_metadata, load_settings, require_api_key
from creditctl.errors import rpc_refusals
from creditctl.help_listing import Command
from creditctl.output import Format, emit_rows, format_options
from creditctl.times import SINCE
from service_runtime.proto_time import to_timestamp
from service_runtime.settings import Settings
from service_runtime.tls import open_channel


@dataclass(frozen=True)
class AuditQuery:
    subject: str = ""
    actor: str = ""
    action: str = ""
    since: datetime | None = None
    refused_only: bool = False
    limit: int = 100


async def query_audit(settings: Settings, query: AuditQuery) -> list[dict[str, object]]:
    """Audit records from the ledger and invoice services (gRPC, CREDITS_API_KEY), oldest first."""
    request = audit_pb2.QueryAuditRequest(subject=query.subject, key_id=query.actor, method=query.action,
                                          refused_only=query.refused_only, page_size=query.limit)
    if query.since:
        getattr(request, "from").CopyFrom(to_timestamp(query.since))  # `from` is a Python keyword
    records: list[dict[str, object]] = []
    for service, addr in (("ledger", settings.ledger_addr), ("invoice", settings.invoice_addr)):
        async with open_channel(addr) as channel:
            out = await audit_pb2_grpc.AuditServiceStub(channel).QueryAudit(
                request, metadata=api_key_metadata(settings.api_key), timeout=10)
        for r in out.records:
            records.append({"service": service, **MessageToDict(r, preserving_proto_field_name=True)})
    return sorted(records, key=lambda r: str(r.get("at", "")))


COLUMNS = ("at", "service", "key_id", "role", "action", "code", "subjects")


@click.command("audit", cls=Command, help="the audit trail of the ledger and invoice services (CREDITS_API_KEY)")
@click.option("--subject", default="", help="e.g. account_id=acme or invoice_id=inv_1")
@click.option("--actor", default="", help="key id")
@click.option("--action", default="", help="method name, e.g. GrantCredits")
@click.option("--since", type=SINCE, default=None, help="24h (ago), -7d, or an ISO 8601 instant")
@click.option("--refused", is_flag=True, help="only refused attempts")
@click.option("--limit", type=int, default=100, show_default=True)
@format_options(csv_=True)
def command(subject: str, actor: str, action: str, since: datetime | None, refused: bool, limit: int,
            fmt: Format) -> int:
    settings = load_settings()
    require_api_key(settings, AUDIT_REFUSED)
    with rpc_refusals(AUDIT_REFUSED):
        records = asyncio.run(query_audit(settings, AuditQuery(subject, actor, action, since, refused, limit)))
    if fmt != Format.JSON:
        records = [{**r, "action": str(r.get("method", "")).rsplit("/", 1)[-1],
                    "subjects": ",".join(r.get("subjects", []))} for r in records]  # type: ignore[arg-type]
    emit_rows(records, COLUMNS, fmt, empty="(no audit records)")
    return 0
