"""Alert rules as small state machines, evaluated on every committed ledger change (pure, no I/O).

A rule watches one account (or every account of the tenant, as the tenant's default) in one unit.
Each rule has one *watch* per subject — a threshold of a LOW_BALANCE rule, the granting key of a
COMPENSATORY_BURST rule, or the single subject of the other kinds — and each watch is

    ok --(condition holds)--> firing   emits one event, crossing number n+1
    firing --(condition gone)--> ok    re-arms (balance rules emit `balance.recovered` for crossing n)

Invariants (checked by tests/ledger/test_alerts_random.py against an independent model):
- one event per crossing: an event is emitted only on a transition, and a transition is stored in the
  same transaction as the ledger change that caused it, so a retried, replayed or rolled-back change
  can never emit it twice;
- an event's id is a function of (rule, account, subject, crossing number, direction), so even a
  re-evaluation of the same crossing maps to the same id (the outbox's primary key keeps one).
LARGE_ADJUSTMENT has no state: each grant or void above the limit is its own crossing, named by its lot.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

from ledger_service.domain.model import LotType
from service_runtime.rejections import invalid


class AlertKind(enum.StrEnum):
    LOW_BALANCE = "LOW_BALANCE"
    DEPLETED = "DEPLETED"
    EXPIRING = "EXPIRING"
    USAGE_SPIKE = "USAGE_SPIKE"
    LARGE_ADJUSTMENT = "LARGE_ADJUSTMENT"
    COMPENSATORY_BURST = "COMPENSATORY_BURST"


EVENT_TYPES = ("balance.low", "balance.depleted", "balance.recovered", "credits.expiring", "usage.spike",
               "adjustment.large", "adjustment.compensatory_burst", "topup.capped", "topup.disabled")
FIRED_TYPE = {
    AlertKind.LOW_BALANCE: "balance.low", AlertKind.DEPLETED: "balance.depleted",
    AlertKind.EXPIRING: "credits.expiring", AlertKind.USAGE_SPIKE: "usage.spike",
    AlertKind.LARGE_ADJUSTMENT: "adjustment.large", AlertKind.COMPENSATORY_BURST: "adjustment.compensatory_burst",
}
RECOVERED = "balance.recovered"
MAX_THRESHOLDS = 10
MAX_WINDOW_S = 90 * 86400
MAX_TRAILING = 100


@dataclass(frozen=True)
class AlertRule:
    rule_id: str
    account_id: str  # "" = tenant default
    unit: str
    scale: int
    kind: AlertKind
    thresholds: tuple[int, ...] = ()        # minor units
    percent_thresholds: tuple[int, ...] = ()
    amount: int = 0                         # minor units
    within_days: int = 0
    window_s: int = 0
    factor: str = ""                        # decimal text
    trailing_windows: int = 0
    count: int = 0
    enabled: bool = True
    created_at: datetime | None = None
    created_by: str = ""

    def params(self) -> dict[str, Any]:
        return {"thresholds": list(self.thresholds), "percent_thresholds": list(self.percent_thresholds),
                "amount": self.amount, "within_days": self.within_days, "window_s": self.window_s,
                "factor": self.factor, "trailing_windows": self.trailing_windows, "count": self.count}


def check_rule(rule: AlertRule) -> AlertRule:
    """A rule's own consistency (INVALID_ARGUMENT naming the field)."""
    k = rule.kind
    if k is AlertKind.LOW_BALANCE:
        if not rule.thresholds and not rule.percent_thresholds:
            raise invalid("rule.thresholds", "a LOW_BALANCE rule needs thresholds or percent_thresholds")
        if len(rule.thresholds) + len(rule.percent_thresholds) > MAX_THRESHOLDS:
            raise invalid("rule.thresholds", f"at most {MAX_THRESHOLDS} thresholds")
        if len(set(rule.thresholds)) != len(rule.thresholds):
            raise invalid("rule.thresholds", "repeats a threshold")
        if len(set(rule.percent_thresholds)) != len(rule.percent_thresholds):
            raise invalid("rule.percent_thresholds", "repeats a threshold")
        for p in rule.percent_thresholds:
            if not 1 <= p <= 99:
                raise invalid("rule.percent_thresholds", "each must be between 1 and 99")
    elif rule.thresholds or rule.percent_thresholds:
        raise invalid("rule.thresholds", "only a LOW_BALANCE rule has thresholds")
    if k in (AlertKind.EXPIRING, AlertKind.LARGE_ADJUSTMENT) and rule.amount <= 0:
        raise invalid("rule.amount", "must be positive")
    if k is AlertKind.EXPIRING and not 1 <= rule.within_days <= 365:
        raise invalid("rule.within_days", "must be between 1 and 365")
    if k in (AlertKind.USAGE_SPIKE, AlertKind.COMPENSATORY_BURST) and not 60 <= rule.window_s <= MAX_WINDOW_S:
        raise invalid("rule.window_s", f"must be between 60 and {MAX_WINDOW_S} seconds")
    if k is AlertKind.USAGE_SPIKE:
        if not 1 <= rule.trailing_windows <= MAX_TRAILING:
            raise invalid("rule.trailing_windows", f"must be between 1 and {MAX_TRAILING}")
        if not rule.factor or Fraction(rule.factor) <= 1:
            raise invalid("rule.factor", "must be a decimal above 1, e.g. 10")
    if k is AlertKind.COMPENSATORY_BURST:
        if rule.account_id:
            raise invalid("rule.account_id", "a COMPENSATORY_BURST rule watches keys across the tenant: leave it empty")
        if not 2 <= rule.count <= 10_000:
            raise invalid("rule.count", "must be between 2 and 10000")
    return rule


@dataclass
class Watch:
    """One subject's state machine; `data` carries what a windowed condition remembers."""

    firing: bool = False
    crossings: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    changed: bool = False


@dataclass(frozen=True)
class AlertEvent:
    event_id: str
    event_type: str
    rule_id: str
    account_id: str
    subject: str
    crossing: int
    data: dict[str, Any]


@dataclass(frozen=True)
class Adjustment:
    """A grant or void in the change: lot, kind (GRANT/VOID), amount, type, granting key."""

    lot_id: str
    kind: str
    amount: int
    lot_type: LotType
    granted_by: str


@dataclass
class AccountSignals:
    """What one committed change left behind for one account and unit."""

    account_id: str
    unit: str
    now: datetime
    available: int = 0
    granted_in_period: int = 0                 # amounts of lots whose window holds now
    expiring: list[tuple[datetime, int]] = field(default_factory=list)  # (usable_until, available)
    consumed: int = 0                          # DEBIT + POST in this change
    adjustments: list[Adjustment] = field(default_factory=list)
    burst_counts: dict[str, int] = field(default_factory=dict)  # key -> COMPENSATORY grants in the window


def event_id(rule_id: str, account_id: str, subject: str, crossing: int, recovered: bool = False) -> str:
    base = f"{rule_id}/{account_id or '-'}/{subject}/{crossing}"
    return base + "/recovered" if recovered else base


def _step(rule: AlertRule, account_id: str, subject: str, watch: Watch, holds: bool,
          data: dict[str, Any], emit_recovery: bool) -> list[AlertEvent]:
    """Advances one watch; the events of its transition (none when the state stays)."""
    if holds == watch.firing:
        return []
    watch.firing, watch.changed = holds, True
    if holds:
        watch.crossings += 1
        return [AlertEvent(event_id(rule.rule_id, account_id, subject, watch.crossings), FIRED_TYPE[rule.kind],
                           rule.rule_id, account_id, subject, watch.crossings, data)]
    if not emit_recovery:
        return []
    return [AlertEvent(event_id(rule.rule_id, account_id, subject, watch.crossings, True), RECOVERED,
                       rule.rule_id, account_id, subject, watch.crossings, data)]


def subjects(rule: AlertRule) -> list[str]:
    """The fixed subjects of a rule (COMPENSATORY_BURST's are the granting keys it meets)."""
    if rule.kind is AlertKind.LOW_BALANCE:
        return [f"below:{t}" for t in rule.thresholds] + [f"below:{p}%" for p in rule.percent_thresholds]
    return [rule.kind.value.lower()]


def low_balance_holds(subject: str, available: int, granted: int) -> bool:
    """Is `available` below the threshold named by `subject` (an amount, or a % of `granted`)?"""
    value = subject.removeprefix("below:")
    if value.endswith("%"):
        return granted > 0 and available * 100 < int(value[:-1]) * granted
    return available < int(value)


def _spike(rule: AlertRule, watch: Watch, signals: AccountSignals) -> tuple[bool, dict[str, Any]]:
    """Adds this change's consumption to its window; does the current window exceed factor x the average?"""
    window = int(signals.now.timestamp()) // rule.window_s
    buckets = {int(k): v for k, v in watch.data.get("windows", {}).items()}
    if signals.consumed:
        buckets[window] = buckets.get(window, 0) + signals.consumed
        watch.changed = True
    keep = {w: v for w, v in buckets.items() if window - rule.trailing_windows <= w <= window}
    if keep != buckets:
        watch.changed = True
    watch.data["windows"] = {str(w): v for w, v in sorted(keep.items())}
    current = keep.get(window, 0)
    trailing = sum(v for w, v in keep.items() if w < window)
    holds = trailing > 0 and Fraction(current * rule.trailing_windows) > Fraction(rule.factor) * trailing
    return holds, {"window_consumed": current, "trailing_average": str(Fraction(trailing, rule.trailing_windows))}


def _expiring(rule: AlertRule, signals: AccountSignals) -> int:
    horizon = signals.now + timedelta(days=rule.within_days)
    return sum(amount for until, amount in signals.expiring if signals.now < until <= horizon)


def evaluate(rule: AlertRule, watches: dict[str, Watch], signals: AccountSignals) -> list[AlertEvent]:
    """Advances every watch of `rule` for one account after one committed change; returns the events."""
    acct, kind = signals.account_id, rule.kind
    base = {"available": signals.available}
    events: list[AlertEvent] = []
    if kind is AlertKind.LOW_BALANCE:
        data = {**base, "granted_in_period": signals.granted_in_period} if rule.percent_thresholds else base
        for subject in subjects(rule):
            w = watches.setdefault(subject, Watch())
            holds = low_balance_holds(subject, signals.available, signals.granted_in_period)
            events += _step(rule, acct, subject, w, holds, data, True)
    elif kind is AlertKind.DEPLETED:
        w = watches.setdefault("depleted", Watch())
        events += _step(rule, acct, "depleted", w, signals.available <= 0, base, True)
    elif kind is AlertKind.EXPIRING:
        w = watches.setdefault("expiring", Watch())
        amount = _expiring(rule, signals)
        events += _step(rule, acct, "expiring", w, amount > rule.amount, {"expiring": amount}, False)
    elif kind is AlertKind.USAGE_SPIKE:
        w = watches.setdefault("usage_spike", Watch())
        holds, data = _spike(rule, w, signals)
        events += _step(rule, acct, "usage_spike", w, holds, data, False)
    elif kind is AlertKind.LARGE_ADJUSTMENT:
        for adj in signals.adjustments:
            if adj.amount > rule.amount:
                subject = f"{adj.kind.lower()}:{adj.lot_id}"
                events.append(AlertEvent(event_id(rule.rule_id, acct, subject, 1), FIRED_TYPE[kind], rule.rule_id,
                                         acct, subject, 1, {"kind": adj.kind, "amount": adj.amount,
                                                            "lot_id": adj.lot_id, "lot_type": adj.lot_type.value,
                                                            "granted_by": adj.granted_by}))
    elif kind is AlertKind.COMPENSATORY_BURST:
        for key, count in sorted(signals.burst_counts.items()):
            subject = f"key:{key}"
            w = watches.setdefault(subject, Watch())
            events += _step(rule, "", subject, w, count >= rule.count,
                            {"granted_by": key, "grants_in_window": count, "account_id": acct}, False)
    return events


def applicable(rules: list[AlertRule], account_id: str) -> list[AlertRule]:
    """The enabled rules that watch `account_id`: its own, and the tenant defaults of kinds it has none of."""
    own = {r.kind for r in rules if r.account_id == account_id and r.enabled}
    return [r for r in rules if r.enabled and (r.account_id == account_id
                                               or (not r.account_id and r.kind not in own))]
