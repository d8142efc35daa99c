"""LedgerService gRPC servicer: each method unpacks, calls one operation, packs."""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import grpc
from credits.ledger.v1 import ledger_pb2 as pb
from credits.ledger.v1 import ledger_pb2_grpc
from google.protobuf.message import Message

from ledger_service.api import mapping as m
from ledger_service.domain.model import DEBIT_PREFIX, Hold, Lot, LotType
from ledger_service.domain.policy import DEFAULT_TYPE_ORDER, SortKey
from ledger_service.storage import catalog, operations, reads, transfers
from ledger_service.storage import grant_approvals as approvals
from ledger_service.storage.account_writer import AccountWriter, Operation, Outcome
from service_runtime.amounts import format_minor, parse_decimal, parse_minor
from service_runtime.audit import AuditRecord, claim_audit
from service_runtime.grpc_server import current_caller
from service_runtime.idempotency import check_key, remember, request_hash, run_idempotent, stored_response
from service_runtime.rejections import Rejection, conflict, invalid, not_found, precondition
from service_runtime.settings import Settings

M = TypeVar("M", bound=Message)
SERVICE = "credits.ledger.v1.LedgerService"
_MAX_PAGE = 1000


def _method(name: str) -> str:
    return f"/{SERVICE}/{name}"


def _page(size: int) -> int:
    if size < 0:
        raise invalid("page_size", "must not be negative")
    return min(size or 100, _MAX_PAGE)


def _token(token: str) -> str:
    if len(token) > 200:
        raise invalid("page_token", "is malformed")
    return token


def _int_token(token: str) -> int:
    if not token:
        return 0
    if not token.isdigit() or len(token) > 19:
        raise invalid("page_token", "is malformed")
    return int(token)


class LedgerServicer(ledger_pb2_grpc.LedgerServiceServicer):
    def __init__(self, pool: asyncpg.Pool, settings: Settings,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.pool = pool
        self.settings = settings
        self.clock = clock
        self.units = catalog.UnitCatalog(pool)
        self.writer = AccountWriter(pool, clock=clock)

    # --- plumbing -----------------------------------------------------------------------------

    async def _submit(self, account_id: str, method: str, request: Message, apply: Any,
                      pack: Callable[[Any], M], response_type: type[M], *, hold_keys: tuple[str, ...] = (),
                      lot_ids: tuple[str, ...] = ()) -> M:
        key = check_key(request.idempotency_key)  # type: ignore[attr-defined]
        op = Operation(method, key, request_hash(request), apply, pack, hold_keys=hold_keys, lot_ids=lot_ids,
                       audit=claim_audit())
        outcome = await self.writer.submit(current_caller().tenant_id, account_id, op)
        return self._unwrap(outcome, response_type)

    @staticmethod
    def _unwrap(outcome: Outcome, response_type: type[M]) -> M:
        if outcome.replay is not None:
            return response_type.FromString(outcome.replay)
        assert isinstance(outcome.message, response_type)
        return outcome.message

    async def _idempotent(self, method: str, request: Message, work: Any, pack: Callable[[Any], M],
                          response_type: type[M]) -> M:
        out = await run_idempotent(self.pool, current_caller().tenant_id, request.idempotency_key,  # type: ignore
                                   method, request, work, pack)
        return response_type.FromString(out) if isinstance(out, bytes) else out  # type: ignore[return-value]

    async def _stored(self, tenant: str, key: str, method: str, digest: bytes) -> bytes | None:
        """The stored response of a sweep that spans accounts (each account also has its own key)."""
        async with self.pool.acquire() as conn:
            return await stored_response(conn, tenant, key, method, digest)


    def _now(self) -> datetime:
        return self.clock()

    async def _scale(self, unit: str, field: str = "unit") -> int:
        return await self.units.scale(current_caller().tenant_id, m.text(unit, field, 64), field)

    # --- accounts and units -------------------------------------------------------------------

    async def CreateAccount(self, request: pb.CreateAccountRequest, context: Any) -> pb.Account:
        account_id = m.ident(request.account_id, "account_id")
        parent = m.ident(request.parent_account_id, "parent_account_id", required=False)
        name = m.text(request.name, "name")
        tenant = current_caller().tenant_id

        async def work(conn: asyncpg.Connection) -> catalog.AccountRow:
            return await catalog.create_account(conn, tenant, account_id, parent, name)

        return await self._idempotent(_method("CreateAccount"), request, work, _pack_account, pb.Account)

    async def GetAccount(self, request: pb.GetAccountRequest, context: Any) -> pb.Account:
        account_id = m.ident(request.account_id, "account_id")
        row = await catalog.get_account(self.pool, current_caller().tenant_id, account_id)
        return _pack_account(row)

    async def DefineUnit(self, request: pb.DefineUnitRequest, context: Any) -> pb.Unit:
        code = request.code
        if not code or len(code) > 32 or not code.replace("_", "").isalnum() or not code.isascii():
            raise invalid("code", "must be 1-32 ASCII letters, digits or _")
        if not 0 <= request.scale <= 9:
            raise invalid("scale", "must be between 0 and 9")
        tenant = current_caller().tenant_id

        async def work(conn: asyncpg.Connection) -> tuple[str, int]:
            return await self.units.define(conn, tenant, code, request.scale)

        return await self._idempotent(_method("DefineUnit"), request, work,
                                      lambda u: pb.Unit(code=u[0], scale=u[1]), pb.Unit)

    async def ListUnits(self, request: pb.ListUnitsRequest, context: Any) -> pb.ListUnitsResponse:
        units = await self.units.list(current_caller().tenant_id)
        return pb.ListUnitsResponse(units=[pb.Unit(code=c, scale=s) for c, s in units])

    # --- lots ---------------------------------------------------------------------------------

    async def GrantCredits(self, request: pb.GrantCreditsRequest, context: Any) -> pb.Lot:
        check_key(request.idempotency_key)
        caller = current_caller()
        lot, scale = await self._grant_lot(request, caller.key_id)
        approvals.role_rules(caller, lot)
        if caller.role == "support":
            return await self._support_grant(request, lot, scale)
        return await self._submit(lot.account_id, _method("GrantCredits"), request, operations.grant_credits(lot),
                                  lambda x: m.pack_lot(x, scale), pb.Lot)

    async def _grant_lot(self, request: pb.GrantCreditsRequest, granted_by: str) -> tuple[Lot, int]:
        """Validates a grant and builds its lot (not yet written); returns it with its unit's scale."""
        account_id = m.ident(request.account_id, "account_id")
        lot_type = m.lot_type(request.type)
        scale = await self._scale(request.unit)
        amount = parse_minor(request.amount, scale, "amount")
        priority = request.priority or 50
        if not 1 <= priority <= 100:
            raise invalid("priority", "must be between 1 and 100")
        now = self._now()
        effective_at = m.opt_when(request, "effective_at") or now
        m.not_beyond_skew(effective_at, now, self.settings.clock_skew_s, "effective_at")
        expires_at = m.opt_when(request, "expires_at")
        if expires_at is not None and expires_at <= effective_at:
            raise invalid("expires_at", "must be after effective_at")
        incident_id = m.text(request.incident_id, "incident_id", 128)
        if lot_type is LotType.COMPENSATORY and not incident_id:
            raise invalid("incident_id", "is required for COMPENSATORY credits")
        lot = Lot(
            lot_id=operations.new_id("lot"), account_id=account_id, lot_type=lot_type, unit=request.unit,
            amount=amount, priority=priority, effective_at=effective_at, expires_at=expires_at,
            scope=m.scope(request.scope), cost_basis=parse_decimal(request.cost_basis, "cost_basis"), seq=0,
            usable_until=expires_at, source=m.text(request.source, "source", 64),
            reason_code=m.text(request.reason_code, "reason_code", 128),
            campaign_id=m.text(request.campaign_id, "campaign_id", 128), incident_id=incident_id,
            granted_by=granted_by,
        )
        return lot, scale

    # --- support grants: limits and the two-person rule (service_runtime/permissions.py) --------

    @functools.cached_property
    def _gate(self) -> approvals.SupportGate:
        return approvals.SupportGate(self.pool)

    async def _support_grant(self, request: pb.GrantCreditsRequest, lot: Lot, scale: int) -> pb.Lot:
        """Within the key's limits: the lot, as any grant. Above: a PENDING_APPROVAL request, no lot.

        Under the key's lock: the replay check, the limits, and the write (the writer's commit,
        or the request row with the idempotency key in this transaction) cannot interleave with
        another grant by the same key."""
        caller = current_caller()
        tenant, key = caller.tenant_id, request.idempotency_key
        method, digest = _method("GrantCredits"), request_hash(request)
        for _attempt in range(2):
            try:
                async with self._gate.locked(self._gate.actor(tenant, caller.key_id)) as conn:
                    stored = await stored_response(conn, tenant, key, method, digest)
                    if stored is not None:
                        return pb.Lot.FromString(stored)
                    await catalog.get_account(conn, tenant, lot.account_id)
                    limits = await approvals.limits_for(conn, tenant, lot.unit, scale)
                    limit = await approvals.exceeded(conn, tenant, caller.key_id, lot, limits, self._now())
                    if not limit:
                        return await self._submit(lot.account_id, method, request, operations.grant_credits(lot),
                                                  lambda x: m.pack_lot(x, scale), pb.Lot)
                    row = await approvals.insert_request(conn, tenant, operations.new_id("gr"), key, lot,
                                                         caller.key_id, limit, request.SerializeToString(),
                                                         self._now())
                    out = pb.Lot(account_id=lot.account_id, type=request.type, unit=lot.unit,
                                 amount=format_minor(lot.amount, scale), reason_code=lot.reason_code,
                                 incident_id=lot.incident_id, grant_request=_pack_grant_request(row))
                    await remember(conn, tenant, key, method, digest, out)
                    return out
            except asyncpg.UniqueViolationError:
                continue  # the same key committed meanwhile by another caller: replay or conflict
        raise conflict("idempotency_key", f"{key!r} is being used concurrently")

    async def SetSupportGrantLimits(self, request: pb.SetSupportGrantLimitsRequest,
                                    context: Any) -> pb.SupportGrantLimits:
        scale = await self._scale(request.unit)
        limits = approvals.Limits(
            parse_minor(request.max_per_grant, scale, "max_per_grant", allow_zero=True),
            parse_minor(request.max_per_day, scale, "max_per_day", allow_zero=True), False)
        if limits.max_per_grant > limits.max_per_day:
            raise invalid("max_per_grant", "must not exceed max_per_day")
        caller = current_caller()

        async def work(conn: asyncpg.Connection) -> approvals.Limits:
            return await approvals.set_limits(conn, caller.tenant_id, request.unit, limits, caller.key_id, self._now())

        return await self._idempotent(_method("SetSupportGrantLimits"), request, work,
                                      lambda lim: _pack_limits(request.unit, lim, scale), pb.SupportGrantLimits)

    async def GetSupportGrantLimits(self, request: pb.GetSupportGrantLimitsRequest,
                                    context: Any) -> pb.SupportGrantLimits:
        scale = await self._scale(request.unit)
        limits = await approvals.limits_for(self.pool, current_caller().tenant_id, request.unit, scale)
        return _pack_limits(request.unit, limits, scale)

    async def GetGrantRequest(self, request: pb.GetGrantRequestRequest, context: Any) -> pb.GrantRequest:
        row = await approvals.get_request(self.pool, current_caller().tenant_id,
                                          m.ident(request.request_id, "request_id"))
        return _pack_grant_request(row)

    async def ListGrantRequests(self, request: pb.ListGrantRequestsRequest,
                                context: Any) -> pb.ListGrantRequestsResponse:
        status = ""
        if request.status:
            if request.status not in _GRANT_REQUEST_STATUS:
                raise invalid("status", f"unknown grant request status {request.status}")
            status = _GRANT_REQUEST_STATUS[request.status]
        limit = _page(request.page_size)
        rows = await approvals.list_requests(self.pool, current_caller().tenant_id, status,
                                             m.ident(request.account_id, "account_id", required=False),
                                             _int_token(request.page_token), limit)
        out = pb.ListGrantRequestsResponse(requests=[_pack_grant_request(r) for r in rows])
        if len(rows) == limit:
            out.next_page_token = str(rows[-1].seq)
        return out

    async def ApproveGrantRequest(self, request: pb.ApproveGrantRequestRequest, context: Any) -> pb.GrantRequest:
        """Creates the requested lot, exactly once: under the request's lock, through the writer
        with a key derived from the request, then records the decision. Approving an approved
        request returns it; a rejected one is FAILED_PRECONDITION."""
        return await self._decide(request, approvals.APPROVED)

    async def RejectGrantRequest(self, request: pb.RejectGrantRequestRequest, context: Any) -> pb.GrantRequest:
        if not request.reason:
            raise invalid("reason", "is required to reject a grant request")
        return await self._decide(request, approvals.REJECTED)

    async def _decide(self, request: pb.ApproveGrantRequestRequest | pb.RejectGrantRequestRequest,
                      status: str) -> pb.GrantRequest:
        key = check_key(request.idempotency_key)
        request_id = m.ident(request.request_id, "request_id")
        reason = m.text(request.reason, "reason")
        caller = current_caller()
        tenant = caller.tenant_id
        method = _method("ApproveGrantRequest" if status == approvals.APPROVED else "RejectGrantRequest")
        digest = request_hash(request)
        async with self._gate.locked(self._gate.request(tenant, request_id)) as conn:
            stored = await stored_response(conn, tenant, key, method, digest)
            if stored is not None:
                return pb.GrantRequest.FromString(stored)
            row = await approvals.get_request(conn, tenant, request_id)
            approvals.two_person_rule(row.requested_by, caller)
            if row.status != approvals.PENDING:
                if row.status != status:
                    raise precondition("request_id", f"grant request {request_id!r} is {row.status}")
            elif status == approvals.APPROVED:
                scale = await self._scale(row.unit)
                apply: operations.Apply = _already_granted
                if not await approvals.approval_started(conn, tenant, request_id):  # else: replays its lot
                    lot, scale = await self._grant_lot(pb.GrantCreditsRequest.FromString(row.request), caller.key_id)
                    apply = operations.grant_credits(lot)
                op = Operation(method, approvals.approval_key(request_id), hashlib.sha256(row.request).digest(),
                               apply, lambda x: m.pack_lot(x, scale))
                created = self._unwrap(await self.writer.submit(tenant, row.account_id, op), pb.Lot)
                row = await approvals.decide(conn, tenant, row, status, caller, reason, created.lot_id, self._now())
            else:
                if await approvals.approval_started(conn, tenant, request_id):
                    raise precondition("request_id", f"grant request {request_id!r} was being approved; "
                                                     "approve it again to finish")
                row = await approvals.decide(conn, tenant, row, status, caller, reason, None, self._now())
            out = _pack_grant_request(row)
            await remember(conn, tenant, key, method, digest, out)
            return out

    async def GetLot(self, request: pb.GetLotRequest, context: Any) -> pb.Lot:
        lot = await reads.get_lot(self.pool, current_caller().tenant_id, m.ident(request.lot_id, "lot_id"),
                                  m.opt_when(request, "as_of"))
        return m.pack_lot(lot, await self._scale(lot.unit))

    async def ListLots(self, request: pb.ListLotsRequest, context: Any) -> pb.ListLotsResponse:
        account_id = m.ident(request.account_id, "account_id")
        limit = _page(request.page_size)
        after = _int_token(request.page_token)
        lots = await reads.list_lots(self.pool, current_caller().tenant_id, account_id,
                                     m.text(request.unit, "unit", 64), request.include_empty, after, limit)
        out = pb.ListLotsResponse(lots=[m.pack_lot(lot, await self._scale(lot.unit)) for lot in lots])
        if len(lots) == limit:
            out.next_page_token = str(lots[-1].seq)
        return out

    async def VoidGrant(self, request: pb.VoidGrantRequest, context: Any) -> pb.VoidGrantResponse:
        check_key(request.idempotency_key)
        lot = await reads.get_lot(self.pool, current_caller().tenant_id, m.ident(request.lot_id, "lot_id"))
        scale = await self._scale(lot.unit)
        apply = operations.void_grant(lot.lot_id, m.text(request.reason, "reason"), current_caller().key_id)

        def pack(r: operations.VoidResult) -> pb.VoidGrantResponse:
            return pb.VoidGrantResponse(lot=m.pack_lot(r.lot, scale), voided_amount=format_minor(r.voided, scale))

        return await self._submit(lot.account_id, _method("VoidGrant"), request, apply, pack,
                                  pb.VoidGrantResponse, lot_ids=(lot.lot_id,))

    # --- reads --------------------------------------------------------------------------------

    async def GetBalance(self, request: pb.GetBalanceRequest, context: Any) -> pb.Balance:
        account_id = m.ident(request.account_id, "account_id")
        view = await reads.get_balance(self.pool, current_caller().tenant_id, account_id,
                                       m.opt_when(request, "as_of"), self._now())
        out = pb.Balance(account_id=account_id, as_of=m.ts(view.as_of))
        for rows, target in ((view.totals, out.totals), (view.by_type, out.by_type)):
            for row in rows:
                bucket = target.add(unit=row.unit, type=m.LOT_TYPE_PB[row.lot_type] if row.lot_type else 0)
                m.pack_buckets(bucket, row.buckets, row.upcoming, await self._scale(row.unit))
        return out

    async def ListEntries(self, request: pb.ListEntriesRequest, context: Any) -> pb.ListEntriesResponse:
        kinds = []
        for k in request.kinds:
            if k not in pb.EntryKind.values() or k == pb.ENTRY_KIND_UNSPECIFIED:
                raise invalid("kinds", f"unknown entry kind {k}")
            kinds.append(pb.EntryKind.Name(k))
        f = reads.EntryFilter(
            account_id=m.ident(request.account_id, "account_id", required=False),
            lot_id=m.ident(request.lot_id, "lot_id", required=False), kinds=kinds,
            reference=m.text(request.reference, "reference", 200),
            recorded_from=m.opt_when(request, "from"), recorded_to=m.opt_when(request, "to"),
        )
        limit = _page(request.page_size)
        rows = await reads.list_entries(self.pool, current_caller().tenant_id, f, _int_token(request.page_token),
                                        limit)
        out = pb.ListEntriesResponse()
        for r in rows:
            scale = await self._scale(r["unit"])
            out.entries.add(
                entry_id=r["entry_id"], account_id=r["account_id"], lot_id=r["lot_id"],
                kind=pb.EntryKind.Value(r["kind"]), amount=format_minor(r["amount"], scale), unit=r["unit"],
                effective_at=m.ts(r["effective_at"]), recorded_at=m.ts(r["recorded_at"]), actor=r["actor"],
                reason=r["reason"], reference=r["reference"], hold_key=r["hold_key"],
                policy_version=r["policy_version"],
            )
        if len(rows) == limit:
            out.next_page_token = str(rows[-1]["entry_id"])
        return out

    async def GetLotBoundaries(self, request: pb.GetLotBoundariesRequest,
                               context: Any) -> pb.GetLotBoundariesResponse:
        account_id = m.ident(request.account_id, "account_id")
        start = m.opt_when(request, "period_start")
        end = m.opt_when(request, "period_end")
        if start is None:
            raise invalid("period_start", "is required")
        if end is None:
            raise invalid("period_end", "is required")
        instants = await reads.lot_boundaries(self.pool, current_caller().tenant_id, account_id,
                                              m.text(request.unit, "unit", 64), start, end)
        return pb.GetLotBoundariesResponse(instants=[m.ts(t) for t in instants])

    async def ExplainAllocation(self, request: pb.ExplainAllocationRequest,
                                context: Any) -> pb.ExplainAllocationResponse:
        ex = await reads.explain_allocation(self.pool, current_caller().tenant_id,
                                            m.ident(request.hold_key, "hold_key"))
        scale = await self._scale(ex.hold.unit)
        out = pb.ExplainAllocationResponse(hold_key=ex.hold.hold_key, policy=m.pack_policy(ex.policy, None))
        for charge_id, considered in ex.charges:
            ce = out.charges.add(charge_id=charge_id)
            for c in considered:
                ce.lots.add(lot_id=c.lot.lot_id, lot_type=m.LOT_TYPE_PB[c.lot.lot_type], eligible=c.eligible,
                            why=c.why, allocated=format_minor(c.allocated, scale), sort_values=c.sort_values)
        return out

    async def VerifyJournal(self, request: pb.VerifyJournalRequest, context: Any) -> pb.VerifyJournalResponse:
        v = await reads.verify_journal(self.pool, current_caller().tenant_id)
        return pb.VerifyJournalResponse(ok=not v.violations, entries=v.entries, lots=v.lots, violations=v.violations)

    # --- policy -------------------------------------------------------------------------------

    async def SetConsumptionPolicy(self, request: pb.SetConsumptionPolicyRequest,
                                   context: Any) -> pb.ConsumptionPolicy:
        account_id = m.ident(request.account_id, "account_id", required=False)
        keys: list[SortKey] = []
        for k in request.sort_keys:
            key = m.SORT_KEYS.get(k)
            if key is None:
                raise invalid("sort_keys", f"unknown sort key {k}")
            if key in keys:
                raise invalid("sort_keys", f"{key.value} repeats")
            keys.append(key)
        if not keys:
            raise invalid("sort_keys", "at least one sort key is required")
        type_order = [m.lot_type(t, "type_order") for t in request.type_order] or list(DEFAULT_TYPE_ORDER)
        if len(set(type_order)) != len(type_order):
            raise invalid("type_order", "repeats a type")
        tenant = current_caller().tenant_id

        async def work(conn: asyncpg.Connection) -> catalog.PolicyRow:
            return await catalog.set_policy(conn, tenant, account_id, keys, type_order)

        return await self._idempotent(_method("SetConsumptionPolicy"), request, work,
                                      lambda r: m.pack_policy(r.policy, r.created_at), pb.ConsumptionPolicy)

    async def GetConsumptionPolicy(self, request: pb.GetConsumptionPolicyRequest,
                                   context: Any) -> pb.ConsumptionPolicy:
        row = await catalog.get_policy(self.pool, current_caller().tenant_id,
                                       m.ident(request.account_id, "account_id", required=False))
        return m.pack_policy(row.policy, row.created_at)

    # --- holds and debits ---------------------------------------------------------------------

    def _reserve_spec(self, request: pb.ReserveCreditsRequest | pb.DebitCreditsRequest, hold_key: str,
                            scale: int, *, ttl_s: int, release_on_ttl: bool) -> operations.ReserveSpec:
        now = self._now()
        return operations.ReserveSpec(
            hold_key=hold_key, unit=request.unit,
            charges=m.charges(request.charges, scale, now, self.settings.clock_skew_s), up_to=request.up_to,
            ttl_s=ttl_s, release_on_ttl=release_on_ttl, reference=m.text(request.reference, "reference", 200),
            actor=current_caller().key_id,
        )

    async def ReserveCredits(self, request: pb.ReserveCreditsRequest, context: Any) -> pb.Hold:
        check_key(request.idempotency_key)
        account_id = m.ident(request.account_id, "account_id")
        hold_key = m.ident(request.hold_key, "hold_key")
        if request.ttl_s < 0 or request.ttl_s > 90 * 86400:
            raise invalid("ttl_s", "must be between 0 and 90 days")
        scale = await self._scale(request.unit)
        if hold_key.startswith(DEBIT_PREFIX):
            raise invalid("hold_key", "the prefix 'debit:' is reserved for DebitCredits")
        spec = self._reserve_spec(request, hold_key, scale, ttl_s=request.ttl_s or self.settings.hold_ttl_s,
                                        release_on_ttl=request.release_on_ttl)
        return await self._submit(account_id, _method("ReserveCredits"), request, operations.reserve_credits(spec),
                                  lambda h: m.pack_hold(h, scale), pb.Hold, hold_keys=(hold_key,))

    async def _hold_target(self, hold_key: str) -> tuple[str, int]:
        tenant = current_caller().tenant_id
        target = await reads.hold_account(self.pool, tenant, hold_key)
        if target is None:
            hold = await reads.get_hold(self.pool, tenant, hold_key)  # NOT_FOUND, or a tombstone
            raise Rejection(not_found("hold_key").reason, f"hold {hold_key!r} is {hold.status.value}", "hold_key")
        account_id, unit = target
        return account_id, await self._scale(unit)

    async def CommitHold(self, request: pb.CommitHoldRequest, context: Any) -> pb.Hold:
        check_key(request.idempotency_key)
        hold_key = m.ident(request.hold_key, "hold_key")
        account_id, scale = await self._hold_target(hold_key)
        amount = parse_minor(request.amount, scale, "amount", allow_zero=True) if request.amount else None
        apply = operations.commit_hold(hold_key, amount, current_caller().key_id)
        return await self._submit(account_id, _method("CommitHold"), request, apply, lambda h: m.pack_hold(h, scale),
                                  pb.Hold, hold_keys=(hold_key,))

    async def ReleaseHold(self, request: pb.ReleaseHoldRequest, context: Any) -> pb.Hold:
        check_key(request.idempotency_key)
        hold_key = m.ident(request.hold_key, "hold_key")
        tenant = current_caller().tenant_id
        target = await reads.hold_account(self.pool, tenant, hold_key)
        scale = 0
        if target is None:
            # The reserve has not arrived (or never will): the release leaves a tombstone.
            account_id = m.ident(request.account_id, "account_id")
        else:
            account_id, unit = target
            if request.account_id and request.account_id != account_id:
                raise not_found("hold_key", f"hold {hold_key!r} not found on account {request.account_id!r}")
            scale = await self._scale(unit)
        apply = operations.release_hold(hold_key, m.text(request.reason, "reason"), current_caller().key_id)
        return await self._submit(account_id, _method("ReleaseHold"), request, apply,
                                  lambda h: m.pack_hold(h, scale), pb.Hold, hold_keys=(hold_key,))

    async def GetHold(self, request: pb.GetHoldRequest, context: Any) -> pb.Hold:
        hold = await reads.get_hold(self.pool, current_caller().tenant_id, m.ident(request.hold_key, "hold_key"))
        scale = await self._scale(hold.unit) if hold.unit else 0
        return m.pack_hold(hold, scale)

    async def ListHolds(self, request: pb.ListHoldsRequest, context: Any) -> pb.ListHoldsResponse:
        status = ""
        if request.status:
            if request.status not in m.HOLD_STATUS:
                raise invalid("status", f"unknown hold status {request.status}")
            status = m.HOLD_STATUS[request.status].value
        limit = _page(request.page_size)
        holds = await reads.list_holds(
            self.pool, current_caller().tenant_id, m.ident(request.account_id, "account_id", required=False),
            status, m.opt_when(request, "created_before"), m.text(request.hold_key_prefix, "hold_key_prefix", 128),
            _token(request.page_token), limit,
        )
        out = pb.ListHoldsResponse(holds=[m.pack_hold(h, await self._scale(h.unit)) for h in holds])
        if len(holds) == limit:
            out.next_page_token = holds[-1].hold_key
        return out

    def _debit_op(self, request: pb.DebitCreditsRequest, scale: int,
                  audit: AuditRecord | None = None) -> tuple[str, Operation]:
        """A debit's hold key is derived from its idempotency key ("debit:<key>", a prefix reserves
        may not use), so a debit whose key is unseen cannot find an existing hold: none is loaded."""
        key = check_key(request.idempotency_key)
        account_id = m.ident(request.account_id, "account_id")
        spec = self._reserve_spec(request, f"{DEBIT_PREFIX}{key}", scale, ttl_s=0, release_on_ttl=False)
        op = Operation(_method("DebitCredits"), key, request_hash(request), operations.debit_credits(spec),
                       functools.partial(_pack_hold_scaled, scale=scale), audit=audit)
        return account_id, op

    async def DebitCredits(self, request: pb.DebitCreditsRequest, context: Any) -> pb.Hold:
        account_id, op = self._debit_op(request, await self._scale(request.unit), claim_audit())
        outcome = await self.writer.submit(current_caller().tenant_id, account_id, op)
        return self._unwrap(outcome, pb.Hold)

    async def BatchDebitCredits(self, request: pb.BatchDebitCreditsRequest,
                                context: Any) -> pb.BatchDebitCreditsResponse:
        if not request.debits:
            raise invalid("debits", "at least one debit is required")
        if len(request.debits) > 10_000:
            raise invalid("debits", "more than 10,000 debits")
        tenant = current_caller().tenant_id
        scales: dict[str, int] = {}
        slots: list[tuple[str, Operation] | Rejection] = []
        for i, debit in enumerate(request.debits):
            try:
                scale = scales.get(debit.unit)
                if scale is None:
                    scale = scales[debit.unit] = await self._scale(debit.unit)
                slots.append(self._debit_op(debit, scale))
            except Rejection as rej:
                field = f"debits[{i}].{rej.field}"
                slots.append(Rejection(rej.reason, rej.message.replace(rej.field, field, 1), field))
        by_account: dict[str, list[int]] = {}
        for i, slot in enumerate(slots):
            if not isinstance(slot, Rejection):
                by_account.setdefault(slot[0], []).append(i)
        outcomes: dict[int, Outcome | Exception] = {}

        async def one_account(account_id: str, indexes: list[int]) -> None:
            ops = [slots[i][1] for i in indexes]  # type: ignore[index]
            for i, res in zip(indexes, await self.writer.submit_many(tenant, account_id, ops), strict=True):
                outcomes[i] = res

        await asyncio.gather(*(one_account(a, idx) for a, idx in by_account.items()))
        out = pb.BatchDebitCreditsResponse()
        for i, slot in enumerate(slots):
            result = out.results.add()
            got: Outcome | Exception = slot if isinstance(slot, Rejection) else outcomes[i]
            if isinstance(got, Rejection):
                result.error.code = got.status.value[0]
                result.error.message = got.message
            elif isinstance(got, Exception):
                result.error.code = grpc.StatusCode.INTERNAL.value[0]
                result.error.message = "internal error"
            elif got.replay is not None:
                result.hold.ParseFromString(got.replay)
            else:
                result.hold.CopyFrom(got.message)
        return out

    # --- lifecycle ----------------------------------------------------------------------------

    async def ExpireLots(self, request: pb.ExpireLotsRequest, context: Any) -> pb.ExpireLotsResponse:
        check_key(request.idempotency_key)
        now = self._now()
        as_of = m.opt_when(request, "as_of") or now
        m.not_beyond_skew(as_of, now, self.settings.clock_skew_s, "as_of")
        tenant = current_caller().tenant_id
        account = m.ident(request.account_id, "account_id", required=False)
        method, digest = _method("ExpireLots"), request_hash(request)
        stored = await self._stored(tenant, request.idempotency_key, method, digest)
        if stored is not None:
            return pb.ExpireLotsResponse.FromString(stored)
        accounts = [account] if account else [
            r["account_id"] for r in await self.pool.fetch(_DUE_ACCOUNTS, tenant, as_of)]
        out = pb.ExpireLotsResponse()
        # Each account expires in its own transaction under its own lock; the per-account key
        # makes a retried sweep a no-op for the accounts already done.
        for account_id in accounts:
            key = f"{request.idempotency_key}/{account_id}"
            op = Operation(_method("ExpireLots"), key, request_hash(request),
                           operations.expire_lots(as_of, current_caller().key_id), _pack_expired_ids)
            outcome = await self.writer.submit(tenant, account_id, op)
            if isinstance(outcome.result, list):
                for lot in outcome.result:
                    out.lots.append(m.pack_lot(lot, await self._scale(lot.unit)))
            elif outcome.replay is not None:
                out.lots.extend(pb.ExpireLotsResponse.FromString(outcome.replay).lots)
        out.lots_expired = len(out.lots)
        await remember(self.pool, tenant, request.idempotency_key, method, digest, out, if_absent=True)
        return out

    async def ReleaseExpiredHolds(self, request: pb.ReleaseExpiredHoldsRequest,
                                  context: Any) -> pb.ReleaseExpiredHoldsResponse:
        check_key(request.idempotency_key)
        now = self._now()
        as_of = m.opt_when(request, "as_of") or now
        m.not_beyond_skew(as_of, now, self.settings.clock_skew_s, "as_of")
        tenant = current_caller().tenant_id
        method, digest = _method("ReleaseExpiredHolds"), request_hash(request)
        stored = await self._stored(tenant, request.idempotency_key, method, digest)
        if stored is not None:
            return pb.ReleaseExpiredHoldsResponse.FromString(stored)
        out = pb.ReleaseExpiredHoldsResponse()
        rows = await self.pool.fetch(_TTL_HOLDS, tenant, as_of)
        by_account: dict[str, list[str]] = {}
        for r in rows:
            by_account.setdefault(r["account_id"], []).append(r["hold_key"])
        for account_id, keys in by_account.items():
            op = Operation(_method("ReleaseExpiredHolds"), f"{request.idempotency_key}/{account_id}",
                           request_hash(request), operations.release_expired_holds(as_of, current_caller().key_id),
                           lambda ks: pb.ReleaseExpiredHoldsResponse(hold_keys=ks),
                           hold_keys=tuple(keys))
            outcome = await self.writer.submit(tenant, account_id, op)
            if outcome.replay is not None:
                out.hold_keys.extend(pb.ReleaseExpiredHoldsResponse.FromString(outcome.replay).hold_keys)
            else:
                out.hold_keys.extend(outcome.result)
        await remember(self.pool, tenant, request.idempotency_key, method, digest, out, if_absent=True)
        return out

    async def ReverseReference(self, request: pb.ReverseReferenceRequest,
                               context: Any) -> pb.ReverseReferenceResponse:
        check_key(request.idempotency_key)
        hold_key = m.ident(request.hold_key, "hold_key")
        policy = request.expired_lot_policy
        if policy not in (pb.EXPIRED_LOT_POLICY_UNSPECIFIED, pb.EXPIRE_AT_ONCE, pb.REINSTATE_WITH_GRACE):
            raise invalid("expired_lot_policy", f"unknown policy {policy}")
        grace: int | None = None
        if policy == pb.REINSTATE_WITH_GRACE:
            if not 0 < request.grace_s <= 366 * 86400:
                raise invalid("grace_s", "must be between 1 second and 366 days with REINSTATE_WITH_GRACE")
            grace = request.grace_s
        account_id, scale = await self._hold_target(hold_key)
        apply = operations.reverse_reference(hold_key, grace, m.text(request.reason, "reason"),
                                             current_caller().key_id)

        def pack(r: operations.ReversalResult) -> pb.ReverseReferenceResponse:
            return pb.ReverseReferenceResponse(
                hold_key=r.hold_key, expired_at_once=format_minor(r.expired_at_once, scale),
                reinstated=[pb.Allocation(charge_id=a.charge_id, lot_id=a.lot_id, lot_type=m.LOT_TYPE_PB[a.lot_type],
                                          amount=format_minor(amount, scale), posted=format_minor(amount, scale))
                            for a, amount in r.reinstated],
            )

        return await self._submit(account_id, _method("ReverseReference"), request, apply, pack,
                                  pb.ReverseReferenceResponse, hold_keys=(hold_key,))

    async def TransferCredits(self, request: pb.TransferCreditsRequest, context: Any) -> pb.TransferCreditsResponse:
        src = m.ident(request.from_account_id, "from_account_id")
        dst = m.ident(request.to_account_id, "to_account_id")
        scale = await self._scale(request.unit)
        amount = parse_minor(request.amount, scale, "amount")
        reason = m.text(request.reason, "reason")
        caller = current_caller()

        async def work(conn: asyncpg.Connection) -> transfers.TransferResult:
            return await transfers.transfer_credits(conn, caller.tenant_id, src, dst, request.unit, amount, reason,
                                                    caller.key_id, self._now())

        return await self._idempotent(_method("TransferCredits"), request, work,
                                      lambda r: _pack_transfer(r, scale), pb.TransferCreditsResponse)

    async def ReverseTransfer(self, request: pb.ReverseTransferRequest, context: Any) -> pb.TransferCreditsResponse:
        transfer_id = m.ident(request.transfer_id, "transfer_id")
        caller = current_caller()
        unit = await self.pool.fetchval("SELECT unit FROM transfers WHERE tenant_id = $1 AND transfer_id = $2",
                                        caller.tenant_id, transfer_id)
        if unit is None:
            raise not_found("transfer_id", f"transfer {transfer_id!r} not found")
        scale = await self._scale(unit)

        async def work(conn: asyncpg.Connection) -> transfers.TransferResult:
            return await transfers.reverse_transfer(conn, caller.tenant_id, transfer_id, caller.key_id, self._now())

        return await self._idempotent(_method("ReverseTransfer"), request, work,
                                      lambda r: _pack_transfer(r, scale), pb.TransferCreditsResponse)

    async def SetTransferLimit(self, request: pb.SetTransferLimitRequest, context: Any) -> pb.TransferLimit:
        account_id = m.ident(request.account_id, "account_id")
        scale = await self._scale(request.unit)
        limit = parse_minor(request.max_per_transfer, scale, "max_per_transfer") if request.max_per_transfer else None
        tenant = current_caller().tenant_id

        async def work(conn: asyncpg.Connection) -> int | None:
            await catalog.set_transfer_limit(conn, tenant, account_id, request.unit, limit)
            return limit

        return await self._idempotent(
            _method("SetTransferLimit"), request, work,
            lambda lim: pb.TransferLimit(account_id=account_id, unit=request.unit,
                                         max_per_transfer="" if lim is None else format_minor(lim, scale)),
            pb.TransferLimit,
        )


_GRANT_REQUEST_STATUS = {pb.PENDING_APPROVAL: approvals.PENDING, pb.APPROVED: approvals.APPROVED,
                         pb.REJECTED: approvals.REJECTED}
_GRANT_REQUEST_STATUS_PB = {v: k for k, v in _GRANT_REQUEST_STATUS.items()}
_DUE_ACCOUNTS = """
SELECT DISTINCT b.account_id FROM lot_balances b JOIN lots l ON l.tenant_id = b.tenant_id AND l.lot_id = b.lot_id
WHERE b.tenant_id = $1 AND b.available > 0 AND l.expires_at IS NOT NULL
  AND COALESCE(GREATEST(l.expires_at, (SELECT max(g.usable_until) FROM lot_grace g
                                       WHERE g.tenant_id = l.tenant_id AND g.lot_id = l.lot_id)), l.expires_at) <= $2
"""
_TTL_HOLDS = """
SELECT h.account_id, h.hold_key FROM holds h
LEFT JOIN hold_resolutions r ON r.tenant_id = h.tenant_id AND r.hold_key = h.hold_key
WHERE h.tenant_id = $1 AND r.hold_key IS NULL AND h.release_on_ttl AND h.ttl_expires_at <= $2
"""


def _pack_expired_ids(lots: list[Lot]) -> pb.ExpireLotsResponse:
    return pb.ExpireLotsResponse(lots=[pb.Lot(lot_id=lot.lot_id, account_id=lot.account_id, unit=lot.unit)
                                       for lot in lots])


def _already_granted(state: Any, fx: Any) -> Lot:
    """An interrupted approval's lot is replayed from its idempotency key; this never runs."""
    raise precondition("request_id", "the approval's lot was written but cannot be replayed")


def _pack_grant_request(row: approvals.GrantRequestRow) -> pb.GrantRequest:
    return pb.GrantRequest(
        request_id=row.request_id, status=_GRANT_REQUEST_STATUS_PB[row.status],
        grant=pb.GrantCreditsRequest.FromString(row.request), requested_by=row.requested_by,
        limit_exceeded=row.limit_exceeded, decided_by=row.decided_by, decision_reason=row.reason, lot_id=row.lot_id,
        created_at=m.ts(row.created_at), decided_at=m.ts(row.decided_at),
    )


def _pack_limits(unit: str, limits: approvals.Limits, scale: int) -> pb.SupportGrantLimits:
    return pb.SupportGrantLimits(unit=unit, max_per_grant=format_minor(limits.max_per_grant, scale),
                                 max_per_day=format_minor(limits.max_per_day, scale), is_default=limits.is_default)


def _pack_hold_scaled(hold: Hold, scale: int) -> pb.Hold:
    return m.pack_hold(hold, scale)


def _pack_account(row: catalog.AccountRow) -> pb.Account:
    return pb.Account(account_id=row.account_id, parent_account_id=row.parent_account_id or "", name=row.name,
                      created_at=m.ts(row.created_at))


def _pack_transfer(r: transfers.TransferResult, scale: int) -> pb.TransferCreditsResponse:
    return pb.TransferCreditsResponse(
        transfer_id=r.transfer_id, reversed=r.reversed,
        legs=[pb.TransferLeg(source_lot_id=leg.source_lot_id, destination_lot_id=leg.destination_lot_id,
                             amount=format_minor(leg.amount, scale)) for leg in r.legs],
    )

