"""creditctl grants create|void: grant credit lots and void their unused rest (CREDITS_LEDGER_ADDR, CREDITS_API_KEY).

Mutations take an --idempotency-key; without one a fresh key is generated and printed, so a retry
after a lost reply can reuse it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click
from credits.ledger.v1 import ledger_pb2 as lpb
from credits.ledger.v1 import ledger_pb2_grpc

from creditctl.arguments import INSTANT, idempotency_key_or_new, iso
from creditctl.connection import Metadata, call_ledger
from creditctl.help_listing import Group
from creditctl.output import print_fields, print_json
from service_runtime.proto_time import to_timestamp

LOT_TYPES = ("PURCHASED", "PROMOTIONAL", "COMPENSATORY", "ROLLOVER")


def _lot_dict(lot: lpb.Lot) -> dict[str, Any]:
    return {"lot_id": lot.lot_id, "account_id": lot.account_id, "type": lpb.LotType.Name(lot.type),
            "unit": lot.unit, "amount": lot.amount, "priority": lot.priority,
            "effective_at": iso(lot.effective_at, "effective_at"), "expires_at": iso(lot.expires_at, "expires_at"),
            "source": lot.source, "reason_code": lot.reason_code, "campaign_id": lot.campaign_id,
            "incident_id": lot.incident_id, "voided_at": iso(lot.voided_at, "voided_at"),
            "available": lot.balance.available if lot.HasField("balance") else ""}


def _print_lot(lot: lpb.Lot, as_json: bool, extra: dict[str, Any]) -> None:
    d = {**_lot_dict(lot), **extra}
    if as_json:
        print_json(d)
    else:
        print_fields(d, width=16)


@click.group("grants", cls=Group, help="grant or void credit lots (CREDITS_LEDGER_ADDR, CREDITS_API_KEY)")
def command() -> None:
    pass


@command.command("create", help="grant a lot of credits to an account")
@click.argument("account")
@click.option("--amount", required=True)
@click.option("--unit", default="USD")
@click.option("--type", "lot_type", default="PROMOTIONAL", type=click.Choice([*LOT_TYPES, *map(str.lower, LOT_TYPES)]))
@click.option("--priority", type=int, default=0)
@click.option("--effective-at", type=INSTANT, default=None, help="ISO instant; default now")
@click.option("--expires-at", type=INSTANT, default=None, help="ISO instant; default never")
@click.option("--source", default="cli")
@click.option("--reason", default="")
@click.option("--campaign", default="")
@click.option("--incident", default="", help="required for COMPENSATORY")
@click.option("--cost-basis", default="")
@click.option("--idempotency-key", default="")
@click.option("--json", "as_json", is_flag=True)
def create(account: str, amount: str, unit: str, lot_type: str, priority: int, effective_at: datetime | None,
           expires_at: datetime | None, source: str, reason: str, campaign: str, incident: str, cost_basis: str,
           idempotency_key: str, as_json: bool) -> int:
    key = idempotency_key_or_new(idempotency_key, as_json)
    request = lpb.GrantCreditsRequest(
        idempotency_key=key, account_id=account, type=lpb.LotType.Value(lot_type.upper()), unit=unit, amount=amount,
        priority=priority, source=source, reason_code=reason, campaign_id=campaign, incident_id=incident,
        cost_basis=cost_basis)
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
    key = idempotency_key_or_new(idempotency_key, as_json)
    request = lpb.VoidGrantRequest(idempotency_key=key, lot_id=lot_id, reason=reason)

    async def work(stub: ledger_pb2_grpc.LedgerServiceStub, md: Metadata) -> lpb.VoidGrantResponse:
        return await stub.VoidGrant(request, metadata=md)

    response = call_ledger(work)
    _print_lot(response.lot, as_json, {"voided_amount": response.voided_amount, "idempotency_key": key})
    return 0
