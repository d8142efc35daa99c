"""Protobuf → what the ledger's operations take: every field checked, a refusal naming it.

One rule per kind of field, shared with the invoice service:
- identifiers (`service_runtime.identifiers.check_id`): account ids, lot ids, unit codes, grant
  request and transfer ids, meter and add-on names in charges and scopes: `[A-Za-z0-9._:-]{1,64}`,
  exactly what the protos document;
- keys (`check_key`): idempotency keys, hold keys and their prefixes, references and charge ids,
  1-200 printable ASCII characters without spaces, since they are paths (`inv/<invoice>/<run>`,
  `L001#1`);
- free text (`service_runtime.free_text`): names, reasons, sources, reason codes, campaign and
  incident ids; no control characters (the storage layer relies on that);
- timestamps through `service_runtime.proto_time`; pages through `service_runtime.pages`;
- amounts stay text (`AmountText`, naming their field) until the operation knows the unit's scale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import TypeVar

from credits.ledger.v1 import ledger_pb2 as pb
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from ledger_service.domain import holds as hold_rules
from ledger_service.domain.amounts import AmountText, RequestedCharge
from ledger_service.domain.grants import GrantRequestStatus
from ledger_service.domain.journal import EntryKind
from ledger_service.domain.model import DEBIT_PREFIX, ChargeKind, HoldStatus, LotType, Scope
from ledger_service.domain.policy import DEFAULT_TYPE_ORDER, SortKey
from ledger_service.operations.accounts_and_units import AccountQuery, NewAccount
from ledger_service.operations.batch_debits import BatchDebits
from ledger_service.operations.calls import Call
from ledger_service.operations.grants import GrantOrder, GrantRequestQuery, RolloverOrder
from ledger_service.operations.holds import HoldQuery, Reserve
from ledger_service.operations.lots_and_balances import EntryQuery, LotQuery
from ledger_service.operations.reversals_and_transfers import Reversal, TransferOrder
from ledger_service.operations.statements import DEFAULT_TRAILING_DAYS, MAX_TRAILING_DAYS, StatementQuery
from ledger_service.storage.reads import EntryFilter
from service_runtime import currencies, portal_sessions, rates
from service_runtime.amounts import parse_decimal
from service_runtime.free_text import check_text
from service_runtime.idempotency import hash_of_serialized
from service_runtime.identifiers import MAX_KEY_LENGTH, check_id, check_key
from service_runtime.pages import decode_int_token, decode_token, page_size
from service_runtime.proto_time import from_timestamp
from service_runtime.rates import RateVersion
from service_runtime.rejections import Reason, Rejection, invalid, not_found

M = TypeVar("M", bound=Message)
E = TypeVar("E")
MAX_TEXT = 500
MAX_CHARGES = 10_000

LOT_TYPES = {pb.PURCHASED: LotType.PURCHASED, pb.PROMOTIONAL: LotType.PROMOTIONAL,
             pb.COMPENSATORY: LotType.COMPENSATORY, pb.ROLLOVER: LotType.ROLLOVER}
CHARGE_KINDS = {pb.USAGE: ChargeKind.USAGE, pb.ADD_ON: ChargeKind.ADD_ON, pb.FIXED_FEE: ChargeKind.FIXED_FEE,
                pb.LICENSE: ChargeKind.LICENSE}
HOLD_STATUSES = {pb.PENDING: HoldStatus.PENDING, pb.COMMITTED: HoldStatus.COMMITTED,
                 pb.RELEASED: HoldStatus.RELEASED, pb.TOMBSTONE: HoldStatus.TOMBSTONE}
GRANT_REQUEST_STATUSES = {pb.PENDING_APPROVAL: GrantRequestStatus.PENDING_APPROVAL,
                          pb.APPROVED: GrantRequestStatus.APPROVED, pb.REJECTED: GrantRequestStatus.REJECTED}
SORT_KEYS = {getattr(pb, k.value): k for k in SortKey}
REVERSAL_POLICIES = {pb.EXPIRED_LOT_POLICY_UNSPECIFIED: hold_rules.ReversalPolicy.EXPIRE_AT_ONCE,
                     pb.EXPIRE_AT_ONCE: hold_rules.ReversalPolicy.EXPIRE_AT_ONCE,
                     pb.REINSTATE_WITH_GRACE: hold_rules.ReversalPolicy.REINSTATE_WITH_GRACE}


# --- fields ---------------------------------------------------------------------------------------

def text(value: str, field: str, max_len: int = MAX_TEXT) -> str:
    """Free text: the shared rule (the storage layer relies on it having no control characters)."""
    return check_text(value, field, max_len)


def hold_key(value: str, field: str = "hold_key") -> str:
    """A hold key: a caller's key, or a debit's `debit:<its idempotency key>` (which may be longer)."""
    if value.startswith(DEBIT_PREFIX) and len(value) > MAX_KEY_LENGTH:
        check_key(value[len(DEBIT_PREFIX):], field)
        return value
    return check_key(value, field)


def when(ts: Timestamp, field: str) -> datetime:
    return from_timestamp(ts, field)


def opt_when(msg: Message, name: str) -> datetime | None:
    return when(getattr(msg, name), name) if msg.HasField(name) else None


def required_when(msg: Message, name: str) -> datetime:
    found = opt_when(msg, name)
    if found is None:
        raise invalid(name, "is required")
    return found


def not_beyond_skew(value: datetime, now: datetime, skew_s: int, field: str) -> datetime:
    if value > now + timedelta(seconds=skew_s):
        raise invalid(field, f"is more than {skew_s}s in the future (clock-skew bound)")
    return value


def within_horizon(value: datetime, now: datetime, horizon_s: int, field: str) -> datetime:
    """A lot's window may lie in the future, up to the lot horizon (CREDITS_LOT_HORIZON_S)."""
    if value > now + timedelta(seconds=horizon_s):
        raise invalid(field, f"is more than {horizon_s}s in the future (the lot horizon, CREDITS_LOT_HORIZON_S)")
    return value


def _enum(table: Mapping[int, E], value: int, field: str, message: str) -> E:
    found = table.get(value)
    if found is None:
        raise invalid(field, message)
    return found


def lot_type(value: int, field: str = "type") -> LotType:
    return _enum(LOT_TYPES, value, field, "must be PURCHASED, PROMOTIONAL, COMPENSATORY or ROLLOVER")


def charge_kind(value: int, field: str) -> ChargeKind:
    return _enum(CHARGE_KINDS, value, field, "must be USAGE, ADD_ON, FIXED_FEE or LICENSE")


def scope(msg: pb.Scope, field: str = "scope") -> Scope:
    kinds = frozenset(charge_kind(k, f"{field}.kinds") for k in msg.kinds)
    if len(msg.names) > 100:
        raise invalid(f"{field}.names", "lists more than 100 names")
    names = frozenset(check_id(n, f"{field}.names") for n in msg.names)
    if names and not kinds:
        raise invalid(f"{field}.names", "needs scope.kinds to say which kinds the names belong to")
    return Scope(kinds, names)


def charges(msgs: Iterable[pb.Charge], now: datetime, skew_s: int, *,
            allow_none: bool = False) -> list[RequestedCharge]:
    """The charges of a reserve or debit. `allow_none`: an up-to reserve may ask for nothing (the
    empty hold a $0 invoice's finalization reserves, commits and reverses like any other)."""
    items = list(msgs)
    if not items and not allow_none:
        raise invalid("charges", "at least one charge is required (an up_to reserve may have none)")
    if len(items) > MAX_CHARGES:
        raise invalid("charges", "more than 10,000 charges")
    out: list[RequestedCharge] = []
    seen: set[str] = set()
    for i, c in enumerate(items):
        f = _CHARGE_FIELDS[i] if i < len(_CHARGE_FIELDS) else f"charges[{i}]"
        charge_id = check_key(c.charge_id, f"{f}.charge_id") if c.charge_id else str(i)
        if charge_id in seen:
            raise invalid(f"{f}.charge_id", f"repeats {charge_id!r}")
        seen.add(charge_id)
        start = when(c.service_start, f"{f}.service_start") if c.HasField("service_start") else now
        end = when(c.service_end, f"{f}.service_end") if c.HasField("service_end") else start
        if end < start:
            raise invalid(f"{f}.service_end", "is before service_start")
        if start is not now:  # unset is now, which is never beyond the bound
            not_beyond_skew(start, now, skew_s, f"{f}.service_start")
        name = check_id(c.name, f"{f}.name") if c.name else ""
        kind = charge_kind(c.kind, f"{f}.kind")  # CHARGE_KIND_UNSPECIFIED too: a charge says what it is
        out.append(RequestedCharge(charge_id, kind, name, c.amount, f"{f}.amount", start, end))
    return out


_CHARGE_FIELDS = [f"charges[{i}]" for i in range(16)]  # the common prefixes, built once (hot path)


def _after_key(token: str) -> str:
    parts = decode_token(token, 1)
    return parts[0] if parts else ""


# --- accounts, units, policy ----------------------------------------------------------------------

def new_account(request: pb.CreateAccountRequest) -> NewAccount:
    return NewAccount(check_id(request.account_id, "account_id"),
                      check_id(request.parent_account_id, "parent_account_id", required=False),
                      text(request.name, "name"))


def unit_definition(request: pb.DefineUnitRequest) -> tuple[str, int]:
    code = request.code
    if not code or len(code) > 32 or not code.replace("_", "").isalnum() or not code.isascii():
        raise invalid("code", "must be 1-32 ASCII letters, digits or _")
    if not 0 <= request.scale <= 9:
        raise invalid("scale", "must be between 0 and 9")
    iso = currencies.scale_of(code)
    if iso is not None and iso != request.scale:
        raise invalid("scale", f"{code} is an ISO 4217 currency with {iso} decimals, not {request.scale}")
    return code, request.scale


def rate_publication(request: pb.PublishRateRequest, now: datetime) -> RateVersion:
    """A rate to publish (its version is the ledger's to choose); the unit is checked against the catalog."""
    unit = check_id(request.unit, "unit")
    if not request.currency or not currencies.is_currency(request.currency):
        raise invalid("currency", "must be an ISO 4217 currency code (e.g. USD)")
    rate = parse_decimal(request.rate, "rate", max_places=rates.MAX_RATE_PLACES)
    if rate <= 0:
        raise invalid("rate", "must be positive: what one unit is worth in the currency (e.g. 0.01)")
    effective = opt_when(request, "effective_at") or now
    return RateVersion(unit, request.currency, 0, rate, effective)


def rate_filter(request: pb.ListRatesRequest) -> tuple[str, str]:
    return check_id(request.unit, "unit", required=False), check_id(request.currency, "currency", required=False)


def consumption_policy(request: pb.SetConsumptionPolicyRequest) -> tuple[str, list[SortKey], list[LotType]]:
    account_id = check_id(request.account_id, "account_id", required=False)
    keys: list[SortKey] = []
    for k in request.sort_keys:
        key = SORT_KEYS.get(k)
        if key is None:
            raise invalid("sort_keys", f"unknown sort key {k}")
        if key in keys:
            raise invalid("sort_keys", f"{key.value} repeats")
        keys.append(key)
    if not keys:
        raise invalid("sort_keys", "at least one sort key is required")
    type_order = [lot_type(t, "type_order") for t in request.type_order] or list(DEFAULT_TYPE_ORDER)
    if len(set(type_order)) != len(type_order):
        raise invalid("type_order", "repeats a type")
    return account_id, keys, type_order


# --- lots and grants ------------------------------------------------------------------------------

def rollover(request: pb.GrantCreditsRequest) -> RolloverOrder | None:
    if not request.HasField("rollover"):
        return None
    r = request.rollover
    if r.max_percent > 100:
        raise invalid("rollover.max_percent", "must be between 0 and 100")
    if r.expires_after_s < 0:
        raise invalid("rollover.expires_after_s", "must not be negative")
    if r.expires_after_s > 100 * 366 * 86400:
        raise invalid("rollover.expires_after_s", "must be at most 100 years")
    max_amount = AmountText(r.max_amount, "rollover.max_amount", allow_zero=True) if r.max_amount else None
    return RolloverOrder(max_amount, r.max_percent, r.expires_after_s)


def grant(request: pb.GrantCreditsRequest, now: datetime, horizon_s: int) -> GrantOrder:
    """A grant: its window may start and end in the future up to the lot horizon (never the skew bound)."""
    account_id = check_id(request.account_id, "account_id")
    kind = lot_type(request.type)
    unit = check_id(request.unit, "unit")
    effective_at = within_horizon(opt_when(request, "effective_at") or now, now, horizon_s, "effective_at")
    expires_at = opt_when(request, "expires_at")
    if expires_at is not None:
        within_horizon(expires_at, now, horizon_s, "expires_at")
    return GrantOrder(
        account_id=account_id, lot_type=kind, unit=unit, amount=AmountText(request.amount, "amount"),
        priority=request.priority or 50, effective_at=effective_at, expires_at=expires_at, rollover=rollover(request),
        scope=scope(request.scope), cost_basis=parse_decimal(request.cost_basis, "cost_basis"),
        source=text(request.source, "source", 64), reason_code=text(request.reason_code, "reason_code", 128),
        campaign_id=text(request.campaign_id, "campaign_id", 128),
        incident_id=text(request.incident_id, "incident_id", 128),
    )


def stored_grant(raw: bytes, now: datetime, horizon_s: int) -> GrantOrder:
    """A grant request's stored GrantCreditsRequest, checked again when it is approved."""
    return grant(pb.GrantCreditsRequest.FromString(raw), now, horizon_s)


def support_limits(request: pb.SetSupportGrantLimitsRequest,
                   ) -> tuple[str, AmountText, AmountText, AmountText | None]:
    """(unit, max_per_grant, max_per_day, approval_threshold or None for none)."""
    threshold = (AmountText(request.approval_threshold, "approval_threshold", allow_zero=True)
                 if request.approval_threshold else None)
    return (check_id(request.unit, "unit"), AmountText(request.max_per_grant, "max_per_grant", allow_zero=True),
            AmountText(request.max_per_day, "max_per_day", allow_zero=True), threshold)


def account_query(request: pb.ListAccountsRequest) -> AccountQuery:
    cursor = decode_token(request.page_token, 1)
    return AccountQuery(check_id(request.parent_account_id, "parent_account_id", required=False),
                        cursor[0] if cursor else "", page_size(request.page_size))


def grant_request_query(request: pb.ListGrantRequestsRequest) -> GrantRequestQuery:
    status = None
    if request.status:
        status = _enum(GRANT_REQUEST_STATUSES, request.status, "status",
                       f"unknown grant request status {request.status}")
    return GrantRequestQuery(status, check_id(request.account_id, "account_id", required=False),
                             decode_int_token(request.page_token), page_size(request.page_size))


def decision(request: pb.ApproveGrantRequestRequest | pb.RejectGrantRequestRequest) -> tuple[str, str]:
    """(request_id, reason) of an approval or a rejection."""
    return check_id(request.request_id, "request_id"), text(request.reason, "reason")


def rejection(request: pb.RejectGrantRequestRequest) -> tuple[str, str]:
    if not request.reason:
        raise invalid("reason", "is required to reject a grant request")
    return decision(request)


def lot_query(request: pb.ListLotsRequest) -> LotQuery:
    return LotQuery(check_id(request.account_id, "account_id"), check_id(request.unit, "unit", required=False),
                    request.include_empty, decode_int_token(request.page_token), page_size(request.page_size))


def void(request: pb.VoidGrantRequest) -> tuple[str, str]:
    return check_id(request.lot_id, "lot_id"), text(request.reason, "reason")


# --- reads ----------------------------------------------------------------------------------------

def entry_query(request: pb.ListEntriesRequest) -> EntryQuery:
    kinds = []
    for k in request.kinds:
        if k not in pb.EntryKind.values() or k == pb.ENTRY_KIND_UNSPECIFIED:
            raise invalid("kinds", f"unknown entry kind {k}")
        kinds.append(EntryKind(pb.EntryKind.Name(k)))
    f = EntryFilter(
        account_id=check_id(request.account_id, "account_id", required=False),
        lot_id=check_id(request.lot_id, "lot_id", required=False), kinds=kinds,
        reference=check_key(request.reference, "reference", required=False),
        recorded_from=opt_when(request, "from"), recorded_to=opt_when(request, "to"),
    )
    return EntryQuery(f, decode_int_token(request.page_token), page_size(request.page_size))


def boundaries(request: pb.GetLotBoundariesRequest) -> tuple[str, str, datetime, datetime]:
    account_id = check_id(request.account_id, "account_id")
    start, end = required_when(request, "period_start"), required_when(request, "period_end")
    if end <= start:
        raise invalid("period_end", "must be after period_start")
    return account_id, check_id(request.unit, "unit", required=False), start, end


# --- holds and debits -----------------------------------------------------------------------------

def reserve(request: pb.ReserveCreditsRequest, now: datetime, skew_s: int) -> Reserve:
    account_id = check_id(request.account_id, "account_id")
    key = hold_key(request.hold_key)
    hold_rules.check_ttl(request.ttl_s)
    unit = check_id(request.unit, "unit")
    hold_rules.check_reserve_key(key)
    return Reserve(account_id, unit, charges(request.charges, now, skew_s, allow_none=request.up_to), request.up_to,
                   check_key(request.reference, "reference", required=False), hold_key=key, ttl_s=request.ttl_s,
                   release_on_ttl=request.release_on_ttl)


def commit(request: pb.CommitHoldRequest) -> tuple[str, AmountText | None]:
    amount = AmountText(request.amount, "amount", allow_zero=True) if request.amount else None
    return hold_key(request.hold_key), amount


def release(request: pb.ReleaseHoldRequest) -> tuple[str, str, str]:
    """(hold_key, account_id: needed only to burn the key of a hold that never arrived, reason)."""
    return (hold_key(request.hold_key), check_id(request.account_id, "account_id", required=False),
            text(request.reason, "reason"))


def debit(request: pb.DebitCreditsRequest, now: datetime, skew_s: int) -> Reserve:
    account_id = check_id(request.account_id, "account_id")
    unit = check_id(request.unit, "unit")
    return Reserve(account_id, unit, charges(request.charges, now, skew_s), request.up_to,
                   check_key(request.reference, "reference", required=False))


def batch_debits(request: pb.BatchDebitCreditsRequest, now: datetime, skew_s: int,
                 call_of: Callable[[pb.DebitCreditsRequest], Call[M]]) -> list[tuple[Call[M], Reserve] | Rejection]:
    """Each debit unpacked on its own: a refused one stays in its slot (the batch goes on)."""
    if not request.debits:
        raise invalid("debits", "at least one debit is required")
    if len(request.debits) > MAX_CHARGES:
        raise invalid("debits", "more than 10,000 debits")
    out: list[tuple[Call[M], Reserve] | Rejection] = []
    for item in request.debits:
        try:
            out.append((call_of(item), debit(item, now, skew_s)))
        except Rejection as rej:
            out.append(rej)
    return out


def _key_field_head(n: int) -> bytes:
    """Field 1's tag and the varint length `n` (a key of n ASCII characters)."""
    return b"\n" + (bytes([n]) if n < 128 else bytes([n & 0x7F | 0x80, n >> 7]))


_KEY_FIELDS = [_key_field_head(n) for n in range(MAX_KEY_LENGTH + 1)]


def batch_columns(request: pb.BatchDebitCreditsRequest, now: datetime, skew_s: int) -> BatchDebits:
    """`batch_debits` as columns (operations/batch_debits.py): each debit's key and digest, and its shape
    (the debit without its key: idempotency_key is field 1, serialized first) unpacked once per shape."""
    debits = request.debits
    if not debits:
        raise invalid("debits", "at least one debit is required")
    if len(debits) > MAX_CHARGES:
        raise invalid("debits", "more than 10,000 debits")
    out = BatchDebits(debits, [], [], [], [], {})
    keys, digests, shape_of, shapes = out.keys, out.digests, out.shape_of, out.shapes
    seen: dict[bytes, int] = {}
    for i, item in enumerate(debits):
        key = item.idempotency_key
        try:
            check_key(key)
        except Rejection as rej:
            out.refused[i] = rej
            keys.append("")
            digests.append(b"")
            shape_of.append(-1)
            continue
        raw = item.SerializeToString(deterministic=True)
        head = _KEY_FIELDS[len(key)] + key.encode()
        shape = raw[len(head):] if raw.startswith(head) else raw  # else: a shape of its own
        s = seen.get(shape)
        if s is None:
            s = seen[shape] = len(shapes)
            try:
                shapes.append(debit(item, now, skew_s))
            except Rejection as rej:
                shapes.append(rej)
        keys.append(key)
        digests.append(hash_of_serialized(raw))
        shape_of.append(s)
    return out


def hold_query(request: pb.ListHoldsRequest) -> HoldQuery:
    status = None
    if request.status:
        status = _enum(HOLD_STATUSES, request.status, "status", f"unknown hold status {request.status}")
    return HoldQuery(
        account_id=check_id(request.account_id, "account_id", required=False), status=status,
        created_before=opt_when(request, "created_before"),
        hold_key_prefix=check_key(request.hold_key_prefix, "hold_key_prefix", required=False),
        after_key=_after_key(request.page_token), limit=page_size(request.page_size),
    )


# --- lifecycle ------------------------------------------------------------------------------------

def as_of(request: pb.ExpireLotsRequest | pb.ReleaseExpiredHoldsRequest, now: datetime, skew_s: int) -> datetime:
    """A sweep's instant: unset is now; at most the clock-skew bound in the future."""
    return not_beyond_skew(opt_when(request, "as_of") or now, now, skew_s, "as_of")


def expiry(request: pb.ExpireLotsRequest, now: datetime, skew_s: int) -> tuple[datetime, str]:
    """(as_of, account_id: "" for every account of the tenant)."""
    return as_of(request, now, skew_s), check_id(request.account_id, "account_id", required=False)


def reversal(request: pb.ReverseHoldRequest | pb.ReverseReferenceRequest) -> Reversal:
    key = hold_key(request.hold_key)
    policy = _enum(REVERSAL_POLICIES, request.expired_lot_policy, "expired_lot_policy",
                   f"unknown policy {request.expired_lot_policy}")
    grace = hold_rules.check_grace(policy, request.grace_s)
    return Reversal(key, grace, text(request.reason, "reason"))


def transfer(request: pb.TransferCreditsRequest) -> TransferOrder:
    return TransferOrder(check_id(request.from_account_id, "from_account_id"),
                         check_id(request.to_account_id, "to_account_id"), check_id(request.unit, "unit"),
                         AmountText(request.amount, "amount"), text(request.reason, "reason"))


def transfer_limit(request: pb.SetTransferLimitRequest) -> tuple[str, str, AmountText | None]:
    limit = AmountText(request.max_per_transfer, "max_per_transfer") if request.max_per_transfer else None
    return check_id(request.account_id, "account_id"), check_id(request.unit, "unit"), limit


def settlement(request: pb.RecordSettlementRequest) -> tuple[str, datetime]:
    return check_id(request.account_id, "account_id"), required_when(request, "invoiced_through")


# --- statements, exports, balance watch -----------------------------------------------------------

def _statement_period(request: pb.GetStatementRequest | pb.ExportStatementRequest) -> tuple[datetime | None,
                                                                                              datetime | None]:
    start, end = opt_when(request, "from"), opt_when(request, "to")
    if start is not None and end is not None and end <= start:
        raise invalid("to", "must be after from")
    return start, end


def statement_query(request: pb.GetStatementRequest) -> StatementQuery:
    start, end = _statement_period(request)
    days = request.trailing_days
    if days < 0 or days > MAX_TRAILING_DAYS:
        raise invalid("trailing_days", f"must be between 0 and {MAX_TRAILING_DAYS}")
    return StatementQuery(check_id(request.account_id, "account_id"), check_id(request.unit, "unit", required=False),
                          start, end, page_size(request.page_size), request.page_token,
                          days or DEFAULT_TRAILING_DAYS)


def export_query(request: pb.ExportStatementRequest) -> tuple[StatementQuery, bool, bool]:
    """(query, raw transaction log?, JSON lines?)."""
    start, end = _statement_period(request)
    if request.format not in (pb.EXPORT_CSV, pb.EXPORT_JSON):
        raise invalid("format", "must be EXPORT_CSV or EXPORT_JSON")
    if request.kind not in (pb.EXPORT_KIND_UNSPECIFIED, pb.EXPORT_STATEMENT, pb.EXPORT_ENTRIES):
        raise invalid("kind", f"unknown export kind {request.kind}")
    query = StatementQuery(check_id(request.account_id, "account_id"),
                           check_id(request.unit, "unit", required=False), start, end)
    return query, request.kind == pb.EXPORT_ENTRIES, request.format == pb.EXPORT_JSON


def watch(request: pb.WatchBalanceRequest) -> tuple[str, int, bool]:
    if request.after_sequence < 0:
        raise invalid("after_sequence", "must not be negative")
    return check_id(request.account_id, "account_id"), request.after_sequence, request.include_entries


# --- customer portal links ------------------------------------------------------------------------

def portal_link(link: str, tenant_id: str) -> portal_sessions.PortalSession:
    """RevokePortalLink's `link` (the minted URL or its token) back to its session: it must be signed with
    this deployment's secret and belong to the caller's tenant. An expired link is still accepted (revoking
    it changes nothing the customer sees, and the caller need not check the clock first)."""
    token = link.strip().rsplit("/s/", 1)[-1].split("?", 1)[0].split("#", 1)[0]
    if not token:
        raise invalid("link", "is required: the portal link's URL or its token")
    secret = portal_sessions.secret_from_env()
    if not secret:
        raise Rejection(Reason.PRECONDITION, f"portal links need {portal_sessions.SECRET_ENV} on this server",
                        "link")
    try:
        session = portal_sessions.verify(token, secret, now=0)
    except portal_sessions.SessionRefused:
        raise invalid("link", "is not a portal link of this deployment (changed, or signed with another "
                              "secret)") from None
    if session.tenant_id != tenant_id:
        raise not_found("link", "no such portal link")
    return session
