"""creditctl grants create|void|requests|approve|reject|limits|set-limits: grant credit lots, void their
unused rest, and the two-person rule's requests and limits (CREDITS_LEDGER_ADDR, CREDITS_API_KEY).

Mutations take an --idempotency-key; without one a fresh key is generated and printed, so a retry
after a lost reply can reuse it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click
from credits.ledger.v1 import ledger_pb2 as lpb
from credits.ledger.v1 import ledger_pb2_grpc

from creditctl.arguments import iso
from creditctl.connection import Metadata, call_ledger, paged, rpc
from creditctl.help_listing import Group
from creditctl.output import Format, emit_record, emit_rows, format_options, print_fields, print_json
from creditctl.records import idempotency_option, key_for, record
from creditctl.times import INSTANT
from service_runtime.proto_time import to_timestamp

LOT_TYPES = ("PURCHASED", "PROMOTIONAL", "COMPENSATORY", "ROLLOVER")
CHARGE_KINDS = ("USAGE", "ADD_ON", "FIXED_FEE", "LICENSE")
REQUEST_STATUSES = ("PENDING_APPROVAL", "APPROVED", "REJECTED")
REQUEST_COLUMNS = ("request_id", "status", "account_id", "amount", "unit", "type", "limit_exceeded",
                   "requested_by_owner", "decided_by_owner", "lot_id")


def _lot_dict(lot: lpb.Lot) -> dict[str, Any]:
    return {"lot_id": lot.lot_id, "account_id": lot.account_id, "type": lpb.LotType.Name(lot.type),
            "unit": lot.unit, "amount": lot.amount, "priority": lot.priority,
            "effective_at": iso(lot.effective_at, "effective_at"), "expires_at": iso(lot.expires_at, "expires_at"),
            "source": lot.source, "reason_code": lot.reason_code, "campaign_id": lot.campaign_id,
            "incident_id": lot.incident_id, "voided_at": iso(lot.voided_at, "voided_at"),
            "available": lot.balance.available if lot.HasField("balance") else ""}


def _print_lot(lot: lpb.Lot, as_json: bool, extra: dict[str, Any]) -> None:
    d = {**_lot_dict(lot), **extra}
    if lot.HasField("grant_request"):  # no lot yet: a request waiting for a second person
        d.update(grant_request_id=lot.grant_request.request_id, status="PENDING_APPROVAL",
                 limit_exceeded=lot.grant_request.limit_exceeded)
    if as_json:
        print_json(d)
    else:
        print_fields(d, width=16)


def _idempotency_key(given: str, as_json: bool) -> str:
    return key_for(given)


@click.group("grants", cls=Group, help="grant or void credit lots (CREDITS_LEDGER_ADDR, CREDITS_API_KEY)")
def command() -> None:
    pass


@command.command("create", help="grant a lot of credits to an account")
@click.argument("account")
@click.option("--amount", required=True)
@click.option("--unit", default="USD")
@click.option("--type", "lot_type", default="PROMOTIONAL", type=click.Choice(LOT_TYPES, case_sensitive=False))
@click.option("--priority", type=int, default=0)
@click.option("--effective-at", type=INSTANT, default=None, help="default: now")
@click.option("--expires-at", type=INSTANT, default=None, help="default: never")
@click.option("--source", default="cli")
@click.option("--reason", default="")
@click.option("--campaign", default="")
@click.option("--incident", default="", help="required for COMPENSATORY")
@click.option("--cost-basis", default="")
@click.option("--scope-kind", "scope_kinds", multiple=True, type=click.Choice(CHARGE_KINDS, case_sensitive=False),
              help="charge kinds the lot may pay (repeat); default: the whole invoice")
@click.option("--scope-name", "scope_names", multiple=True, help="meter or add-on names it may pay (repeat)")
@click.option("--idempotency-key", default="")
@click.option("--json", "as_json", is_flag=True)
def create(account: str, amount: str, unit: str, lot_type: str, priority: int, effective_at: datetime | None,
           expires_at: datetime | None, source: str, reason: str, campaign: str, incident: str, cost_basis: str,
           scope_kinds: tuple[str, ...], scope_names: tuple[str, ...], idempotency_key: str, as_json: bool) -> int:
    key = _idempotency_key(idempotency_key, as_json)
    request = lpb.GrantCreditsRequest(
        idempotency_key=key, account_id=account, type=lpb.LotType.Value(lot_type.upper()), unit=unit, amount=amount,
        priority=priority, source=source, reason_code=reason, campaign_id=campaign, incident_id=incident,
        cost_basis=cost_basis)
    if scope_kinds or scope_names:
        request.scope.CopyFrom(lpb.Scope(kinds=[lpb.ChargeKind.Value(k.upper()) for k in scope_kinds],
                                         names=scope_names))
    if effective_at:
        request.effective_at.CopyFrom(to_timestamp(effective_at))
    if expires_at:
        request.expires_at.CopyFrom(to_timestamp(expires_at))

    async def work(stub: ledger_pb2_grpc.LedgerServiceStub, md: Metadata) -> lpb.Lot:
        return await stub.GrantCredits(request, metadata=md)

    _print_lot(call_ledger(work), as_json, {"idempotency_key": key})
    return 0


@command.command("void", help="void the unused rest of a lot")
@click.argument("lot_id")
@click.option("--reason", default="")
@click.option("--idempotency-key", default="")
@click.option("--json", "as_json", is_flag=True)
def void(lot_id: str, reason: str, idempotency_key: str, as_json: bool) -> int:
    key = _idempotency_key(idempotency_key, as_json)
    request = lpb.VoidGrantRequest(idempotency_key=key, lot_id=lot_id, reason=reason)

    async def work(stub: ledger_pb2_grpc.LedgerServiceStub, md: Metadata) -> lpb.VoidGrantResponse:
        return await stub.VoidGrant(request, metadata=md)

    response = call_ledger(work)
    _print_lot(response.lot, as_json, {"voided_amount": response.voided_amount, "idempotency_key": key})
    return 0


def _request_row(request: lpb.GrantRequest) -> dict[str, Any]:
    r = record(request)
    grant = r.pop("grant", {})
    return {**r, "account_id": grant.get("account_id", ""), "amount": grant.get("amount", ""),
            "unit": grant.get("unit", ""), "type": grant.get("type", ""), "grant": grant}


@command.command("requests", help="grant requests waiting for (or given) a second person's decision; "
                                  "with REQUEST_ID, that one")
@click.argument("request_id", required=False, default="")
@click.option("--status", type=click.Choice(REQUEST_STATUSES, case_sensitive=False), default=None,
              help="default: every status")
@click.option("--account", default="")
@format_options(csv_=True, quiet=True)
def requests(request_id: str, status: str | None, account: str, fmt: Format) -> int:
    if request_id:
        found = rpc("ledger", "GetGrantRequest", lpb.GetGrantRequestRequest(request_id=request_id))
        emit_record(_request_row(found), fmt, id_field="request_id")
        return 0
    listed = paged("ledger", "ListGrantRequests", lpb.ListGrantRequestsRequest(
        status=lpb.GrantRequestStatus.Value(status.upper()) if status else 0, account_id=account), "requests")
    emit_rows([_request_row(r) for r in listed], REQUEST_COLUMNS, fmt)
    return 0


@command.command("approve", help="approve a grant request: its lot is created, once (another person's key)")
@click.argument("request_id")
@click.option("--reason", default="")
@idempotency_option
@format_options()
def approve(request_id: str, reason: str, idempotency_key: str, fmt: Format) -> int:
    decided = rpc("ledger", "ApproveGrantRequest", lpb.ApproveGrantRequestRequest(
        idempotency_key=key_for(idempotency_key), request_id=request_id, reason=reason))
    emit_record(_request_row(decided), fmt, id_field="request_id")
    return 0


@command.command("reject", help="reject a grant request (no lot is created)")
@click.argument("request_id")
@click.option("--reason", required=True)
@idempotency_option
@format_options()
def reject(request_id: str, reason: str, idempotency_key: str, fmt: Format) -> int:
    decided = rpc("ledger", "RejectGrantRequest", lpb.RejectGrantRequestRequest(
        idempotency_key=key_for(idempotency_key), request_id=request_id, reason=reason))
    emit_record(_request_row(decided), fmt, id_field="request_id")
    return 0


@command.command("limits", help="support and operator grant limits and the approval threshold in UNIT")
@click.argument("unit", default="USD")
@format_options()
def limits(unit: str, fmt: Format) -> int:
    emit_record(record(rpc("ledger", "GetSupportGrantLimits", lpb.GetSupportGrantLimitsRequest(unit=unit))), fmt)
    return 0


@command.command("set-limits", help="replace UNIT's grant limits (major units) and approval threshold")
@click.argument("unit")
@click.option("--max-per-grant", required=True, help='"0" = every support grant needs approval')
@click.option("--max-per-day", required=True, help="per support or operator key, trailing 24 hours")
@click.option("--approval-threshold", default="", help='any grant above it needs a second person; "" = none')
@idempotency_option
@format_options()
def set_limits(unit: str, max_per_grant: str, max_per_day: str, approval_threshold: str, idempotency_key: str,
               fmt: Format) -> int:
    emit_record(record(rpc("ledger", "SetSupportGrantLimits", lpb.SetSupportGrantLimitsRequest(
        idempotency_key=key_for(idempotency_key), unit=unit, max_per_grant=max_per_grant, max_per_day=max_per_day,
        approval_threshold=approval_threshold))), fmt)
    return 0
