"""Activities: the coordinator's calls to the ledger and invoice services (and to Temporal itself).

Each class holds one grpc.aio channel, built once per worker, and fetches the tenant's API key from
the worker's key store (never from workflow input). gRPC statuses map to Temporal errors:
rejections (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, ALREADY_EXISTS, PERMISSION_DENIED,
UNAUTHENTICATED) are non-retryable; everything else (UNAVAILABLE, DEADLINE_EXCEEDED, ...) is
retried with backoff. A step after the saga's decision (`must_succeed`) is retried whatever the
error, because it may no longer be compensated.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal
from typing import Any, Protocol, TypeVar

import grpc
from credits.invoice.v1 import invoice_pb2 as ipb
from credits.invoice.v1 import invoice_pb2_grpc
from credits.ledger.v1 import ledger_pb2 as lpb
from credits.ledger.v1 import ledger_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from coordinator import decisions, naming
from coordinator.keys import KeyStore, UnknownTenant
from coordinator.messages import (
    PENDING_GRANT,
    AllocationSpec,
    ChargeSpec,
    CreateDraftInput,
    DuePage,
    DuePeriodView,
    ExpireInput,
    GrantInput,
    HoldInput,
    HoldStatus,
    HoldView,
    InvoiceRef,
    InvoiceStatus,
    InvoiceStepInput,
    InvoiceView,
    ListDueInput,
    ListHoldsInput,
    ListInvoicesInput,
    LotBoundariesInput,
    OwnerDecision,
    OwnerRef,
    OwnerState,
    PaymentView,
    PrepareFinalizeInput,
    ReserveInput,
    RolloverPolicy,
    SettlementsInput,
    SplitInput,
    SplitResult,
    TopUpResult,
    TopUpStep,
    VoidInvoiceInput,
)
from coordinator.search_attributes import DECIDED_OUTCOMES, OUTCOME
from service_runtime.proto_time import from_timestamp, to_timestamp
from service_runtime.rates import RateVersion, in_force, units_needed

T = TypeVar("T")

REJECTIONS = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.OUT_OF_RANGE,
})
CALL_TIMEOUT_S = 10.0


def to_ts(iso: str) -> Timestamp:
    """An ISO-8601 instant of a payload (no offset: UTC) as a protobuf Timestamp."""
    value = datetime.fromisoformat(iso)
    return to_timestamp(value if value.tzinfo else value.replace(tzinfo=UTC))


def from_ts(ts: Timestamp, field: str = "timestamp") -> str:
    """A participant's Timestamp as an ISO-8601 instant in UTC ("" for an unset one)."""
    if ts.seconds == 0 and ts.nanos == 0:
        return ""
    return from_timestamp(ts, field).isoformat()


def to_error(exc: BaseException, step: str, must_succeed: bool) -> ApplicationError:
    """The Temporal error for a failed participant call."""
    if isinstance(exc, grpc.aio.AioRpcError):
        code = exc.code()
        rejected = code in REJECTIONS
        return ApplicationError(f"{step}: {code.name}: {exc.details()}", type="Rejected" if rejected else code.name,
                                non_retryable=rejected and not must_succeed)
    if isinstance(exc, UnknownTenant):
        return ApplicationError(str(exc), type="UnknownTenant", non_retryable=not must_succeed)
    return ApplicationError(f"{step}: {exc}", type=type(exc).__name__, non_retryable=False)


def first_hold(holds: list[tuple[int, int, Decimal, str]]) -> str:
    """Of an invoice's PENDING holds (created_at seconds, nanos, reserved, hold key), the key of the one
    that took credits first ("" if none is a saga hold): the oldest; among holds stamped with the same
    instant — the ledger stamps every operation of one group-commit transaction with the transaction's
    instant — the one that reserved the most, then the smaller key. Within one transaction the ledger
    applies operations in order, each reserving from what the earlier ones left, so of two holds of one
    invoice (its charges, on its account) the one applied first reserved at least as much as the other;
    where both reserved the same, either may go on (both got what they asked, or nothing was left). A
    tie broken by key alone let a run that reserved nothing go on while the run holding the customer's
    credits gave way: the invoice was finalized at full price (`creditctl chaos --cycle 40 --seed 13`)."""
    saga = [(sec, nanos, -reserved, key) for sec, nanos, reserved, key in holds if naming.parse_hold_key(key)]
    return min(saga)[3] if saga else ""


def _instant(ts: Any) -> tuple[int, int]:
    return ts.seconds, ts.nanos


def holding_since(holds: Sequence[lpb.Hold], hold_key: str) -> list[lpb.Hold]:
    """An invoice's holds that held credits at some moment since `hold_key`'s hold was created: the
    PENDING ones, and the committed or released ones created no later than it and resolved no earlier
    (one that went away between our reserve and our check may have kept credits from ours: counted, so
    its run, not ours, is first; the conservative side of a shared instant). Tombstones never held any."""
    born = next((_instant(h.created_at) for h in holds if h.hold_key == hold_key), None)
    if born is None:
        return [h for h in holds if h.status == lpb.PENDING]
    return [h for h in holds if h.hold_key == hold_key or h.status == lpb.PENDING
            or (h.status in (lpb.COMMITTED, lpb.RELEASED)
                and _instant(h.created_at) <= born <= _instant(h.resolved_at))]


class _Participant:
    def __init__(self, keys: KeyStore) -> None:
        self._keys = keys

    async def _call(self, step: str, tenant_id: str, rpc: Callable[..., Awaitable[T]], request: Any,
                    must_succeed: bool = False) -> T:
        try:
            key = await self._keys.key_for(tenant_id)
            return await rpc(request, metadata=[("x-api-key", key)], timeout=CALL_TIMEOUT_S)
        except (grpc.aio.AioRpcError, UnknownTenant) as exc:
            raise to_error(exc, step, must_succeed) from None


def _hold_view(h: lpb.Hold) -> HoldView:
    return HoldView(
        hold_key=h.hold_key, account_id=h.account_id, status=HoldStatus(lpb.HoldStatus.Name(h.status)),
        requested=h.requested, reserved=h.reserved, posted=h.posted, created_at=from_ts(h.created_at),
        allocations=[AllocationSpec(a.charge_id, a.lot_id, lpb.LotType.Name(a.lot_type), a.amount, a.posted)
                     for a in h.allocations],
    )


def _hold_line(h: lpb.Hold) -> str:
    """What a person reading the Temporal UI needs of a hold a step changed (the saga reads nothing
    back from these steps; a one-line result keeps the history and the worker's conversions small)."""
    return f"{h.hold_key}: {lpb.HoldStatus.Name(h.status)}, reserved {h.reserved}, posted {h.posted or '0'}"


def _set_rollover(req: lpb.GrantCreditsRequest, policy: RolloverPolicy) -> None:
    """Passes an allowance's rollover policy through to the lot it grants."""
    req.rollover.max_amount = policy.max_amount
    req.rollover.max_percent = policy.max_percent
    req.rollover.expires_after_s = policy.expires_after_s


class LedgerActivities:
    """Calls to credits.ledger.v1.LedgerService."""

    def __init__(self, channel: grpc.aio.Channel, keys: KeyStore) -> None:
        self._stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        self._p = _Participant(keys)

    @activity.defn(name="ledger.get_lot_boundaries")
    async def get_lot_boundaries(self, inp: LotBoundariesInput) -> list[str]:
        req = lpb.GetLotBoundariesRequest(account_id=inp.account_id, unit=inp.unit,
                                          period_start=to_ts(inp.period_start), period_end=to_ts(inp.period_end))
        resp = await self._p._call("get_lot_boundaries", inp.tenant_id, self._stub.GetLotBoundaries, req)
        return [from_ts(t) for t in resp.instants]

    @activity.defn(name="ledger.reserve_credits")
    async def reserve_credits(self, inp: ReserveInput) -> HoldView:
        req = lpb.ReserveCreditsRequest(
            idempotency_key=inp.idempotency_key, hold_key=inp.hold_key, account_id=inp.account_id, unit=inp.unit,
            up_to=True, release_on_ttl=False, reference=inp.reference,
            charges=[lpb.Charge(charge_id=c.charge_id, kind=c.kind, name=c.name, amount=c.amount,  # type: ignore[arg-type]
                                service_start=to_ts(c.service_start), service_end=to_ts(c.service_end))
                     for c in inp.charges],
        )
        view = _hold_view(await self._p._call("reserve_credits", inp.tenant_id, self._stub.ReserveCredits, req))
        await self._one_run_at_a_time(inp)
        if Decimal(view.reserved or "0") < Decimal(view.requested or "0"):
            view.convertible, view.notes = await self._conversions(inp)
        return view

    async def _conversions(self, inp: ReserveInput) -> tuple[list[str], list[str]]:
        """Charges are left unpaid in `inp.unit`: the credit units with a published rate into it, and
        a note for each unit of which the account holds credit that no rate lets pay."""
        rates = await self._p._call("list_rates", inp.tenant_id, self._stub.ListRates,
                                    lpb.ListRatesRequest(currency=inp.unit))
        convertible = sorted({r.unit for r in rates.rates})
        balance = await self._p._call("get_balance", inp.tenant_id, self._stub.GetBalance,
                                      lpb.GetBalanceRequest(account_id=inp.account_id))
        idle = [b for b in balance.totals if b.unit not in (inp.unit, *inp.skip_units, *convertible)
                and Decimal(b.available or "0") > 0]
        return convertible, [f"no rate from {b.unit} to {inp.unit}: {b.available} {b.unit} not applied" for b in idle]

    async def _scale(self, tenant_id: str, unit: str, step: str) -> int:
        units = await self._p._call("list_units", tenant_id, self._stub.ListUnits, lpb.ListUnitsRequest())
        scale = next((u.scale for u in units.units if u.code == unit), None)
        if scale is None:
            raise ApplicationError(f"{step}: the ledger has no unit {unit!r}; DefineUnit it", type="Rejected",
                                   non_retryable=True)
        return scale

    async def _one_run_at_a_time(self, inp: ReserveInput) -> None:
        """One invoice, one finalization run holding credits for it: after each reserve of a run, the
        run whose oldest PENDING hold of the invoice is the oldest goes on; any other gives way with a
        rejection (its saga compensates, releasing what it reserved). Two runs of one invoice can meet
        when a billing cycle finalizes it inline while the front door (or an operator) finalizes it
        too, or while a lost run's hold waits for the in-doubt resolver: without this, the run that
        reserved second could find the credits held by the first, prepare first, and finalize the
        invoice with fewer credits than the customer has. The ledger orders holds per account, so both
        runs see the same oldest hold (`first_hold`) and at most one goes on. A hold of another run
        that was resolved after ours was created still counts (`holding_since`): it may have held the
        credits when ours was placed, so ours may have got less."""
        ours = naming.parse_hold_key(inp.hold_key)
        if ours is None:
            return
        invoice_id, run_id = ours
        listed = await self._p._call("reserve_credits", inp.tenant_id, self._stub.ListHolds, lpb.ListHoldsRequest(
            hold_key_prefix=naming.invoice_holds_prefix(invoice_id), page_size=500))
        first = first_hold([(h.created_at.seconds, h.created_at.nanos, Decimal(h.reserved or "0"), h.hold_key)
                            for h in holding_since(listed.holds, inp.hold_key)])
        first_run = naming.parse_hold_key(first) if first else None
        if first_run is not None and first_run[1] != run_id:
            raise ApplicationError(
                f"reserve_credits: FAILED_PRECONDITION: invoice {invoice_id} is being finalized by another run, "
                f"whose hold {first} holds credits for it (a lost run's is settled by the in-doubt resolver): "
                "this run gives way", type="Rejected", non_retryable=True)

    @activity.defn(name="ledger.reserve_converted")
    async def reserve_converted(self, inp: ReserveInput) -> HoldView:
        """ReserveCredits in credit unit `inp.unit` for what is left of currency charges: per charge,
        ceil(left / rate) units at the rate in force at its service start (service_runtime.rates).
        Allocations carry the rate and its version; charges with no rate in force get a note."""
        listed = await self._p._call("list_rates", inp.tenant_id, self._stub.ListRates,
                                     lpb.ListRatesRequest(unit=inp.unit, currency=inp.currency))
        versions = [RateVersion(r.unit, r.currency, int(r.version), Decimal(r.rate),
                                from_timestamp(r.effective_at, "effective_at"))
                    for r in listed.rates]
        scale = await self._scale(inp.tenant_id, inp.unit, "reserve_converted")
        priced: dict[str, RateVersion] = {}
        charges: list[lpb.Charge] = []
        notes: list[str] = []
        for c in inp.charges:
            rate = in_force(versions, datetime.fromisoformat(c.service_start))
            if rate is None:
                notes.append(f"no rate from {inp.unit} to {inp.currency} in force at {c.service_start} "
                             f"({c.charge_id})")
                continue
            priced[c.charge_id] = rate
            charges.append(lpb.Charge(charge_id=c.charge_id, kind=c.kind, name=c.name,  # type: ignore[arg-type]
                                      amount=str(units_needed(Decimal(c.amount), rate.rate, scale)),
                                      service_start=to_ts(c.service_start), service_end=to_ts(c.service_end)))
        req = lpb.ReserveCreditsRequest(idempotency_key=inp.idempotency_key, hold_key=inp.hold_key,
                                        account_id=inp.account_id, unit=inp.unit, up_to=True, release_on_ttl=False,
                                        reference=inp.reference, charges=charges)
        view = _hold_view(await self._p._call("reserve_converted", inp.tenant_id, self._stub.ReserveCredits, req))
        await self._one_run_at_a_time(inp)
        for a in view.allocations:
            a.unit, a.rate, a.rate_version = inp.unit, str(priced[a.charge_id].rate), priced[a.charge_id].version
        view.notes = notes
        return view

    @activity.defn(name="ledger.reserve_units")
    async def reserve_units(self, inp: ReserveInput) -> HoldView:
        """ReserveCredits in a usage unit: each unit charge's quantity, down to whole steps of the
        unit's scale (a lot covers 1,000 compute minutes, not 999.5 of 999.7 used)."""
        step = Decimal(1).scaleb(-await self._scale(inp.tenant_id, inp.unit, "reserve_units"))
        charges = [(c, Decimal(c.amount).quantize(step, rounding=ROUND_FLOOR)) for c in inp.charges]
        req = lpb.ReserveCreditsRequest(
            idempotency_key=inp.idempotency_key, hold_key=inp.hold_key, account_id=inp.account_id, unit=inp.unit,
            up_to=True, release_on_ttl=False, reference=inp.reference,
            charges=[lpb.Charge(charge_id=c.charge_id, kind=c.kind, name=c.name, amount=str(q),  # type: ignore[arg-type]
                                service_start=to_ts(c.service_start), service_end=to_ts(c.service_end))
                     for c, q in charges if q > 0],
        )
        view = _hold_view(await self._p._call("reserve_units", inp.tenant_id, self._stub.ReserveCredits, req))
        await self._one_run_at_a_time(inp)
        for a in view.allocations:
            a.unit = inp.unit
        return view

    @activity.defn(name="ledger.commit_hold")
    async def commit_hold(self, inp: HoldInput) -> str:
        req = lpb.CommitHoldRequest(idempotency_key=inp.idempotency_key, hold_key=inp.hold_key)
        return _hold_line(await self._p._call("commit_hold", inp.tenant_id, self._stub.CommitHold, req,
                                              inp.must_succeed))

    @activity.defn(name="ledger.release_hold")
    async def release_hold(self, inp: HoldInput) -> str:
        req = lpb.ReleaseHoldRequest(idempotency_key=inp.idempotency_key, hold_key=inp.hold_key,
                                     account_id=inp.account_id, reason=inp.reason)
        return _hold_line(await self._p._call("release_hold", inp.tenant_id, self._stub.ReleaseHold, req,
                                              inp.must_succeed))

    @activity.defn(name="ledger.reverse_hold")
    async def reverse_hold(self, inp: HoldInput) -> list[AllocationSpec]:
        """Gives a committed hold's posted credits back to their original lots (ReverseHold)."""
        req = lpb.ReverseHoldRequest(idempotency_key=inp.idempotency_key, hold_key=inp.hold_key, reason=inp.reason)
        resp = await self._p._call("reverse_hold", inp.tenant_id, self._stub.ReverseHold, req, inp.must_succeed)
        return [AllocationSpec(a.charge_id, a.lot_id, lpb.LotType.Name(a.lot_type), a.amount, a.posted)
                for a in resp.reinstated]

    @activity.defn(name="ledger.list_holds")
    async def list_holds(self, inp: ListHoldsInput) -> list[HoldView]:
        out: list[HoldView] = []
        token = ""
        while True:
            req = lpb.ListHoldsRequest(status=lpb.HoldStatus.Value(inp.status), hold_key_prefix=inp.hold_key_prefix,
                                       page_size=500, page_token=token)
            if inp.created_before:
                req.created_before.CopyFrom(to_ts(inp.created_before))
            resp = await self._p._call("list_holds", inp.tenant_id, self._stub.ListHolds, req)
            out.extend(_hold_view(h) for h in resp.holds)
            token = resp.next_page_token
            if not token:
                return out

    @activity.defn(name="ledger.expire_lots")
    async def expire_lots(self, inp: ExpireInput) -> int:
        req = lpb.ExpireLotsRequest(idempotency_key=inp.idempotency_key, as_of=to_ts(inp.as_of))
        resp = await self._p._call("expire_lots", inp.tenant_id, self._stub.ExpireLots, req)
        return int(resp.lots_expired)

    @activity.defn(name="ledger.release_expired_holds")
    async def release_expired_holds(self, inp: ExpireInput) -> int:
        """Releases the tenant's real-time holds (`release_on_ttl`: gateway leases, reserves) past their TTL."""
        req = lpb.ReleaseExpiredHoldsRequest(idempotency_key=inp.idempotency_key, as_of=to_ts(inp.as_of))
        resp = await self._p._call("release_expired_holds", inp.tenant_id, self._stub.ReleaseExpiredHolds, req)
        return len(resp.hold_keys)

    @activity.defn(name="ledger.record_settlements")
    async def record_settlements(self, inp: SettlementsInput) -> int:
        """Records each account's invoiced_through on the ledger (monotonic there; keyed by account and instant)."""
        for account_id, through in inp.settlements:
            req = lpb.RecordSettlementRequest(idempotency_key=naming.settlement_key(inp.tenant_id, account_id, through),
                                              account_id=account_id, invoiced_through=to_ts(through))
            await self._p._call("record_settlement", inp.tenant_id, self._stub.RecordSettlement, req)
        return len(inp.settlements)

    @activity.defn(name="ledger.grant_credits")
    async def grant_credits(self, inp: GrantInput) -> str:
        req = lpb.GrantCreditsRequest(
            idempotency_key=inp.idempotency_key, account_id=inp.account_id, type=lpb.LotType.Value(inp.lot_type),
            unit=inp.unit, amount=inp.amount, incident_id=inp.incident_id, reason_code=inp.reason,
            source=inp.source, campaign_id=inp.campaign_id, priority=inp.priority, cost_basis=inp.cost_basis,
        )
        if inp.effective_at:
            req.effective_at.CopyFrom(to_ts(inp.effective_at))
        if inp.expires_at:
            req.expires_at.CopyFrom(to_ts(inp.expires_at))
        if inp.rollover is not None:
            _set_rollover(req, inp.rollover)
        lot = await self._p._call("grant_credits", inp.tenant_id, self._stub.GrantCredits, req)
        # Above the key's limits or the tenant's approval threshold: a request for a second person.
        return str(lot.lot_id) or f"{PENDING_GRANT}{lot.grant_request.request_id}"


def _invoice_view(inv: ipb.Invoice) -> InvoiceView:
    return InvoiceView(
        invoice_id=inv.invoice_id, customer_id=inv.customer_id, ledger_account_id=inv.ledger_account_id,
        currency=inv.currency, status=InvoiceStatus(ipb.InvoiceStatus.Name(inv.status)),
        period_start=from_ts(inv.period_start), period_end=from_ts(inv.period_end), subtotal=inv.subtotal,
        credits_applied=inv.credits_applied, amount_due=inv.amount_due, number=inv.number,
        prepare_key=inv.prepare_key, usage_units=sorted({i.unit for i in inv.line_items if i.unit}),
    )


def _application(a: AllocationSpec) -> ipb.CreditApplication:
    """A hold allocation as a credit application: an amount of the currency, or units of a usage unit."""
    if a.unit:
        return ipb.CreditApplication(charge_id=a.charge_id, lot_id=a.lot_id, lot_type=a.lot_type, unit=a.unit,
                                     units=a.amount, rate=a.rate, rate_version=a.rate_version)
    return ipb.CreditApplication(charge_id=a.charge_id, lot_id=a.lot_id, lot_type=a.lot_type, amount=a.amount)


def _invoice_line(inv: ipb.Invoice) -> str:
    """One line for the Temporal UI, like `_hold_line`."""
    return (f"{inv.invoice_id}: {ipb.InvoiceStatus.Name(inv.status)}, subtotal {inv.subtotal}, "
            f"credits {inv.credits_applied}, due {inv.amount_due}")


class InvoiceActivities:
    """Calls to credits.invoice.v1.InvoiceService."""

    def __init__(self, channel: grpc.aio.Channel, keys: KeyStore) -> None:
        self._stub = invoice_pb2_grpc.InvoiceServiceStub(channel)
        self._p = _Participant(keys)

    @activity.defn(name="invoice.get_invoice")
    async def get_invoice(self, inp: InvoiceRef) -> InvoiceView:
        req = ipb.GetInvoiceRequest(invoice_id=inp.invoice_id)
        return _invoice_view(await self._p._call("get_invoice", inp.tenant_id, self._stub.GetInvoice, req))

    @activity.defn(name="invoice.split_draft")
    async def split_draft(self, inp: SplitInput) -> SplitResult:
        req = ipb.SplitDraftRequest(invoice_id=inp.invoice_id, split_at=[to_ts(s) for s in inp.split_at],
                                    unit_applications=[_application(a) for a in inp.unit_applications])
        resp = await self._p._call("split_draft", inp.tenant_id, self._stub.SplitDraft, req)
        return SplitResult(
            charges=[ChargeSpec(c.charge_id, int(c.kind), c.name, c.amount, from_ts(c.service_start),
                                from_ts(c.service_end)) for c in resp.charges],
            draft_digest=resp.draft_digest,
            unit_charges=[ChargeSpec(c.charge_id, int(c.kind), c.name, c.quantity, from_ts(c.service_start),
                                     from_ts(c.service_end), c.unit) for c in resp.unit_charges],
        )

    @activity.defn(name="invoice.prepare_finalize")
    async def prepare_finalize(self, inp: PrepareFinalizeInput) -> str:
        req = ipb.PrepareFinalizeRequest(
            idempotency_key=inp.idempotency_key, invoice_id=inp.invoice_id, draft_digest=inp.draft_digest,
            split_at=[to_ts(s) for s in inp.split_at],
            applications=[_application(a) for a in inp.applications], credit_notes=inp.credit_notes,
        )
        return _invoice_line(await self._p._call("prepare_finalize", inp.tenant_id, self._stub.PrepareFinalize, req))

    @activity.defn(name="invoice.commit_finalize")
    async def commit_finalize(self, inp: InvoiceStepInput) -> InvoiceView:
        req = ipb.CommitFinalizeRequest(idempotency_key=inp.idempotency_key, invoice_id=inp.invoice_id,
                                        prepare_key=inp.prepare_key)
        return _invoice_view(await self._p._call("commit_finalize", inp.tenant_id, self._stub.CommitFinalize, req,
                                                 inp.must_succeed))

    @activity.defn(name="invoice.abort_finalize")
    async def abort_finalize(self, inp: InvoiceStepInput) -> str:
        req = ipb.AbortFinalizeRequest(idempotency_key=inp.idempotency_key, invoice_id=inp.invoice_id,
                                       prepare_key=inp.prepare_key, reason=inp.reason)
        return _invoice_line(await self._p._call("abort_finalize", inp.tenant_id, self._stub.AbortFinalize, req,
                                                 inp.must_succeed))

    @activity.defn(name="invoice.prepare_void")
    async def prepare_void(self, inp: InvoiceStepInput) -> InvoiceView:
        req = ipb.PrepareVoidRequest(idempotency_key=inp.idempotency_key, invoice_id=inp.invoice_id,
                                     reason=inp.reason)
        return _invoice_view(await self._p._call("prepare_void", inp.tenant_id, self._stub.PrepareVoid, req))

    @activity.defn(name="invoice.commit_void")
    async def commit_void(self, inp: InvoiceStepInput) -> InvoiceView:
        req = ipb.CommitVoidRequest(idempotency_key=inp.idempotency_key, invoice_id=inp.invoice_id)
        return _invoice_view(await self._p._call("commit_void", inp.tenant_id, self._stub.CommitVoid, req,
                                                 inp.must_succeed))

    @activity.defn(name="invoice.abort_void")
    async def abort_void(self, inp: InvoiceStepInput) -> InvoiceView:
        req = ipb.AbortVoidRequest(idempotency_key=inp.idempotency_key, invoice_id=inp.invoice_id)
        return _invoice_view(await self._p._call("abort_void", inp.tenant_id, self._stub.AbortVoid, req,
                                                 inp.must_succeed))

    @activity.defn(name="invoice.create_draft")
    async def create_draft(self, inp: CreateDraftInput) -> InvoiceView:
        req = ipb.CreateDraftRequest(idempotency_key=inp.idempotency_key, customer_id=inp.customer_id,
                                     period_start=to_ts(inp.period_start), subscription_id=inp.subscription_id)
        return _invoice_view(await self._p._call("create_draft", inp.tenant_id, self._stub.CreateDraft, req))

    @activity.defn(name="invoice.list_settlements")
    async def list_settlements(self, inp: SettlementsInput) -> SettlementsInput:
        """Every ledger account the tenant bills by invoices, with up to when its usage is final."""
        out = SettlementsInput(inp.tenant_id)
        token = ""
        while True:
            req = ipb.ListSettlementsRequest(page_size=1000, page_token=token)
            resp = await self._p._call("list_settlements", inp.tenant_id, self._stub.ListSettlements, req)
            out.settlements.extend((s.ledger_account_id, from_ts(s.invoiced_through)) for s in resp.settlements)
            token = resp.next_page_token
            if not token:
                return out

    @activity.defn(name="invoice.list_due_subscriptions")
    async def list_due_subscriptions(self, inp: ListDueInput) -> list[DuePeriodView]:
        req = ipb.ListDueSubscriptionsRequest(as_of=to_ts(inp.as_of), page_size=inp.page_size)
        resp = await self._p._call("list_due_subscriptions", inp.tenant_id, self._stub.ListDueSubscriptions, req)
        return [DuePeriodView(p.customer_id, from_ts(p.period_start), from_ts(p.period_end), p.invoice_id,
                              InvoiceStatus(ipb.InvoiceStatus.Name(p.status)), p.subscription_id) for p in resp.periods]

    @activity.defn(name="invoice.list_due_periods")
    async def list_due_periods(self, inp: ListDueInput) -> DuePage:
        """One page of due periods after `inp.page_token` (BillingCycle pages through them)."""
        req = ipb.ListDueSubscriptionsRequest(as_of=to_ts(inp.as_of), page_size=inp.page_size,
                                              page_token=inp.page_token)
        resp = await self._p._call("list_due_subscriptions", inp.tenant_id, self._stub.ListDueSubscriptions, req)
        return DuePage([DuePeriodView(p.customer_id, from_ts(p.period_start), from_ts(p.period_end), p.invoice_id,
                                      InvoiceStatus(ipb.InvoiceStatus.Name(p.status)), p.subscription_id)
                        for p in resp.periods],
                       resp.next_page_token)

    @activity.defn(name="invoice.list_invoices")
    async def list_invoices(self, inp: ListInvoicesInput) -> list[InvoiceView]:
        out: list[InvoiceView] = []
        token = ""
        while True:
            req = ipb.ListInvoicesRequest(statuses=[ipb.InvoiceStatus.Value(s) for s in inp.statuses],
                                          prepared_before=to_ts(inp.prepared_before), page_size=500,
                                          page_token=token)
            resp = await self._p._call("list_invoices", inp.tenant_id, self._stub.ListInvoices, req)
            out.extend(_invoice_view(i) for i in resp.invoices)
            token = resp.next_page_token
            if not token:
                return out


class CoordinatorActivities:
    """Reads of the coordinator's own durable record (Temporal) and the tenant list."""

    def __init__(self, client: Client, keys: KeyStore) -> None:
        self._client = client
        self._keys = keys

    @activity.defn(name="coordinator.list_tenants")
    async def list_tenants(self) -> list[str]:
        return await self._keys.tenants()

    @activity.defn(name="coordinator.owner_decision")
    async def owner_decision(self, ref: OwnerRef) -> OwnerDecision:
        """Did the workflow that owns an in-doubt hold/invoice record its commit decision?
        (coordinator.decisions: where each kind of owner records it.)"""
        handle = self._client.get_workflow_handle(ref.workflow_id, run_id=ref.run_id or None)
        try:
            desc = await handle.describe()
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            owner = await decisions.workflow_of_run(self._client, ref.run_id) if ref.run_id else None
            if owner is not None and owner != ref.workflow_id and naming.is_cycle_workflow(owner):
                return await self._cycle_decision(OwnerRef(owner, ref.run_id, ref.invoice_id))
            return OwnerDecision(OwnerState.UNKNOWN, "no such workflow run (retention may have removed it)")
        if desc.status == WorkflowExecutionStatus.RUNNING:
            return OwnerDecision(OwnerState.RUNNING, "the owner is still running and will resolve it", desc.run_id)
        outcome = desc.typed_search_attributes.get(OUTCOME)
        if outcome in DECIDED_OUTCOMES:
            reason = await self._void_reason(ref.workflow_id, desc.run_id)
            return OwnerDecision(OwnerState.COMMIT, f"decision recorded (outcome={outcome})", desc.run_id, reason)
        status = desc.status.name if desc.status else "?"
        return OwnerDecision(OwnerState.ABANDON, f"closed {status} without a decision (outcome={outcome})",
                             desc.run_id)

    async def _cycle_decision(self, ref: OwnerRef) -> OwnerDecision:
        """A finalization a billing cycle's run ran inline: the run's history holds its decision."""
        try:
            desc = await self._client.get_workflow_handle(ref.workflow_id, run_id=ref.run_id).describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return OwnerDecision(OwnerState.UNKNOWN, "no such workflow run (retention may have removed it)")
            raise
        if desc.status == WorkflowExecutionStatus.RUNNING:
            return OwnerDecision(OwnerState.RUNNING, "the billing cycle is still running and will resolve it",
                                 desc.run_id, workflow_id=ref.workflow_id)
        if ref.invoice_id in await decisions.committed_in_run(self._client, ref.workflow_id, ref.run_id):
            return OwnerDecision(OwnerState.COMMIT, f"decision recorded (the cycle scheduled the commit of "
                                 f"{ref.invoice_id}'s hold)", desc.run_id, workflow_id=ref.workflow_id)
        status = desc.status.name if desc.status else "?"
        return OwnerDecision(OwnerState.ABANDON, f"the billing cycle's run closed {status} without a decision "
                             f"for {ref.invoice_id}", desc.run_id, workflow_id=ref.workflow_id)

    async def _void_reason(self, workflow_id: str, run_id: str) -> str:
        """The reason a void workflow was started with: its reversal's idempotent payload includes it."""
        if not naming.is_void_workflow(workflow_id):
            return ""
        handle = self._client.get_workflow_handle(workflow_id, run_id=run_id)
        async for event in handle.fetch_history_events():
            payloads = event.workflow_execution_started_event_attributes.input.payloads
            [inp] = await self._client.data_converter.decode(payloads, [VoidInvoiceInput])
            return str(inp.reason)
        return ""



class TopUpParticipant(Protocol):
    """The ledger's side of an auto top-up (ledger_service/topups/steps.py): the top-up row, the payment
    provider behind it and the grant live with the ledger's database, so the saga's activities run in the
    ledger process and call it in-process (the coordinator's other activities call a service over gRPC)."""

    async def charge(self, step: TopUpStep) -> PaymentView: ...
    async def grant(self, step: TopUpStep) -> TopUpResult: ...
    async def decline(self, step: TopUpStep) -> TopUpResult: ...


class TopUpActivities:
    """The auto top-up saga's steps. Each is repeatable: `charge` asks the provider for the charge made
    under the top-up id before making it (same idempotency key); `grant` writes under `charge:<id>`;
    `decline` settles a row once. A charge with no answer raises (Temporal asks again, with backoff)."""

    def __init__(self, participant: TopUpParticipant) -> None:
        self._participant = participant

    @activity.defn(name="topups.charge")
    async def charge_topup(self, step: TopUpStep) -> PaymentView:
        return await self._participant.charge(step)

    @activity.defn(name="topups.grant")
    async def grant_topup(self, step: TopUpStep) -> TopUpResult:
        return await self._participant.grant(step)

    @activity.defn(name="topups.decline")
    async def decline_topup(self, step: TopUpStep) -> TopUpResult:
        return await self._participant.decline(step)

    def all(self) -> list[Any]:
        return [self.charge_topup, self.grant_topup, self.decline_topup]
