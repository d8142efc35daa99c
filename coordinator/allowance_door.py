"""The billing front door's recurring-allowance RPCs (CreateAllowance ... DeleteAllowance).

Each reads like the other RPCs: check the request (every refusal names its field), then one call of
`coordinator.allowance_schedules`. CreateAllowance is idempotent by the caller's `allowance_id`: the
same id with the same config answers the existing allowance (and makes sure its sign-up grant was
started: a reply lost after the schedule was created is repaired by the retry); with another config
it is ALREADY_EXISTS. The unit is checked with the ledger (the caller's own key), whose scale rounds a
pro-rated first grant.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from credits.billing.v1 import billing_pb2 as pb
from credits.ledger.v1 import ledger_pb2 as lpb
from credits.ledger.v1 import ledger_pb2_grpc
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from coordinator import allowance_schedules, naming
from coordinator import search_attributes as sa
from coordinator.allowance_schedules import AllowanceState
from coordinator.allowances import Cadence, FirstGrant
from coordinator.caller_metadata import on_behalf_of
from coordinator.messages import AllowanceSpec, GrantAllowanceInput, RolloverPolicy
from coordinator.starter import start_or_attach
from coordinator.workflows import GrantAllowanceWorkflow
from service_runtime.free_text import check_text
from service_runtime.grpc_server import current_caller
from service_runtime.identifiers import check_id
from service_runtime.pages import decode_token, encode_token, page_size
from service_runtime.proto_time import from_timestamp, to_timestamp
from service_runtime.rejections import conflict, invalid, not_found, precondition
from service_runtime.settings import Settings

AMOUNT = re.compile(r"^(0|[1-9]\d{0,17})(\.\d{1,9})?$")  # the front door's decimal rule (CompensateOutage too)
LOT_TYPES = ("PROMOTIONAL", "PURCHASED")
_CADENCES = {pb.ALLOWANCE_CADENCE_UNSPECIFIED: Cadence.MONTHLY, pb.MONTHLY: Cadence.MONTHLY,
             pb.WEEKLY: Cadence.WEEKLY, pb.DAILY: Cadence.DAILY}
_FIRST = {pb.FIRST_GRANT_UNSPECIFIED: FirstGrant.PRO_RATED, pb.PRO_RATED: FirstGrant.PRO_RATED,
          pb.FULL: FirstGrant.FULL, pb.NONE: FirstGrant.NONE}


def schedule_link(ui_url: str, namespace: str, schedule_id: str) -> str:
    """The schedule's page in the Temporal UI ("" when the front door does not know the UI's address)."""
    if not ui_url:
        return ""
    return f"{ui_url}/namespaces/{namespace}/schedules/{urllib.parse.quote(schedule_id, safe='')}"


def _positive(value: str, field: str) -> str:
    if not AMOUNT.match(value) or not value.strip("0."):
        raise invalid(field, "must be a positive decimal like 1000.00")
    return value


def _rollover(config: pb.AllowanceConfig) -> RolloverPolicy | None:
    if not config.HasField("rollover"):
        return None
    r = config.rollover
    if r.max_amount:
        _positive(r.max_amount, "config.rollover.max_amount")
    if r.max_percent > 100:
        raise invalid("config.rollover.max_percent", "must be between 0 and 100")
    if r.expires_after_s < 0:
        raise invalid("config.rollover.expires_after_s", "must not be negative")
    return RolloverPolicy(r.max_amount, r.max_percent, r.expires_after_s)


def spec_from_config(tenant_id: str, allowance_id: str, config: pb.AllowanceConfig, unit_scale: int,
                     now: datetime, horizon: timedelta) -> AllowanceSpec:
    """The allowance a checked CreateAllowance config describes (the unit itself is checked with the ledger).

    `starts_at` (the sign-up instant, default now) may lie ahead up to `horizon` (the ledger's lot horizon,
    CREDITS_LOT_HORIZON_S): the sign-up grant is then a lot effective from it, shown as `upcoming` until then."""
    if config.cadence not in _CADENCES:
        raise invalid("config.cadence", "must be MONTHLY, WEEKLY or DAILY")
    if config.first_grant not in _FIRST:
        raise invalid("config.first_grant", "must be PRO_RATED, FULL or NONE")
    lot_type = config.lot_type.upper() or "PROMOTIONAL"
    if lot_type not in LOT_TYPES:
        raise invalid("config.lot_type", f"must be one of {', '.join(LOT_TYPES)}")
    if not 0 <= config.priority <= 100:
        raise invalid("config.priority", "must be between 1 and 100 (0 = the ledger's default)")
    if config.cost_basis and not AMOUNT.match(config.cost_basis):
        raise invalid("config.cost_basis", "must be a decimal like 0.01")
    starts_at = from_timestamp(config.starts_at, "config.starts_at") if config.HasField("starts_at") else now
    if starts_at > now + horizon:
        raise invalid("config.starts_at", f"is more than {horizon.days} days ahead (CREDITS_LOT_HORIZON_S)")
    return AllowanceSpec(
        tenant_id=tenant_id, allowance_id=allowance_id, account_id=check_id(config.account_id, "config.account_id"),
        amount=_positive(config.amount, "config.amount"), unit=config.unit, unit_scale=unit_scale,
        cadence=_CADENCES[config.cadence], starts_at=starts_at.astimezone(UTC).replace(microsecond=0).isoformat(),
        first_grant=_FIRST[config.first_grant], lot_type=lot_type, priority=config.priority,
        cost_basis=config.cost_basis, reason=check_text(config.reason, "config.reason", 128),
        rollover=_rollover(config))


def _config(spec: AllowanceSpec) -> pb.AllowanceConfig:
    cadence = next(k for k, v in _CADENCES.items() if v == spec.cadence and k)
    first = next(k for k, v in _FIRST.items() if v == spec.first_grant and k)
    config = pb.AllowanceConfig(account_id=spec.account_id, amount=spec.amount, unit=spec.unit, cadence=cadence,
                                lot_type=spec.lot_type, priority=spec.priority, cost_basis=spec.cost_basis,
                                first_grant=first, reason=spec.reason,
                                starts_at=to_timestamp(datetime.fromisoformat(spec.starts_at)))
    if spec.rollover is not None:
        config.rollover.CopyFrom(pb.RolloverPolicy(max_amount=spec.rollover.max_amount,
                                                   max_percent=spec.rollover.max_percent,
                                                   expires_after_s=spec.rollover.expires_after_s))
    return config


class AllowanceRpcs:
    """Mixed into the billing servicer, which provides the Temporal client, task queue, UI and ledger."""

    _client: Client
    _queue: str
    _ui: str
    _ledger: ledger_pb2_grpc.LedgerServiceStub | None

    def _pack(self, state: AllowanceState, first_grant_operation_id: str = "") -> pb.Allowance:
        spec = state.spec
        schedule_id = naming.allowance_schedule_id(spec.tenant_id, spec.allowance_id)
        out = pb.Allowance(allowance_id=spec.allowance_id, config=_config(spec), schedule_id=schedule_id,
                           paused=state.paused, note=state.note,
                           ui_url=schedule_link(self._ui, self._client.namespace, schedule_id),
                           first_grant_operation_id=first_grant_operation_id,
                           recent=[pb.AllowanceGrantRun(scheduled_at=to_timestamp(at), operation_id=wf)
                                   for at, wf in state.recent])
        if state.next_grant_at:
            out.next_grant_at.CopyFrom(to_timestamp(state.next_grant_at))
        if state.created_at:
            out.created_at.CopyFrom(to_timestamp(state.created_at))
        return out

    async def _unit_scale(self, account_id: str, unit: str, amount: str, context: Any) -> int:
        """The unit's scale; the account must exist and the amount fit the unit (asked with the caller's key)."""
        if self._ledger is None:
            raise precondition("config.unit", "this front door was started without the ledger's address "
                               "(CREDITS_LEDGER_ADDR), which allowances need")
        try:
            units = await self._ledger.ListUnits(lpb.ListUnitsRequest(), metadata=on_behalf_of(context), timeout=10)
        except grpc.aio.AioRpcError as err:
            await context.abort(err.code(), f"config.unit: the ledger could not be asked: {err.details()}")
            raise  # abort raises; this keeps type checkers informed
        try:
            await self._ledger.GetAccount(lpb.GetAccountRequest(account_id=account_id), metadata=on_behalf_of(context),
                                          timeout=10)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                raise not_found("config.account_id", f"no ledger account {account_id!r} for this tenant") from None
            await context.abort(err.code(), f"config.account_id: the ledger could not be asked: {err.details()}")
        scale = next((u.scale for u in units.units if u.code == unit), None)
        if scale is None:
            raise invalid("config.unit", f"unknown unit {unit[:40]!r} for this tenant; define it first")
        if len(amount.partition(".")[2]) > scale:
            raise invalid("config.amount", f"{unit} keeps {scale} decimal places; {amount!r} has more")
        return int(scale)

    async def _start_first_grant(self, spec: AllowanceSpec) -> str:
        workflow_id = naming.allowance_first_grant_workflow_id(spec.tenant_id, spec.allowance_id)
        await start_or_attach(self._client, GrantAllowanceWorkflow.run, GrantAllowanceInput(spec, spec.starts_at),
                              id=workflow_id, task_queue=self._queue,
                              search_attributes=sa.of_allowance(spec.tenant_id, spec.allowance_id, spec.account_id),
                              summary=f"Allowance {spec.allowance_id}: sign-up grant ({spec.first_grant})")
        return workflow_id

    async def CreateAllowance(self, request: pb.CreateAllowanceRequest, context: Any) -> pb.Allowance:
        tenant, allowance_id = current_caller().tenant_id, check_id(request.allowance_id, "allowance_id")
        config = request.config
        _positive(config.amount, "config.amount")
        scale = await self._unit_scale(check_id(config.account_id, "config.account_id"),
                                       check_id(config.unit, "config.unit"), config.amount, context)
        spec = spec_from_config(tenant, allowance_id, config, scale, datetime.now(UTC),
                                timedelta(seconds=Settings.from_env().lot_horizon_s))
        digest = hashlib.sha256(config.SerializeToString(deterministic=True)).hexdigest()
        created = await allowance_schedules.create(self._client, spec, digest, self._queue)
        state = await allowance_schedules.read(self._client, tenant, allowance_id)
        if state is None:  # deleted between the two calls
            raise not_found("allowance_id", "deleted while it was being created")
        if not created and state.request_sha256 != digest:
            raise conflict("allowance_id", f"allowance {allowance_id!r} exists with another config")
        return self._pack(state, await self._start_first_grant(state.spec))

    async def GetAllowance(self, request: pb.GetAllowanceRequest, context: Any) -> pb.Allowance:
        return self._pack(await self._read(request.allowance_id))

    async def ListAllowances(self, request: pb.ListAllowancesRequest, context: Any) -> pb.ListAllowancesResponse:
        tenant, size = current_caller().tenant_id, page_size(request.page_size)
        account = check_id(request.account_id, "account_id") if request.account_id else ""
        decoded = decode_token(request.page_token, 1) if request.page_token else None
        token = bytes.fromhex(decoded[0]) if decoded else None
        states, next_token = await allowance_schedules.list_page(self._client, tenant, account, size, token)
        return pb.ListAllowancesResponse(allowances=[self._pack(s) for s in states],
                                         next_page_token=encode_token(next_token.hex()) if next_token else "")

    async def PauseAllowance(self, request: pb.PauseAllowanceRequest, context: Any) -> pb.Allowance:
        return await self._set_paused(request.allowance_id, True, request.note)

    async def ResumeAllowance(self, request: pb.ResumeAllowanceRequest, context: Any) -> pb.Allowance:
        return await self._set_paused(request.allowance_id, False, request.note)

    async def DeleteAllowance(self, request: pb.DeleteAllowanceRequest, context: Any) -> pb.DeleteAllowanceResponse:
        tenant, allowance_id = current_caller().tenant_id, check_id(request.allowance_id, "allowance_id")
        deleted = await allowance_schedules.delete(self._client, tenant, allowance_id)
        if not deleted and not request.allow_missing:
            raise not_found("allowance_id", f"no allowance {allowance_id!r} (allow_missing answers OK)")
        return pb.DeleteAllowanceResponse(deleted=deleted)

    async def _read(self, allowance_id: str) -> AllowanceState:
        tenant, allowance_id = current_caller().tenant_id, check_id(allowance_id, "allowance_id")
        state = await allowance_schedules.read(self._client, tenant, allowance_id)
        if state is None:
            raise not_found("allowance_id", f"no allowance {allowance_id!r}")
        return state

    async def _set_paused(self, allowance_id: str, paused: bool, note: str) -> pb.Allowance:
        """Pausing a paused allowance (or resuming a running one) changes nothing but the note."""
        state = await self._read(allowance_id)
        note = check_text(note, "note", 200) or ("paused" if paused else "resumed") + " through the billing API"
        change = allowance_schedules.pause if paused else allowance_schedules.resume
        try:
            await change(self._client, state.spec.tenant_id, state.spec.allowance_id, note)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise not_found("allowance_id", f"no allowance {allowance_id!r}") from None
            raise
        return self._pack(await self._read(allowance_id))
