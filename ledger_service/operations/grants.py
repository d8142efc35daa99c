"""Grants: GrantCredits (support and operator grants within limits, any grant under the tenant's
approval threshold, or else a request awaiting approval), VoidGrant, Set/GetSupportGrantLimits,
Get/ListGrantRequests, Approve/RejectGrantRequest.

The rules are `ledger_service.domain.grants`. A limited grant (support, operator, or any grant above
the approval threshold) runs under its key's SupportGate lock: the replay check, the limits and the
write (the writer's commit, or the request row with the idempotency key in the gate's transaction)
cannot interleave with another grant by the same key. A decision runs under its request's lock and
the two-person rule compares the people behind the keys (their owners); an approval writes its lot
through the AccountWriter under a key derived from the request, then records the decision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, TypeVar

import asyncpg
from google.protobuf.message import Message

from ledger_service.domain import grants as rules
from ledger_service.domain.amounts import AmountText
from ledger_service.domain.grants import GrantRequestStatus, Limits
from ledger_service.domain.journal import EntryKind
from ledger_service.domain.lifecycle import void_amount
from ledger_service.domain.model import Lot, LotType, RolloverPolicy, Scope
from ledger_service.domain.settlement import check_rollover
from ledger_service.operations.calls import Call, once, submit, unwrap
from ledger_service.operations.context import Ledger, new_id
from ledger_service.storage import catalog, reads
from ledger_service.storage import grant_approvals as approvals
from ledger_service.storage.account_writer import Apply, Operation
from ledger_service.storage.effects import Effects, EntryContext
from ledger_service.storage.grant_approvals import GrantRequestRow
from ledger_service.storage.state import AccountState
from service_runtime.amounts import parse_minor
from service_runtime.idempotency import remember, stored_response
from service_runtime.pages import encode_token
from service_runtime.rejections import conflict, not_found, precondition
from service_runtime.settings import Settings

M = TypeVar("M", bound=Message)
L = TypeVar("L", bound=Message)
T = TypeVar("T")
DEFAULT_MAX_GRANT = "100"
DEFAULT_MAX_DAILY = "500"
THRESHOLD_ENV = "CREDITS_GRANT_APPROVAL_THRESHOLD"  # default approval threshold of every unit ("" = none)


@dataclass(frozen=True, slots=True)
class GrantOrder:
    """A lot as GrantCredits asks for it; its amount waits for the unit's scale."""

    account_id: str
    lot_type: LotType
    unit: str
    amount: AmountText
    priority: int
    effective_at: datetime
    expires_at: datetime | None
    scope: Scope
    cost_basis: Decimal
    source: str = ""
    reason_code: str = ""
    campaign_id: str = ""
    incident_id: str = ""
    rollover: RolloverOrder | None = None


@dataclass(frozen=True, slots=True)
class RolloverOrder:
    """A lot's rollover policy as GrantCredits asks for it; max_amount waits for the unit's scale."""

    max_amount: AmountText | None
    max_percent: int
    expires_after_s: int

    def policy(self, scale: int) -> RolloverPolicy:
        cap = self.max_amount.minor(scale) if self.max_amount is not None else None
        return RolloverPolicy(cap, self.max_percent, self.expires_after_s)


def new_lot(order: GrantOrder, scale: int, granted_by: str) -> Lot:
    """The lot `order` asks for (not yet written), checked against the lot rules."""
    lot = Lot(
        lot_id=new_id("lot"), account_id=order.account_id, lot_type=order.lot_type, unit=order.unit,
        amount=order.amount.minor(scale), priority=order.priority, effective_at=order.effective_at,
        expires_at=order.expires_at, scope=order.scope, cost_basis=order.cost_basis, seq=0,
        usable_until=order.expires_at, source=order.source, reason_code=order.reason_code,
        campaign_id=order.campaign_id, incident_id=order.incident_id, granted_by=granted_by,
        rollover=order.rollover.policy(scale) if order.rollover is not None else None,
    )
    rules.check_new_lot(lot)
    if lot.rollover is not None:
        check_rollover(lot.rollover, lot.lot_type)
    return lot


def write_lot(lot: Lot) -> Apply:
    """The AccountWriter step of a grant: the lot's configuration once, and its GRANT entry."""

    def apply(state: AccountState, fx: Effects) -> Lot:
        new = replace(lot, account_id=state.account_id, created_at=fx.now)
        fx.create(new)
        state.add_lot(new)
        fx.move(new, EntryKind.GRANT, new.amount, EntryContext(actor=new.granted_by, reason=new.reason_code),
                effective_at=new.effective_at)
        return new

    return apply


# --- GrantCredits -------------------------------------------------------------------------------

async def grant_credits(ledger: Ledger, call: Call[M], order: GrantOrder, pack_lot: Callable[[Lot, int], M],
                        pack_pending: Callable[[Lot, int, GrantRequestRow], M]) -> M:
    """The lot, or (a support or operator grant above its key's limits, any grant above the tenant's
    approval threshold) a request awaiting approval and no lot."""
    scale = await ledger.scale(call.tenant_id, order.unit)
    lot = new_lot(order, scale, call.actor)
    rules.check_role_may_grant(call.caller.role, lot)
    if rules.needs_limits(call.caller.role, lot) or await _above_threshold(ledger, call.tenant_id, lot, scale):
        return await _limited_grant(ledger, call, lot, scale, pack_lot, pack_pending)
    return await submit(ledger, call, lot.account_id, write_lot(lot), lambda x: pack_lot(x, scale))


async def _above_threshold(ledger: Ledger, tenant_id: str, lot: Lot, scale: int) -> bool:
    return rules.above_threshold(lot.amount, await _limits(ledger.pool, tenant_id, lot.unit, scale))


async def _limited_grant(ledger: Ledger, call: Call[M], lot: Lot, scale: int, pack_lot: Callable[[Lot, int], M],
                         pack_pending: Callable[[Lot, int, GrantRequestRow], M]) -> M:
    tenant, key, digest = call.tenant_id, call.key, call.digest
    for _attempt in range(2):
        try:
            async with ledger.gate.locked(ledger.gate.actor(tenant, call.actor)) as conn:
                stored = await stored_response(conn, tenant, key, call.method, digest)
                if stored is not None:
                    return call.response.FromString(stored)
                await catalog.get_account(conn, tenant, lot.account_id)
                limit = await _limit_exceeded(ledger, conn, call, lot, scale)
                if limit is None:
                    return await submit(ledger, call, lot.account_id, write_lot(lot), lambda x: pack_lot(x, scale))
                row = await approvals.insert_request(conn, tenant, new_id("gr"), key, lot, call.actor, limit,
                                                     call.request.SerializeToString(), ledger.now(),
                                                     call.caller.principal)
                out = pack_pending(lot, scale, row)
                await remember(conn, tenant, key, call.method, digest, out)
                return out
        except asyncpg.UniqueViolationError:
            continue  # the same key committed meanwhile by another caller: replay or conflict
    raise conflict("idempotency_key", f"{key!r} is being used concurrently")


async def _limit_exceeded(ledger: Ledger, conn: asyncpg.Connection, call: Call[Any], lot: Lot,
                          scale: int) -> rules.LimitExceeded | None:
    limits = await _limits(conn, call.tenant_id, lot.unit, scale)
    limited = rules.needs_limits(call.caller.role, lot)
    granted = 0
    if limited:
        since = ledger.now() - rules.LIMIT_WINDOW
        granted = await approvals.granted_since(conn, call.tenant_id, call.actor, lot.unit, since)
    return rules.limit_exceeded(lot.amount, granted, limits, limited)


# --- limits -------------------------------------------------------------------------------------

def default_limits(scale: int) -> Limits:
    """CREDITS_SUPPORT_MAX_GRANT / CREDITS_SUPPORT_MAX_DAILY / CREDITS_GRANT_APPROVAL_THRESHOLD, in
    the unit's major units (read per call)."""
    settings = Settings.from_env()
    per_grant, per_day = settings.support_max_grant, settings.support_max_daily
    threshold = settings.grant_approval_threshold.strip()
    return Limits(parse_minor(per_grant, scale, "CREDITS_SUPPORT_MAX_GRANT", allow_zero=True),
                  parse_minor(per_day, scale, "CREDITS_SUPPORT_MAX_DAILY", allow_zero=True), True,
                  parse_minor(threshold, scale, THRESHOLD_ENV, allow_zero=True) if threshold else None)


async def _limits(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, unit: str, scale: int) -> Limits:
    return await approvals.limits_for(conn, tenant_id, unit) or default_limits(scale)


async def set_support_grant_limits(ledger: Ledger, call: Call[M], unit: str, max_per_grant: AmountText,
                                   max_per_day: AmountText, pack: Callable[[str, Limits, int], M],
                                   approval_threshold: AmountText | None = None) -> M:
    scale = await ledger.scale(call.tenant_id, unit)
    threshold = approval_threshold.minor(scale) if approval_threshold is not None else None
    limits = Limits(max_per_grant.minor(scale), max_per_day.minor(scale), False, threshold)
    rules.check_limits(limits)

    async def work(conn: asyncpg.Connection) -> Limits:
        return await approvals.set_limits(conn, call.tenant_id, unit, limits, call.actor, ledger.now())

    return await once(ledger, call, work, lambda lim: pack(unit, lim, scale))


async def get_support_grant_limits(ledger: Ledger, tenant_id: str, unit: str,
                                   pack: Callable[[str, Limits, int], T]) -> T:
    scale = await ledger.scale(tenant_id, unit)
    return pack(unit, await _limits(ledger.pool, tenant_id, unit, scale), scale)


# --- grant requests -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class GrantRequestQuery:
    status: GrantRequestStatus | None  # None: all
    account_id: str                     # "": all
    after_seq: int
    limit: int


async def get_grant_request(ledger: Ledger, tenant_id: str, request_id: str,
                            pack: Callable[[GrantRequestRow], T]) -> T:
    return pack(await approvals.get_request(ledger.pool, tenant_id, request_id))


async def list_grant_requests(ledger: Ledger, tenant_id: str, query: GrantRequestQuery,
                              pack: Callable[[GrantRequestRow], T]) -> tuple[list[T], str]:
    """One page of requests in creation order, and the next page's token ("" after the last)."""
    rows = await approvals.list_requests(ledger.pool, tenant_id, query.status, query.account_id, query.after_seq,
                                         query.limit)
    return [pack(r) for r in rows], encode_token(rows[-1].seq) if len(rows) == query.limit else ""


@dataclass(frozen=True)
class ApprovalWire(Generic[L, M]):
    """How the API layer reads a stored grant request and packs what a decision returns."""

    regrant: Callable[[bytes, datetime, int], GrantOrder]  # the stored GrantCreditsRequest, checked again
    pack_lot: Callable[[Lot, int], L]
    lot_response: type[L]
    pack_request: Callable[[GrantRequestRow], M]


async def approve_grant_request(ledger: Ledger, call: Call[M], request_id: str, reason: str,
                                wire: ApprovalWire[Any, M]) -> M:
    """Creates the requested lot, exactly once, then records the decision. Approving an approved
    request returns it; a rejected one is FAILED_PRECONDITION."""
    return await _decide(ledger, call, request_id, reason, GrantRequestStatus.APPROVED, wire)


async def reject_grant_request(ledger: Ledger, call: Call[M], request_id: str, reason: str,
                               wire: ApprovalWire[Any, M]) -> M:
    return await _decide(ledger, call, request_id, reason, GrantRequestStatus.REJECTED, wire)


async def _decide(ledger: Ledger, call: Call[M], request_id: str, reason: str, wanted: GrantRequestStatus,
                  wire: ApprovalWire[Any, M]) -> M:
    tenant, digest = call.tenant_id, call.digest
    async with ledger.gate.locked(ledger.gate.request(tenant, request_id)) as conn:
        stored = await stored_response(conn, tenant, call.key, call.method, digest)
        if stored is not None:
            return call.response.FromString(stored)
        row = await approvals.get_request(conn, tenant, request_id)
        rules.check_two_person_rule(row.requester, call.caller.principal)
        if rules.needs_decision(request_id, row.status, wanted):
            started = await approvals.approval_started(conn, tenant, request_id)
            lot_id = None
            if wanted is GrantRequestStatus.APPROVED:
                lot_id = await _approved_lot(ledger, call, row, started, wire)
            else:
                rules.check_rejectable(request_id, started)
            row = await approvals.record_decision(conn, tenant, row, wanted, call.actor, reason, lot_id, ledger.now(),
                                                  call.caller.principal)
        out = wire.pack_request(row)
        await remember(conn, tenant, call.key, call.method, digest, out)
        return out


async def _approved_lot(ledger: Ledger, call: Call[Any], row: GrantRequestRow, started: bool,
                        wire: ApprovalWire[Any, Any]) -> str:
    """The approval's lot id: written now (granted by the approver), or replayed if an interrupted
    approval wrote it already."""
    scale = await ledger.scale(call.tenant_id, row.unit)
    apply: Apply = _never_applied
    if not started:
        order = wire.regrant(row.request, ledger.now(), ledger.settings.lot_horizon_s)
        scale = await ledger.scale(call.tenant_id, order.unit)
        apply = write_lot(new_lot(order, scale, call.actor))
    op = Operation(call.method, approvals.approval_key(row.request_id), approvals.request_digest(row),
                   apply, lambda x: wire.pack_lot(x, scale))
    created = unwrap(await ledger.writer.submit(call.tenant_id, row.account_id, op), wire.lot_response)
    return str(created.lot_id)  # type: ignore[attr-defined]


def _never_applied(state: AccountState, fx: Effects) -> Lot:
    """An interrupted approval's lot is replayed from its idempotency key; this never runs."""
    raise precondition("request_id", "the approval's lot was written but cannot be replayed")


# --- VoidGrant ----------------------------------------------------------------------------------

@dataclass
class VoidResult:
    lot: Lot
    voided: int


def _void(lot_id: str, reason: str, actor: str) -> Apply:
    def apply(state: AccountState, fx: Effects) -> VoidResult:
        lot = state.lots.get(lot_id)
        if lot is None or lot.account_id != state.account_id:
            raise not_found("lot_id", f"lot {lot_id!r} not found")
        amount = void_amount(lot)
        if amount is None:
            return VoidResult(lot, 0)  # already voided or expired: nothing left to void
        if amount > 0:
            fx.move(lot, EntryKind.VOID, amount, EntryContext(actor=actor, reason=reason))
        fx.close(lot)
        return VoidResult(lot, amount)

    return apply


async def void_grant(ledger: Ledger, call: Call[M], lot_id: str, reason: str,
                     pack: Callable[[VoidResult, int], M]) -> M:
    """Voids what is left of a lot; a closed lot voids nothing."""
    lot = await reads.get_lot(ledger.pool, call.tenant_id, lot_id)
    scale = await ledger.scale(call.tenant_id, lot.unit)
    return await submit(ledger, call, lot.account_id, _void(lot.lot_id, reason, call.actor),
                        lambda r: pack(r, scale), lot_ids=(lot.lot_id,))
