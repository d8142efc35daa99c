"""Protobuf ⇄ domain for the ledger: input validation (naming the field) and response packing."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timedelta

from credits.ledger.v1 import ledger_pb2 as pb
from google.protobuf.timestamp_pb2 import Timestamp

from ledger_service.domain.journal import BUCKETS, Buckets
from ledger_service.domain.model import Allocation, Charge, ChargeKind, Hold, HoldStatus, Lot, LotType, Scope
from ledger_service.domain.policy import Policy, SortKey
from service_runtime.amounts import format_minor, parse_minor
from service_runtime.free_text import check_text
from service_runtime.proto_time import from_timestamp, to_timestamp
from service_runtime.rejections import invalid

_ID = re.compile(r"^[A-Za-z0-9._:/@#-]{1,128}$")
MAX_TEXT = 500

LOT_TYPES = {pb.PURCHASED: LotType.PURCHASED, pb.PROMOTIONAL: LotType.PROMOTIONAL,
             pb.COMPENSATORY: LotType.COMPENSATORY, pb.ROLLOVER: LotType.ROLLOVER}
LOT_TYPE_PB = {v: k for k, v in LOT_TYPES.items()}
CHARGE_KINDS = {pb.USAGE: ChargeKind.USAGE, pb.ADD_ON: ChargeKind.ADD_ON, pb.FIXED_FEE: ChargeKind.FIXED_FEE,
                pb.LICENSE: ChargeKind.LICENSE}
CHARGE_KIND_PB = {v: k for k, v in CHARGE_KINDS.items()}
HOLD_STATUS_PB = {HoldStatus.PENDING: pb.PENDING, HoldStatus.COMMITTED: pb.COMMITTED,
                  HoldStatus.RELEASED: pb.RELEASED, HoldStatus.TOMBSTONE: pb.TOMBSTONE}
HOLD_STATUS = {v: k for k, v in HOLD_STATUS_PB.items()}
SORT_KEYS = {getattr(pb, k.value): k for k in SortKey}
SORT_KEY_PB = {v: k for k, v in SORT_KEYS.items()}


def ident(value: str, field: str, *, required: bool = True) -> str:
    if not value:
        if required:
            raise invalid(field, "is required")
        return ""
    if not _ID.match(value):
        raise invalid(field, "must be 1-128 characters of letters, digits and . _ : / @ # -")
    return value


def text(value: str, field: str, max_len: int = MAX_TEXT) -> str:
    """Free text: the shared rule (the storage layer relies on it having no control characters)."""
    return check_text(value, field, max_len)


def when(ts: Timestamp, field: str) -> datetime:
    return from_timestamp(ts, field)


def opt_when(msg: object, name: str, field: str | None = None) -> datetime | None:
    if not msg.HasField(name):  # type: ignore[attr-defined]
        return None
    return when(getattr(msg, name), field or name)


def ts(value: datetime | None) -> Timestamp | None:
    return None if value is None else to_timestamp(value)


def not_beyond_skew(value: datetime, now: datetime, skew_s: int, field: str) -> None:
    if value > now + timedelta(seconds=skew_s):
        raise invalid(field, f"is more than {skew_s}s in the future (clock-skew bound)")


def lot_type(value: int, field: str = "type") -> LotType:
    found = LOT_TYPES.get(value)  # type: ignore[call-overload]
    if found is None:
        raise invalid(field, "must be PURCHASED, PROMOTIONAL, COMPENSATORY or ROLLOVER")
    return found


def charge_kind(value: int, field: str) -> ChargeKind:
    found = CHARGE_KINDS.get(value)  # type: ignore[call-overload]
    if found is None:
        raise invalid(field, "must be USAGE, ADD_ON, FIXED_FEE or LICENSE")
    return found


def scope(msg: pb.Scope, field: str = "scope") -> Scope:
    kinds = frozenset(charge_kind(k, f"{field}.kinds") for k in msg.kinds)
    if len(msg.names) > 100:
        raise invalid(f"{field}.names", "lists more than 100 names")
    names = frozenset(ident(n, f"{field}.names") for n in msg.names)
    if names and not kinds:
        raise invalid(f"{field}.names", "needs scope.kinds to say which kinds the names belong to")
    return Scope(kinds, names)


def charges(msgs: Iterable[pb.Charge], scale: int, now: datetime, skew_s: int) -> list[Charge]:
    out: list[Charge] = []
    seen: set[str] = set()
    items = list(msgs)
    if not items:
        raise invalid("charges", "at least one charge is required")
    if len(items) > 10_000:
        raise invalid("charges", "more than 10,000 charges")
    for i, c in enumerate(items):
        f = f"charges[{i}]"
        charge_id = ident(c.charge_id, f"{f}.charge_id", required=False) if c.charge_id else str(i)
        if charge_id in seen:
            raise invalid(f"{f}.charge_id", f"repeats {charge_id!r}")
        seen.add(charge_id)
        start = when(c.service_start, f"{f}.service_start") if c.HasField("service_start") else now
        end = when(c.service_end, f"{f}.service_end") if c.HasField("service_end") else start
        if end < start:
            raise invalid(f"{f}.service_end", "is before service_start")
        not_beyond_skew(start, now, skew_s, f"{f}.service_start")
        name = ident(c.name, f"{f}.name") if c.name else ""
        kind = charge_kind(c.kind, f"{f}.kind") if c.kind else ChargeKind.USAGE
        out.append(Charge(charge_id, kind, name, parse_minor(c.amount, scale, f"{f}.amount"), start, end))
    return out


def pack_lot(lot: Lot, scale: int) -> pb.Lot:
    b = pb.LotBalance(**{k: format_minor(getattr(lot, k), scale) for k in BUCKETS})
    msg = pb.Lot(
        lot_id=lot.lot_id, account_id=lot.account_id, type=LOT_TYPE_PB[lot.lot_type], unit=lot.unit,
        amount=format_minor(lot.amount, scale), priority=lot.priority, effective_at=ts(lot.effective_at),
        expires_at=ts(lot.expires_at), cost_basis=str(lot.cost_basis.normalize() if lot.cost_basis else 0),
        scope=pb.Scope(kinds=sorted(CHARGE_KIND_PB[k] for k in lot.scope.kinds), names=sorted(lot.scope.names)),
        source=lot.source, reason_code=lot.reason_code, campaign_id=lot.campaign_id, incident_id=lot.incident_id,
        granted_by=lot.granted_by, created_at=ts(lot.created_at), balance=b, origin_lot_id=lot.origin_lot_id,
        usable_until=ts(lot.usable_until),
    )
    if lot.closed_at is not None and lot.voided:
        msg.voided_at.CopyFrom(ts(lot.closed_at))
    return msg


def pack_hold(hold: Hold, scale: int) -> pb.Hold:
    fmt = format_minor
    posted_by_pos = hold.postings
    return pb.Hold(
        hold_key=hold.hold_key, account_id=hold.account_id, unit=hold.unit, status=HOLD_STATUS_PB[hold.status],
        requested=fmt(hold.requested, scale), reserved=fmt(hold.reserved, scale), posted=fmt(hold.posted, scale),
        released=fmt(hold.released, scale),
        allocations=[_pack_allocation(a, posted_by_pos.get(a.position, 0), scale, hold.policy_version)
                     for a in hold.allocations],
        created_at=ts(hold.created_at) if hold.status is not HoldStatus.TOMBSTONE else None,
        ttl_expires_at=ts(hold.ttl_expires_at) if hold.status is not HoldStatus.TOMBSTONE else None,
        resolved_at=ts(hold.resolved_at), reference=hold.reference, policy_version=hold.policy_version,
        release_on_ttl=hold.release_on_ttl,
    )


def _pack_allocation(a: Allocation, posted: int, scale: int, version: int) -> pb.Allocation:
    return pb.Allocation(charge_id=a.charge_id, lot_id=a.lot_id, amount=format_minor(a.amount, scale),
                         posted=format_minor(posted, scale), policy_version=version,
                         lot_type=LOT_TYPE_PB[a.lot_type])


def pack_buckets(msg: pb.BalanceBucket, b: Buckets, upcoming: int, scale: int) -> None:
    for bucket in BUCKETS:
        setattr(msg, bucket, format_minor(getattr(b, bucket), scale))
    msg.upcoming = format_minor(upcoming, scale)


def pack_policy(policy: Policy, created_at: datetime | None) -> pb.ConsumptionPolicy:
    return pb.ConsumptionPolicy(
        account_id=policy.account_id, version=policy.version,
        sort_keys=[SORT_KEY_PB[k] for k in policy.sort_keys], type_order=[LOT_TYPE_PB[t] for t in policy.type_order],
        created_at=ts(created_at),
    )
