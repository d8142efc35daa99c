"""creditctl allowances create|list|show|pause|resume|delete: recurring allowances through the billing front
door (CREDITS_BILLING_ADDR, CREDITS_API_KEY). Each allowance is a Temporal schedule; pausing here and
pausing in the Temporal UI are the same thing."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click
from credits.billing.v1 import billing_pb2 as bpb
from credits.billing.v1 import billing_pb2_grpc

from creditctl.arguments import iso
from creditctl.connection import Metadata, call_billing, paged
from creditctl.help_listing import Group
from creditctl.output import Format, emit_rows, format_options, print_fields, print_json
from creditctl.times import INSTANT
from service_runtime.proto_time import to_timestamp

CADENCES = ("monthly", "weekly", "daily")
FIRST_GRANTS = ("pro-rated", "full", "none")


def _allowance_dict(a: bpb.Allowance) -> dict[str, Any]:
    c = a.config
    out: dict[str, Any] = {
        "allowance_id": a.allowance_id, "account_id": c.account_id, "amount": c.amount, "unit": c.unit,
        "cadence": bpb.AllowanceCadence.Name(c.cadence), "lot_type": c.lot_type, "priority": c.priority,
        "cost_basis": c.cost_basis, "first_grant": bpb.FirstGrant.Name(c.first_grant),
        "starts_at": iso(c.starts_at, "starts_at"), "reason": c.reason, "paused": a.paused, "note": a.note,
        "next_grant_at": iso(a.next_grant_at, "next_grant_at"), "schedule_id": a.schedule_id, "ui_url": a.ui_url,
        "created_at": iso(a.created_at, "created_at"), "first_grant_operation_id": a.first_grant_operation_id,
        "recent": [{"scheduled_at": iso(r.scheduled_at, "scheduled_at"), "operation_id": r.operation_id}
                   for r in a.recent],
    }
    if c.HasField("rollover"):
        out["rollover"] = {"max_amount": c.rollover.max_amount, "max_percent": c.rollover.max_percent,
                           "expires_after_s": c.rollover.expires_after_s}
    return out


def _print(a: bpb.Allowance, as_json: bool) -> int:
    d = _allowance_dict(a)
    if as_json:
        print_json(d)
        return 0
    recent = d.pop("recent")
    d["paused"] = "yes" if a.paused else "no"
    d["rollover"] = ", ".join(f"{k}={v}" for k, v in d.get("rollover", {}).items() if v)
    print_fields(d, width=26)
    for run in recent:
        click.echo(f"{'granted for':<26} {run['scheduled_at']}  ({run['operation_id']})")
    return 0


def _one(rpc: str, request: Any, as_json: bool) -> int:
    async def work(stub: billing_pb2_grpc.BillingServiceStub, md: Metadata) -> bpb.Allowance:
        return await getattr(stub, rpc)(request, metadata=md)  # type: ignore[no-any-return]

    return _print(call_billing(work), as_json)


@click.group("allowances", cls=Group, help="recurring allowances: credits granted every period by a Temporal schedule")
def command() -> None:
    pass


@command.command("create", help="grant AMOUNT every period to ACCOUNT, expiring at the period's end")
@click.argument("allowance_id")
@click.option("--account", required=True)
@click.option("--amount", required=True, help="per period, e.g. 1000.00")
@click.option("--unit", default="USD")
@click.option("--every", "cadence", type=click.Choice(CADENCES), default="monthly")
@click.option("--type", "lot_type", type=click.Choice(["promotional", "purchased", "PROMOTIONAL", "PURCHASED"]),
              default="promotional")
@click.option("--priority", type=int, default=0)
@click.option("--cost-basis", default="")
@click.option("--first-grant", type=click.Choice(FIRST_GRANTS), default="pro-rated",
              help="the sign-up period: pro-rated (default), the full amount, or nothing")
@click.option("--starts-at", type=INSTANT, default=None, help="the sign-up instant (ISO); default now")
@click.option("--rollover-max-amount", default="")
@click.option("--rollover-max-percent", type=int, default=None)
@click.option("--rollover-expires-after-s", type=int, default=0)
@click.option("--reason", default="")
@click.option("--json", "as_json", is_flag=True)
def create(allowance_id: str, account: str, amount: str, unit: str, cadence: str, lot_type: str, priority: int,
           cost_basis: str, first_grant: str, starts_at: datetime | None, rollover_max_amount: str,
           rollover_max_percent: int | None, rollover_expires_after_s: int, reason: str, as_json: bool) -> int:
    config = bpb.AllowanceConfig(
        account_id=account, amount=amount, unit=unit, cadence=bpb.AllowanceCadence.Value(cadence.upper()),
        lot_type=lot_type.upper(), priority=priority, cost_basis=cost_basis, reason=reason,
        first_grant=bpb.FirstGrant.Value(first_grant.replace("-", "_").upper()))
    if starts_at:
        config.starts_at.CopyFrom(to_timestamp(starts_at))
    if rollover_max_amount or rollover_max_percent is not None:
        config.rollover.CopyFrom(bpb.RolloverPolicy(max_amount=rollover_max_amount,
                                                    max_percent=rollover_max_percent or 0,
                                                    expires_after_s=rollover_expires_after_s))
    return _one("CreateAllowance", bpb.CreateAllowanceRequest(allowance_id=allowance_id, config=config), as_json)


@command.command("show", help="one allowance: its config, schedule state and recent grants")
@click.argument("allowance_id")
@click.option("--json", "as_json", is_flag=True)
def show(allowance_id: str, as_json: bool) -> int:
    return _one("GetAllowance", bpb.GetAllowanceRequest(allowance_id=allowance_id), as_json)


@command.command("pause", help="stop granting until resumed (periods that start meanwhile are not granted)")
@click.argument("allowance_id")
@click.option("--note", default="")
@click.option("--json", "as_json", is_flag=True)
def pause(allowance_id: str, note: str, as_json: bool) -> int:
    return _one("PauseAllowance", bpb.PauseAllowanceRequest(allowance_id=allowance_id, note=note), as_json)


@command.command("resume", help="grant again from the next period start")
@click.argument("allowance_id")
@click.option("--note", default="")
@click.option("--json", "as_json", is_flag=True)
def resume(allowance_id: str, note: str, as_json: bool) -> int:
    return _one("ResumeAllowance", bpb.ResumeAllowanceRequest(allowance_id=allowance_id, note=note), as_json)


@command.command("list", help="the tenant's allowances (all pages)")
@click.option("--account", default="")
@format_options(csv_=True, quiet=True)
def list_(account: str, fmt: Format) -> int:
    allowances = paged("billing", "ListAllowances", bpb.ListAllowancesRequest(account_id=account), "allowances")
    if fmt == Format.JSON:
        print_json([_allowance_dict(a) for a in allowances])
        return 0
    rows = [{"allowance": a.allowance_id, "account": a.config.account_id,
             "amount": f"{a.config.amount} {a.config.unit}",
             "every": bpb.AllowanceCadence.Name(a.config.cadence).lower(), "state": "paused" if a.paused else "active",
             "next grant": iso(a.next_grant_at, "next_grant_at")} for a in allowances]
    emit_rows(rows, ("allowance", "account", "amount", "every", "state", "next grant"), fmt)
    return 0


@command.command("delete", help="delete the allowance's schedule (lots already granted stay)")
@click.argument("allowance_id")
@click.option("--allow-missing", is_flag=True, help="succeed if it is already gone (a retried delete)")
@click.option("--json", "as_json", is_flag=True)
def delete(allowance_id: str, allow_missing: bool, as_json: bool) -> int:
    request = bpb.DeleteAllowanceRequest(allowance_id=allowance_id, allow_missing=allow_missing)

    async def work(stub: billing_pb2_grpc.BillingServiceStub, md: Metadata) -> bpb.DeleteAllowanceResponse:
        return await stub.DeleteAllowance(request, metadata=md)

    deleted = call_billing(work).deleted
    if as_json:
        print_json({"allowance_id": allowance_id, "deleted": deleted})
    else:
        click.echo(f"{allowance_id}: {'deleted' if deleted else 'already gone'}")
    return 0
