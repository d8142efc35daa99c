"""Domain → protobuf for the ledger's responses: amounts in their unit's scale, timestamps via proto_time."""

from __future__ import annotations

from datetime import datetime
from typing import TypeVar

import grpc
from credits.ledger.v1 import ledger_pb2 as pb
from google.protobuf.timestamp_pb2 import Timestamp

from ledger_service.api.mapping import CHARGE_KINDS, GRANT_REQUEST_STATUSES, HOLD_STATUSES, LOT_TYPES, SORT_KEYS
from ledger_service.domain.grants import Limits
from ledger_service.domain.journal import BUCKETS, Buckets, Entry
from ledger_service.domain.model import Allocation, Hold, HoldStatus, Lot, RolloverPolicy
from ledger_service.domain.policy import Policy
from ledger_service.domain.settlement import Settlement, pending_expiry
from ledger_service.domain.statements import Line, LotInfo, Movement
from ledger_service.domain.transfers import TransferResult
from ledger_service.operations.balance_watch import Kind
from ledger_service.operations.balance_watch import Message as WatchMessage
from ledger_service.operations.grants import VoidResult
from ledger_service.operations.reversals_and_transfers import ReversalResult
from ledger_service.operations.statements import StatementView
from ledger_service.storage.catalog import AccountRow, PolicyRow
from ledger_service.storage.grant_approvals import GrantRequestRow
from ledger_service.storage.portal_links import Revocation
from ledger_service.storage.reads import BalanceView, Explanation, Verification
from service_runtime.amounts import format_minor
from service_runtime.proto_time import to_timestamp
from service_runtime.rates import RateVersion
from service_runtime.rejections import Rejection

R = TypeVar("R", pb.ReverseHoldResponse, pb.ReverseReferenceResponse)

LOT_TYPE_PB = {v: k for k, v in LOT_TYPES.items()}
CHARGE_KIND_PB = {v: k for k, v in CHARGE_KINDS.items()}
HOLD_STATUS_PB = {v: k for k, v in HOLD_STATUSES.items()}
GRANT_REQUEST_STATUS_PB = {v: k for k, v in GRANT_REQUEST_STATUSES.items()}
SORT_KEY_PB = {v: k for k, v in SORT_KEYS.items()}


def ts(value: datetime | None) -> Timestamp | None:
    return None if value is None else to_timestamp(value)


# --- accounts, units, policy ----------------------------------------------------------------------

def account(row: AccountRow) -> pb.Account:
    return pb.Account(account_id=row.account_id, parent_account_id=row.parent_account_id or "", name=row.name,
                      created_at=ts(row.created_at))


def unit(code_and_scale: tuple[str, int]) -> pb.Unit:
    return pb.Unit(code=code_and_scale[0], scale=code_and_scale[1])


def units(found: list[tuple[str, int]]) -> pb.ListUnitsResponse:
    return pb.ListUnitsResponse(units=[unit(u) for u in found])


def rate(published: tuple[RateVersion, datetime]) -> pb.Rate:
    r, created_at = published
    return pb.Rate(unit=r.unit, currency=r.currency, rate=format(r.rate.normalize(), "f"),
                   effective_at=ts(r.effective_at), version=r.version, created_at=ts(created_at))


def rates(found: list[tuple[RateVersion, datetime]]) -> pb.ListRatesResponse:
    return pb.ListRatesResponse(rates=[rate(r) for r in found])


def policy(p: Policy, created_at: datetime | None = None) -> pb.ConsumptionPolicy:
    return pb.ConsumptionPolicy(
        account_id=p.account_id, version=p.version, sort_keys=[SORT_KEY_PB[k] for k in p.sort_keys],
        type_order=[LOT_TYPE_PB[t] for t in p.type_order], created_at=ts(created_at),
    )


def policy_row(row: PolicyRow) -> pb.ConsumptionPolicy:
    return policy(row.policy, row.created_at)


# --- lots and grants ------------------------------------------------------------------------------

def rollover(policy: RolloverPolicy | None, scale: int) -> pb.RolloverPolicy | None:
    if policy is None:
        return None
    cap = format_minor(policy.max_amount, scale) if policy.max_amount is not None else ""
    return pb.RolloverPolicy(max_amount=cap, max_percent=policy.max_percent, expires_after_s=policy.expires_after_s)


def lot(x: Lot, scale: int, at: datetime | None = None) -> pb.Lot:
    """The lot; read at `at`, unused credit past its usable window shows as pending_expiry, not available."""
    pending = pending_expiry(x, x.available, at) if at is not None else 0
    b = pb.LotBalance(**{k: format_minor(getattr(x, k), scale) for k in BUCKETS})
    b.available = format_minor(x.available - pending, scale)
    b.pending_expiry = format_minor(pending, scale)
    msg = pb.Lot(
        lot_id=x.lot_id, account_id=x.account_id, type=LOT_TYPE_PB[x.lot_type], unit=x.unit,
        amount=format_minor(x.amount, scale), priority=x.priority, effective_at=ts(x.effective_at),
        expires_at=ts(x.expires_at), cost_basis=str(x.cost_basis.normalize() if x.cost_basis else 0),
        scope=pb.Scope(kinds=sorted(CHARGE_KIND_PB[k] for k in x.scope.kinds), names=sorted(x.scope.names)),
        source=x.source, reason_code=x.reason_code, campaign_id=x.campaign_id, incident_id=x.incident_id,
        granted_by=x.granted_by, created_at=ts(x.created_at), balance=b, origin_lot_id=x.origin_lot_id,
        usable_until=ts(x.usable_until), rollover=rollover(x.rollover, scale),
    )
    if x.closed_at is not None and x.voided:
        msg.voided_at.CopyFrom(to_timestamp(x.closed_at))
    return msg


def grant_request(row: GrantRequestRow) -> pb.GrantRequest:
    return pb.GrantRequest(
        request_id=row.request_id, status=GRANT_REQUEST_STATUS_PB[row.status],
        grant=pb.GrantCreditsRequest.FromString(row.request), requested_by=row.requested_by,
        limit_exceeded=row.limit_exceeded.value, decided_by=row.decided_by, decision_reason=row.reason,
        lot_id=row.lot_id, created_at=ts(row.created_at), decided_at=ts(row.decided_at),
        requested_by_owner=row.requester, decided_by_owner=row.decided_by_owner or _key_principal(row.decided_by),
    )


def _key_principal(key_id: str) -> str:
    return f"key:{key_id}" if key_id else ""


def pending_lot(x: Lot, scale: int, row: GrantRequestRow) -> pb.Lot:
    """GrantCredits' answer when no lot was written: the grant as asked, and its request awaiting approval."""
    return pb.Lot(account_id=x.account_id, type=LOT_TYPE_PB[x.lot_type], unit=x.unit,
                  amount=format_minor(x.amount, scale), reason_code=x.reason_code, incident_id=x.incident_id,
                  grant_request=grant_request(row))


def support_limits(unit_code: str, limits: Limits, scale: int) -> pb.SupportGrantLimits:
    threshold = "" if limits.approval_threshold is None else format_minor(limits.approval_threshold, scale)
    return pb.SupportGrantLimits(unit=unit_code, max_per_grant=format_minor(limits.max_per_grant, scale),
                                 max_per_day=format_minor(limits.max_per_day, scale), is_default=limits.is_default,
                                 approval_threshold=threshold)


def void_result(r: VoidResult, scale: int) -> pb.VoidGrantResponse:
    return pb.VoidGrantResponse(lot=lot(r.lot, scale), voided_amount=format_minor(r.voided, scale))


# --- reads ----------------------------------------------------------------------------------------

def _buckets(msg: pb.BalanceBucket, b: Buckets, upcoming: int, pending: int, scale: int) -> None:
    for bucket in BUCKETS:
        setattr(msg, bucket, format_minor(getattr(b, bucket), scale))
    msg.upcoming = format_minor(upcoming, scale)
    msg.pending_expiry = format_minor(pending, scale)


def balance(view: BalanceView, scales: dict[str, int]) -> pb.Balance:
    out = pb.Balance(account_id=view.account_id, as_of=ts(view.as_of))
    for rows, target in ((view.totals, out.totals), (view.by_type, out.by_type)):
        for row in rows:
            bucket = target.add(unit=row.unit, type=LOT_TYPE_PB[row.lot_type] if row.lot_type else 0)
            _buckets(bucket, row.buckets, row.upcoming, row.pending_expiry, scales[row.unit])
    return out


def entry(e: Entry, scale: int) -> pb.Entry:
    return pb.Entry(
        entry_id=e.entry_id, account_id=e.account_id, lot_id=e.lot_id, kind=pb.EntryKind.Value(e.kind.value),
        amount=format_minor(e.amount, scale), unit=e.unit, effective_at=ts(e.effective_at),
        recorded_at=ts(e.recorded_at), actor=e.actor, reason=e.reason, reference=e.reference, hold_key=e.hold_key,
        policy_version=e.policy_version,
    )


def boundaries(instants: list[datetime]) -> pb.GetLotBoundariesResponse:
    return pb.GetLotBoundariesResponse(instants=[to_timestamp(t) for t in instants])


def verification(v: Verification) -> pb.VerifyJournalResponse:
    return pb.VerifyJournalResponse(ok=not v.violations, entries=v.entries, lots=v.lots, violations=v.violations)


# --- holds ----------------------------------------------------------------------------------------

def _allocation(a: Allocation, posted: int, scale: int, version: int) -> pb.Allocation:
    return pb.Allocation(charge_id=a.charge_id, lot_id=a.lot_id, amount=format_minor(a.amount, scale),
                         posted=format_minor(posted, scale), policy_version=version,
                         lot_type=LOT_TYPE_PB[a.lot_type])


def hold(h: Hold, scale: int) -> pb.Hold:
    live = h.status is not HoldStatus.TOMBSTONE
    return pb.Hold(
        hold_key=h.hold_key, account_id=h.account_id, unit=h.unit, status=HOLD_STATUS_PB[h.status],
        requested=format_minor(h.requested, scale), reserved=format_minor(h.reserved, scale),
        posted=format_minor(h.posted, scale), released=format_minor(h.released, scale),
        allocations=[_allocation(a, h.postings.get(a.position, 0), scale, h.policy_version) for a in h.allocations],
        created_at=_batch_ts(h.created_at) if live else None,
        ttl_expires_at=_batch_ts(h.ttl_expires_at) if live else None,
        resolved_at=_batch_ts(h.resolved_at), reference=h.reference, policy_version=h.policy_version,
        release_on_ttl=h.release_on_ttl,
    )


_last_ts: tuple[datetime | None, Timestamp | None] = (None, None)


def _batch_ts(value: datetime | None) -> Timestamp | None:
    """`ts`, remembering the last instant: the holds of one group-commit batch share `now` (a debit's
    created, expiry and resolved instants too), and each pb.Hold field copies the Timestamp it is given."""
    global _last_ts
    if value is None:
        return None
    last, stamp = _last_ts
    if stamp is None or value != last:
        stamp = to_timestamp(value)
        _last_ts = (value, stamp)
    return stamp


def batch(results: list[pb.Hold | Exception]) -> pb.BatchDebitCreditsResponse:
    """One result per debit in request order: its hold, or its error (INTERNAL for a bug)."""
    out = pb.BatchDebitCreditsResponse()
    for got in results:
        result = out.results.add()
        if isinstance(got, Rejection):
            result.error.code = got.status.value[0]
            result.error.message = got.message
        elif isinstance(got, Exception):
            result.error.code = grpc.StatusCode.INTERNAL.value[0]
            result.error.message = "internal error"
        else:
            result.hold.CopyFrom(got)
    return out


def _varint(n: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int (a length prefix of hand-packed fields)."""
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SHORT = [_varint(n) for n in range(128)]
_ERROR_OTHER = pb.RpcError(code=grpc.StatusCode.INTERNAL.value[0], message="internal error").SerializeToString()


class DebitWire:
    """A batched debit's Hold as bytes (operations/batch_debits.py): `hold` without its key, serialized
    once per distinct debit; each debit's Hold is its hold_key field (field 1: serialized first, so the
    bytes equal `hold(h).SerializeToString()`; tests/ledger/test_batch_debits.py) + those bytes."""

    def tail(self, h: Hold, scale: int) -> bytes:
        assert not h.hold_key
        return hold(h, scale).SerializeToString()

    def keyed(self, hold_key: str, tail: bytes) -> bytes:
        key = hold_key.encode()
        n = len(key)
        return b"\n" + (_SHORT[n] if n < 128 else _varint(n)) + key + tail


def _field(tag: bytes, payload: bytes) -> bytes:
    n = len(payload)
    if n < 128:
        return tag + _SHORT[n] + payload
    return tag + (bytes((n & 0x7F | 0x80, n >> 7)) if n < 16384 else _varint(n)) + payload


def batch_wire(answers: list[bytes | Exception]) -> bytes:
    """The serialized BatchDebitCreditsResponse of per-debit answers: a serialized Hold or an error."""
    parts = []
    for got in answers:
        if isinstance(got, Rejection):
            result = _field(b"\x12", pb.RpcError(code=got.status.value[0], message=got.message).SerializeToString())
        elif isinstance(got, Exception):
            result = _field(b"\x12", _ERROR_OTHER)
        else:
            result = _field(b"\n", got)
        parts.append(_field(b"\n", result))
    return b"".join(parts)


def explanation(ex: Explanation, scale: int) -> pb.ExplainAllocationResponse:
    out = pb.ExplainAllocationResponse(hold_key=ex.hold.hold_key, policy=policy(ex.policy))
    for charge_id, considered in ex.charges:
        ce = out.charges.add(charge_id=charge_id)
        for c in considered:
            ce.lots.add(lot_id=c.lot.lot_id, lot_type=LOT_TYPE_PB[c.lot.lot_type], eligible=c.eligible,
                        why=c.why, allocated=format_minor(c.allocated, scale), sort_values=c.sort_values)
    return out


# --- lifecycle, reversals, transfers --------------------------------------------------------------

def expired_part(lots: list[Lot]) -> pb.ExpireLotsResponse:
    """What one account's part of an expiry sweep stores under its key: the lots' ids."""
    return pb.ExpireLotsResponse(lots=[pb.Lot(lot_id=x.lot_id, account_id=x.account_id, unit=x.unit) for x in lots])


def expired_whole(pieces: list[tuple[Lot, int] | pb.ExpireLotsResponse]) -> pb.ExpireLotsResponse:
    out = pb.ExpireLotsResponse()
    for piece in pieces:
        if isinstance(piece, pb.ExpireLotsResponse):
            out.lots.extend(piece.lots)
        else:
            out.lots.append(lot(*piece))
    out.lots_expired = len(out.lots)
    return out


def released_holds(keys: list[str]) -> pb.ReleaseExpiredHoldsResponse:
    return pb.ReleaseExpiredHoldsResponse(hold_keys=keys)


def released_keys(response: pb.ReleaseExpiredHoldsResponse) -> list[str]:
    return list(response.hold_keys)


def reversal(r: ReversalResult, scale: int, response: type[R]) -> R:
    """ReverseHold's answer (or, for the deprecated alias, the same fields as ReverseReferenceResponse)."""
    return response(
        hold_key=r.hold_key, expired_at_once=format_minor(r.expired_at_once, scale),
        reinstated=[pb.Allocation(charge_id=a.charge_id, lot_id=a.lot_id, lot_type=LOT_TYPE_PB[a.lot_type],
                                  amount=format_minor(amount, scale), posted=format_minor(amount, scale))
                    for a, amount in r.reinstated],
    )


def transfer(r: TransferResult, scale: int) -> pb.TransferCreditsResponse:
    return pb.TransferCreditsResponse(
        transfer_id=r.transfer_id, reversed=r.reversed,
        legs=[pb.TransferLeg(source_lot_id=leg.source_lot_id, destination_lot_id=leg.destination_lot_id,
                             amount=format_minor(leg.amount, scale)) for leg in r.legs],
    )


def transfer_limit(account_id: str, unit_code: str, limit: int | None, scale: int) -> pb.TransferLimit:
    return pb.TransferLimit(account_id=account_id, unit=unit_code,
                            max_per_transfer="" if limit is None else format_minor(limit, scale))


def settlement(account_id: str, s: Settlement) -> pb.Settlement:
    return pb.Settlement(account_id=account_id, billed=s.billed, invoiced_through=ts(s.invoiced_through))


# --- statements -------------------------------------------------------------------------------------

MOVEMENT_PB = {m: pb.MovementType.Value(f"MOVEMENT_{m.value}") for m in Movement}


def statement_line(line: Line, lots: dict[str, LotInfo], scale: int) -> pb.StatementLine:
    def lot(lot_id: str, amount: int) -> pb.StatementLot:
        info = lots.get(lot_id)
        return pb.StatementLot(lot_id=lot_id, type=LOT_TYPE_PB[info.lot_type] if info else 0,
                               amount=format_minor(amount, scale),
                               expires_at=ts(info.usable_until) if info else None)

    return pb.StatementLine(
        type=MOVEMENT_PB[line.movement], recorded_at=ts(line.recorded_at), reference=line.reference,
        hold_key=line.hold_key, reason=line.reason, amount=format_minor(line.change.balance, scale),
        available_change=format_minor(line.change.available, scale), balance=format_minor(line.after.balance, scale),
        available=format_minor(line.after.available, scale), lots=[lot(i, a) for i, a in line.lots],
        items=[pb.StatementItem(charge_id=c, name=n, amount=format_minor(a, scale)) for c, n, a in line.items],
        first_entry_id=line.first_entry_id, last_entry_id=line.last_entry_id,
    )


def statement(view: StatementView) -> pb.Statement:
    s = view.scale
    out = pb.Statement(
        account_id=view.account_id, unit=view.unit, to=ts(view.end),
        opening_balance=format_minor(view.opening.balance, s),
        opening_available=format_minor(view.opening.available, s),
        closing_balance=format_minor(view.closing.balance, s),
        closing_available=format_minor(view.closing.available, s),
        credits_in=format_minor(view.credits_in, s), credits_out=format_minor(view.credits_out, s),
        lines=[statement_line(line, view.lots, s) for line in view.lines], next_page_token=view.next_page_token,
        by_type=[pb.StatementTypeTotals(
            type=LOT_TYPE_PB[t.lot_type], opening_balance=format_minor(t.opening, s),
            credits_in=format_minor(t.credits_in, s), credits_out=format_minor(t.credits_out, s),
            closing_balance=format_minor(t.closing, s), closing_available=format_minor(t.closing_available, s))
            for t in view.by_type],
        expiry_timeline=[pb.ExpiryPoint(expires_at=ts(at), lot_id=lot_id, type=LOT_TYPE_PB[kind],
                                        amount=format_minor(amount, s)) for at, lot_id, kind, amount in view.timeline],
        trailing_days=view.trailing_days, trailing_consumption=format_minor(view.trailing_consumption, s),
        days_until_depletion="" if view.days_until_depletion is None else str(view.days_until_depletion),
        entries=view.entries,
    )
    if view.start is not None:
        getattr(out, "from").CopyFrom(to_timestamp(view.start))  # `from` is a Python keyword
    return out


# --- the balance stream -----------------------------------------------------------------------------

CHANGE_TYPE_PB = {Kind.SNAPSHOT: pb.CHANGE_SNAPSHOT, Kind.UPDATE: pb.CHANGE_UPDATE, Kind.RESYNC: pb.CHANGE_RESYNC}


def balance_change(account_id: str, message: WatchMessage, scales: dict[str, int],
                   include_entries: bool) -> pb.BalanceChange:
    change = message.change
    return pb.BalanceChange(
        type=CHANGE_TYPE_PB[message.kind], account_id=account_id, sequence=change.seq,
        recorded_at=ts(change.recorded_at), reason=message.reason,
        balances=[pb.UnitBalance(unit=u, available=format_minor(a, scales[u]), held=format_minor(h, scales[u]),
                                 balance=format_minor(a + h, scales[u]))
                  for u, (a, h) in sorted(change.balances.items())],
        entries=[entry(e, scales.get(e.unit, 0)) for e in change.entries] if include_entries else [],
    )


_FOLLOWING_TAG = bytes([(pb.BalanceChange.FOLLOWING_FIELD_NUMBER << 3) | 2])  # field 8, length-delimited


def balance_change_bytes(account_id: str, message: WatchMessage, scales: dict[str, int],
                         include_entries: bool) -> bytes:
    """The stream message, serialized. Each change is packed once for every stream of the account (kept
    in `Change.packed` per form), and a coalesced message is those bytes joined: the first change's,
    then each following change's as an element of field 8 — the protobuf encoding of a repeated
    message field is its elements' encodings, each tagged and length-prefixed, in order."""
    form = (message.kind, include_entries, message.reason)
    head = message.change.packed.get(form)
    if head is None:
        head = message.change.packed[form] = balance_change(account_id, message, scales,
                                                            include_entries).SerializeToString()
    if not message.following:
        return head  # type: ignore[return-value]
    parts = [head]
    key = ("following", include_entries)
    for change in message.following:
        element = change.packed.get(key)
        if element is None:
            body = balance_change(account_id, WatchMessage(Kind.UPDATE, change), scales,
                                  include_entries).SerializeToString()
            element = change.packed[key] = _FOLLOWING_TAG + _varint(len(body)) + body
        parts.append(element)
    return b"".join(parts)  # type: ignore[arg-type]


def portal_revocation(r: Revocation) -> pb.PortalLinkRevocation:
    return pb.PortalLinkRevocation(session_id=r.session_id, customer_id=r.customer_id, account_id=r.account_id,
                                   expires_at=ts(r.expires_at), revoked_at=ts(r.revoked_at), reason=r.reason,
                                   revoked_by=r.revoked_by)
