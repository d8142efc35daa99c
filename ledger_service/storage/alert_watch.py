"""The alerts' consumer of ledger changes: evaluated inside the transaction that writes the change.

`Effects.flush` calls `watch_changes` right after writing a batch, in the same transaction, with the
accounts the batch locked (the AccountWriter's group commit, a transfer's two accounts). It reads the
tenant's live rules (one indexed query; nothing more when there are none), and for each rule that
the change can move — same account (or a tenant default), same unit — it loads the watches, the
account's balance signals after the change, advances the state machines (ledger_service.domain.alerts),
and writes the changed watches, the new events (the outbox) and one webhook delivery per subscribed
endpoint, all before COMMIT. A rolled-back batch leaves no event; a retried or replayed request writes
no entries, so it moves no watch: one event per crossing.

Evaluation sees committed states: a dip and recovery inside one group-commit transaction is not a
crossing (no reader could ever observe it). Time alone moves EXPIRING rules: they are evaluated on the
account's next change (an expiry sweep is one).
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg

from ledger_service.domain.alerts import (
    AccountSignals,
    Adjustment,
    AlertEvent,
    AlertKind,
    AlertRule,
    Watch,
    applicable,
    evaluate,
)
from ledger_service.domain.journal import EntryKind
from ledger_service.domain.model import LotType
from ledger_service.storage.state import SELECT_OPEN_LOTS, lot_from_row
from ledger_service.storage.topup_watch import watch_topup
from service_runtime.amounts import format_minor

if TYPE_CHECKING:
    from ledger_service.storage.effects import Effects

NOTIFY_CHANNEL = "credits_webhooks"
AMOUNT_KEYS = ("available", "granted_in_period", "expiring", "window_consumed", "trailing_average", "amount")

# The live alert rules and top-up policies the batch's accounts may move, in one round trip.
SELECT_LIVE = """
SELECT (SELECT coalesce(json_agg(r), '[]') FROM (
          SELECT rule_id, account_id, unit, scale, kind, params, created_by, created_at FROM alert_rules
          WHERE tenant_id = $1 AND disabled_at IS NULL AND (account_id = '' OR account_id = ANY($2::text[]))) r
       ) AS rules,
       (SELECT coalesce(json_agg(p), '[]') FROM (
          SELECT * FROM topup_policies WHERE tenant_id = $1 AND account_id = ANY($2::text[]) AND disabled_at IS NULL) p
       ) AS topups,
       (SELECT coalesce(json_agg(w), '[]') FROM (
          SELECT rule_id, account_id, subject, firing, crossings, data FROM alert_watches
          WHERE tenant_id = $1 AND account_id = ANY($2::text[])) w
       ) AS watches
"""
SELECT_WATCHES = """
SELECT w.rule_id, w.account_id, w.subject, w.firing, w.crossings, w.data
FROM unnest($2::text[], $3::text[]) AS k(rule_id, account_id)
JOIN alert_watches w ON w.tenant_id = $1 AND w.rule_id = k.rule_id AND w.account_id = k.account_id
"""
UPSERT_WATCHES = """
INSERT INTO alert_watches (tenant_id, rule_id, account_id, subject, firing, crossings, data, updated_at)
SELECT $1, w.rule_id, w.account_id, w.subject, w.firing, w.crossings, w.data::jsonb, $2
FROM unnest($3::text[], $4::text[], $5::text[], $6::boolean[], $7::int[], $8::text[])
     AS w(rule_id, account_id, subject, firing, crossings, data)
ON CONFLICT (tenant_id, rule_id, account_id, subject) DO UPDATE
SET firing = EXCLUDED.firing, crossings = EXCLUDED.crossings, data = EXCLUDED.data, updated_at = EXCLUDED.updated_at
"""
# The event, and its deliveries to every endpoint subscribed to its type, in one statement.
INSERT_EVENTS = """
WITH events AS (
  INSERT INTO alert_events (tenant_id, event_id, event_type, rule_id, account_id, subject, crossing, payload,
                            occurred_at)
  SELECT $1, e.event_id, e.event_type, e.rule_id, e.account_id, e.subject, e.crossing, e.payload, $2
  FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::int[], $9::text[])
       AS e(event_id, event_type, rule_id, account_id, subject, crossing, payload)
  ON CONFLICT (tenant_id, event_id) DO NOTHING
  RETURNING event_id, event_type
)
INSERT INTO webhook_deliveries (tenant_id, event_id, endpoint_id, event_type, status, next_attempt_at, created_at)
SELECT $1, e.event_id, p.endpoint_id, e.event_type, 'PENDING', $2, $2
FROM events e JOIN webhook_endpoints p
  ON p.tenant_id = $1 AND (cardinality(p.event_types) = 0 OR e.event_type = ANY(p.event_types))
ON CONFLICT DO NOTHING
"""
SELECT_GRANTED_IN_PERIOD = """
SELECT coalesce(sum(amount), 0)::bigint FROM lots
WHERE tenant_id = $1 AND account_id = $2 AND unit = $3 AND effective_at <= $4
  AND (expires_at IS NULL OR expires_at > $4)
"""
COUNT_COMPENSATORY = """
SELECT count(*) FROM lots WHERE tenant_id = $1 AND granted_by = $2 AND unit = $3 AND lot_type = 'COMPENSATORY'
  AND created_at > $4 AND created_at <= $5
"""


def rule_from_row(r: asyncpg.Record | dict[str, Any]) -> AlertRule:
    p = json.loads(r["params"]) if isinstance(r["params"], str) else r["params"]
    created_at = r["created_at"]
    if isinstance(created_at, str):  # from json_agg
        created_at = datetime.fromisoformat(created_at)
    return AlertRule(
        rule_id=r["rule_id"], account_id=r["account_id"], unit=r["unit"], scale=r["scale"], kind=AlertKind(r["kind"]),
        thresholds=tuple(p.get("thresholds", ())), percent_thresholds=tuple(p.get("percent_thresholds", ())),
        amount=p.get("amount", 0), within_days=p.get("within_days", 0), window_s=p.get("window_s", 0),
        factor=p.get("factor", ""), trailing_windows=p.get("trailing_windows", 0), count=p.get("count", 0),
        enabled=r["disabled_at"] is None if "disabled_at" in r else True,
        created_at=created_at, created_by=r["created_by"],
    )


_CONSUMING = frozenset({EntryKind.DEBIT.value, EntryKind.POST.value})
_GRANT = EntryKind.GRANT.value


class _Change:
    """The batch's entries per account and unit: consumption and adjustments."""

    def __init__(self, fx: Effects) -> None:
        new = {lot.lot_id: lot for lot in fx.new_lots}
        self.units: dict[str, set[str]] = defaultdict(set)
        self.consumed: dict[tuple[str, str], int] = defaultdict(int)
        self.adjustments: dict[tuple[str, str], list[Adjustment]] = defaultdict(list)
        self.compensatory: dict[str, set[str]] = defaultdict(set)  # unit -> granting keys
        units, consumed = self.units, self.consumed
        for entry in fx.entries:  # a batch of debits has thousands: no per-entry work beyond the sums
            account_id, lot_id, kind, amount, unit = entry[0], entry[1], entry[2], entry[3], entry[4]
            assert isinstance(account_id, str) and isinstance(unit, str) and isinstance(amount, int)
            units[account_id].add(unit)
            if kind in _CONSUMING:  # neither a grant nor a void
                consumed[(account_id, unit)] += amount
                continue
            lot = new.get(str(lot_id)) if new else None
            if kind == _GRANT and lot is not None and not lot.origin_lot_id:
                self.adjustments[(account_id, unit)].append(
                    Adjustment(lot.lot_id, kind, amount, lot.lot_type, lot.granted_by))
                if lot.lot_type is LotType.COMPENSATORY:
                    self.compensatory[unit].add(lot.granted_by)
            elif kind == EntryKind.VOID.value:
                voided = Adjustment(str(lot_id), kind, amount, LotType.PURCHASED, "")
                self.adjustments[(account_id, unit)].append(voided)
        for template, uses in zip(fx.templates, fx.template_uses, strict=True):  # templated debits: DEBIT entries
            if uses:
                units[template.account_id].add(template.unit)
                consumed[(template.account_id, template.unit)] += uses * sum(amount for _, amount in template.takes)


async def watch_changes(conn: asyncpg.Connection, fx: Effects) -> None:
    """Advances every alert rule the batch in `fx` can move; writes events and deliveries (same transaction)."""
    change = _Change(fx)
    if not change.units:
        return
    live = await conn.fetchrow(SELECT_LIVE, fx.tenant_id, list(change.units))
    rules = [rule_from_row(r) for r in json.loads(live["rules"])]
    policies = [p for p in json.loads(live["topups"]) if p["unit"] in change.units[p["account_id"]]]
    if not rules and not policies:
        return
    events: list[tuple[AlertRule, AlertEvent]] = []
    signals: dict[tuple[str, str], AccountSignals] = {}
    for policy in policies:
        at = (policy["account_id"], policy["unit"])
        if at not in signals:
            signals[at] = await _signals(conn, fx, change, *at)
        await watch_topup(conn, fx.tenant_id, fx.now, policy, signals[at].available)
    if not rules:
        return
    plan: list[tuple[AlertRule, str]] = []  # (rule, account evaluated)
    for account_id, units in change.units.items():
        plan += [(r, account_id) for r in applicable(rules, account_id)
                 if r.unit in units and r.kind is not AlertKind.COMPENSATORY_BURST]
    bursts = [r for r in rules if r.kind is AlertKind.COMPENSATORY_BURST and r.enabled and change.compensatory[r.unit]]
    if not plan and not bursts:
        return
    watches: dict[tuple[str, str], dict[str, Watch]] = {(r.rule_id, a): {} for r, a in plan}
    for w in json.loads(live["watches"]):
        if (w["rule_id"], w["account_id"]) in watches:
            watches[(w["rule_id"], w["account_id"])][w["subject"]] = Watch(w["firing"], w["crossings"], w["data"])
    if bursts:  # tenant-wide watches (account ''): read only when a compensatory grant happened
        watches.update(await _load_watches(conn, fx.tenant_id, [(r.rule_id, "") for r in bursts]))
    granted_read: set[tuple[str, str]] = set()
    for rule, account_id in plan:
        at = (account_id, rule.unit)
        sig = signals.get(at)
        if sig is None:
            sig = signals[at] = await _signals(conn, fx, change, account_id, rule.unit)
        if rule.kind is AlertKind.LOW_BALANCE and rule.percent_thresholds and at not in granted_read:
            granted_read.add(at)
            sig.granted_in_period = await conn.fetchval(SELECT_GRANTED_IN_PERIOD, fx.tenant_id, account_id,
                                                        rule.unit, fx.now)
        events += [(rule, e) for e in evaluate(rule, watches[(rule.rule_id, account_id)], sig)]
    for rule in bursts:
        sig = AccountSignals("", rule.unit, fx.now, burst_counts=await _burst_counts(conn, fx, rule, change))
        events += [(rule, e) for e in evaluate(rule, watches[(rule.rule_id, "")], sig)]
    await _write(conn, fx, watches, events)


async def _load_watches(conn: asyncpg.Connection, tenant_id: str,
                        pairs: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Watch]]:
    out: dict[tuple[str, str], dict[str, Watch]] = {p: {} for p in pairs}
    found = await conn.fetch(SELECT_WATCHES, tenant_id, [p[0] for p in pairs], [p[1] for p in pairs])
    for r in found:
        out[(r["rule_id"], r["account_id"])][r["subject"]] = Watch(r["firing"], r["crossings"], json.loads(r["data"]))
    return out


async def _signals(conn: asyncpg.Connection, fx: Effects, change: _Change, account_id: str,
                   unit: str) -> AccountSignals:
    """The account's available credit in `unit` after the change (as GetBalance counts it: effective
    lots not past their usable window), what of it expires when, and the change's consumption."""
    sig = AccountSignals(account_id, unit, fx.now, consumed=change.consumed[(account_id, unit)],
                         adjustments=change.adjustments[(account_id, unit)])
    state = fx.states.get(account_id)
    if state is not None:  # the batch's own view of the account's open lots, after its operations
        known = {lot.lot_id: lot for lot in state.lots.values() if lot.account_id == account_id}
        lots = [*known.values(), *(x for x in fx.new_lots if x.account_id == account_id and x.lot_id not in known)]
    else:
        lots = [lot_from_row(r) for r in await conn.fetch(SELECT_OPEN_LOTS, fx.tenant_id, account_id, [])]
    for lot in lots:
        if lot.unit != unit or lot.effective_at > fx.now or lot.is_past_usable(fx.now):
            continue
        sig.available += lot.available
        if lot.usable_until is not None and lot.available:
            sig.expiring.append((lot.usable_until, lot.available))
    return sig


async def _burst_counts(conn: asyncpg.Connection, fx: Effects, rule: AlertRule, change: _Change) -> dict[str, int]:
    """COMPENSATORY grants per granting key in the rule's window, under a lock per (rule, key): two
    accounts' batches granting by the same key take turns, so the second counts the first's lot."""
    counts: dict[str, int] = {}
    since = fx.now - timedelta(seconds=rule.window_s)
    for key in sorted(change.compensatory[rule.unit]):
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                           f"alert-burst/{fx.tenant_id}/{rule.rule_id}/{key}")
        counts[key] = await conn.fetchval(COUNT_COMPENSATORY, fx.tenant_id, key, rule.unit, since, fx.now)
    return counts


def payload(tenant_id: str, rule: AlertRule, event: AlertEvent, at: datetime) -> str:
    """The webhook body: amounts as decimal strings in the rule's unit."""
    data = {k: format_minor(int(v), rule.scale) if k in AMOUNT_KEYS else v for k, v in event.data.items()}
    if event.subject.startswith("below:") and not event.subject.endswith("%"):
        data["threshold"] = format_minor(int(event.subject.removeprefix("below:")), rule.scale)
    body = {"id": event.event_id, "type": event.event_type, "created_at": at.isoformat(), "tenant_id": tenant_id,
            "account_id": event.account_id, "rule_id": rule.rule_id, "rule_kind": rule.kind.value,
            "unit": rule.unit, "subject": event.subject, "crossing": event.crossing, "data": data}
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


async def _write(conn: asyncpg.Connection, fx: Effects, watches: dict[tuple[str, str], dict[str, Watch]],
                 events: list[tuple[AlertRule, AlertEvent]]) -> None:
    changed = [(rule_id, account_id, subject, w) for (rule_id, account_id), by_subject in watches.items()
               for subject, w in by_subject.items() if w.changed]
    if changed:
        await conn.execute(UPSERT_WATCHES, fx.tenant_id, fx.now, [c[0] for c in changed], [c[1] for c in changed],
                           [c[2] for c in changed], [c[3].firing for c in changed], [c[3].crossings for c in changed],
                           [json.dumps(c[3].data) for c in changed])
    if events:
        es = [e for _, e in events]
        await conn.execute(INSERT_EVENTS, fx.tenant_id, fx.now, [e.event_id for e in es], [e.event_type for e in es],
                           [e.rule_id for e in es], [e.account_id for e in es], [e.subject for e in es],
                           [e.crossing for e in es], [payload(fx.tenant_id, r, e, fx.now) for r, e in events])
        await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)  # delivered at COMMIT, dropped on rollback
