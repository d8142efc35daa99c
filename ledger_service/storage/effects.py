"""Effects: every row one batch of operations will write, flushed in a few bulk statements.

Operations never write SQL themselves: they call `Effects.move(...)` etc., which updates the
in-memory lot (so the next operation in the same batch sees it) and queues the rows. `flush`
writes everything inside the caller's transaction — journal and projection together (SPEC §7).
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from ledger_service.domain.journal import BUCKETS, EntryKind, deltas
from ledger_service.domain.model import Allocation, Charge, Hold, HoldStatus, Lot
from ledger_service.storage.alert_watch import watch_changes
from service_runtime.audit import AuditRecord

# Everything a batch writes, in ONE statement: each data-modifying CTE inserts (or updates) rows
# unnest()ed from its columns; empty columns write nothing. One round trip instead of one per table
# matters on the hot path (see account_writer.py). All CTEs see the same snapshot, so lots created
# in this batch get their lot_balances row with final values instead of an insert and an update.
#
# Each column travels as ONE text parameter, its values joined by U+001F (U+001E for NULL) behind
# a leading separator; Postgres splits and casts it. Building a string is a C-level join here,
# where asyncpg's per-element array encoding cost ~50 µs per debit. Text values never contain
# those control characters: the API layer rejects them in every field that reaches the ledger.
_SEP, _NULL = "\x1f", "\x1e"

# A lot gets a balance checkpoint (lot_checkpoints, migration 0014) in the flush that takes its
# entry count across a multiple of CHECKPOINT_EVERY: the checkpoint is the lot's projection after
# that flush, written in the same statement and under the same account lock as the entries. An
# as-of read then replays at most about CHECKPOINT_EVERY entries per lot (storage/reads.py), however
# long the lot's history; VerifyJournal proves every checkpoint equals the replay up to it.
CHECKPOINT_EVERY = 1000

_TABLES: list[tuple[str, list[tuple[str, str]]]] = [
    ("lot", [("lot_id", "text"), ("account_id", "text"), ("lot_type", "text"), ("unit", "text"),
             ("amount", "bigint"), ("priority", "smallint"), ("effective_at", "timestamptz"),
             ("expires_at", "timestamptz"), ("kinds", "text"), ("names", "text"), ("cost_basis", "numeric"),
             ("source", "text"), ("reason_code", "text"), ("campaign_id", "text"), ("incident_id", "text"),
             ("granted_by", "text"), ("origin_lot_id", "text"), ("rollover_max_amount", "bigint"),
             ("rollover_max_percent", "smallint"), ("rollover_expires_after_s", "bigint")]),
    ("bal", [("lot_id", "text"), ("account_id", "text"), *[(b, "bigint") for b in BUCKETS],
             ("closed_at", "timestamptz"), ("entries", "bigint")]),
    ("upd", [("lot_id", "text"), *[(b, "bigint") for b in BUCKETS], ("closed_at", "timestamptz"),
             ("entries", "bigint")]),
    ("ent", [("account_id", "text"), ("lot_id", "text"), ("kind", "text"), ("amount", "bigint"), ("unit", "text"),
             ("effective_at", "timestamptz"), ("actor", "text"), ("reason", "text"), ("reference", "text"),
             ("hold_key", "text"), ("policy_version", "int")]),
    ("hld", [("hold_key", "text"), ("account_id", "text"), ("unit", "text"), ("requested", "bigint"),
             ("reserved", "bigint"), ("up_to", "boolean"), ("reference", "text"), ("policy_version", "int"),
             ("release_on_ttl", "boolean"), ("ttl_expires_at", "timestamptz"), ("charges", "jsonb")]),
    ("dbt", [("hold_key", "text"), ("account_id", "text"), ("unit", "text"), ("requested", "bigint"),
             ("reserved", "bigint"), ("up_to", "boolean"), ("reference", "text"), ("policy_version", "int"),
             ("charges", "text"), ("allocations", "text")]),
    # debit templates (`DebitTemplate`): their journal entries, then their debits rows, keyed by template `t`
    ("tje", [("t", "int"), ("pos", "int"), ("account_id", "text"), ("lot_id", "text"), ("kind", "text"),
             ("amount", "bigint"), ("unit", "text"), ("actor", "text"), ("reason", "text"), ("reference", "text"),
             ("policy_version", "int")]),
    ("tdb", [("t", "int"), ("account_id", "text"), ("unit", "text"), ("requested", "bigint"), ("reserved", "bigint"),
             ("up_to", "boolean"), ("reference", "text"), ("policy_version", "int"), ("charges", "text"),
             ("allocations", "text")]),
    ("alc", [("hold_key", "text"), ("position", "int"), ("charge_id", "text"), ("lot_id", "text"),
             ("amount", "bigint")]),
    ("res", [("hold_key", "text"), ("status", "text"), ("posted", "bigint"), ("released", "bigint"),
             ("reason", "text")]),
    ("pst", [("hold_key", "text"), ("position", "int"), ("posted", "bigint")]),
    ("rev", [("hold_key", "text"), ("policy", "text"), ("expired", "bigint")]),
    ("grc", [("lot_id", "text"), ("usable_until", "timestamptz")]),
    ("aud", [("tenant_id", "text"), ("key_id", "text"), ("role", "text"), ("method", "text"), ("code", "text"),
             ("detail", "text"), ("reason", "text"), ("subjects", "text"), ("request_id", "text")]),
    ("key", [("key", "text"), ("method", "text"), ("request_hash", "bytea"), ("response", "bytea")]),
    # templated debits (`Effects.debit_by_template`): per debit only its hold key and its template's index;
    # its journal entries and debits row are its template's, joined in SQL
    ("tdk", [("hold_key", "text"), ("t", "int")]),
]
# Sent as binary arrays (asyncpg encodes each element as it is): the columns with one value per debit of
# a batch, where a delimited text column costs Postgres a parse per value (and hex for bytea).
_BINARY = {"key", "tdk"}


def _source(name: str, first: int, present: frozenset[str]) -> tuple[str, int]:
    """`unnest(col1, col2, ...) AS name(...)` over parameters starting at $first: delimited text columns,
    or binary arrays for the tables in `_BINARY`; a table not `present` is an empty relation of the same
    columns, with no parameters."""
    cols = dict(_TABLES)[name]
    if name not in present:
        nulls = ", ".join(f"NULL::{typ}" for _, typ in cols)
        return f"(SELECT {nulls} WHERE false) AS {name}({', '.join(c for c, _ in cols)})", first
    if name in _BINARY:
        arrays = [f"${first + i}::{typ}[]" for i, (_, typ) in enumerate(cols)]
    else:
        arrays = [f"(string_to_array(${first + i}, chr(31), chr(30)))[2:]::{typ}[]" for i, (_, typ) in enumerate(cols)]
    return f"unnest({', '.join(arrays)}) AS {name}({', '.join(c for c, _ in cols)})", first + len(cols)


# The statement, as data-modifying CTEs, each with its `unnest(...)` source ({lot}, {bal}, ...) filled in by
# `_build_flush`. A CTE that only inserts one table's rows (its table named here) is left out of a flush
# with no such rows; the others are always there (an absent source is an empty relation).
_CTES: list[tuple[str, str | None, str]] = [
    ("new_lots", 'lot', """\
new_lots AS (
  INSERT INTO lots (tenant_id, lot_id, account_id, lot_type, unit, amount, priority, effective_at, expires_at,
                    scope_kinds, scope_names, cost_basis, source, reason_code, campaign_id, incident_id,
                    granted_by, origin_lot_id, rollover_max_amount, rollover_max_percent,
                    rollover_expires_after_s, created_at)
  SELECT $1, lot.lot_id, lot.account_id, lot.lot_type, lot.unit, lot.amount, lot.priority, lot.effective_at,
         lot.expires_at, string_to_array(lot.kinds, ','), string_to_array(lot.names, chr(29)), lot.cost_basis,
         lot.source, lot.reason_code, lot.campaign_id, lot.incident_id, lot.granted_by,
         NULLIF(lot.origin_lot_id, ''), lot.rollover_max_amount, lot.rollover_max_percent,
         lot.rollover_expires_after_s, $2
  FROM {lot}
)
"""),
    ("new_balances", None, """\
new_balances AS (
  INSERT INTO lot_balances (tenant_id, lot_id, account_id, {buckets}, closed_at, entries)
  SELECT $1, bal.* FROM {bal}
  RETURNING lot_id, account_id, {buckets}, entries, 0::bigint AS entries_before
)
"""),
    ("balances", None, """\
balances AS (
  UPDATE lot_balances b SET {bucket_updates}, closed_at = COALESCE(b.closed_at, upd.closed_at),
                            entries = b.entries + upd.entries
  FROM {upd}
  WHERE b.tenant_id = $1 AND b.lot_id = upd.lot_id
  RETURNING b.lot_id, b.account_id, {returned_buckets}, b.entries, b.entries - upd.entries AS entries_before
)
"""),
    ("ent_rows", None, """\
ent_rows AS (  -- n: the order the batch wrote them (entries, or templated debits: never both, see Effects)
  SELECT row_number() OVER () AS n, * FROM {ent}
  UNION ALL
  SELECT (d.n << 20) + tje.pos, tje.account_id, tje.lot_id, tje.kind, tje.amount, tje.unit, $2::timestamptz,
         tje.actor, tje.reason, tje.reference, d.hold_key, tje.policy_version
  FROM (SELECT row_number() OVER () AS n, * FROM {tdk}) d JOIN {tje} ON tje.t = d.t
)
"""),
    ("heads", None, """\
heads AS (  -- the next change number of every account this batch journals (see migration 0015)
  INSERT INTO account_heads (tenant_id, account_id, seq)
  SELECT DISTINCT $1, account_id, 1 FROM ent_rows
  ON CONFLICT (tenant_id, account_id) DO UPDATE SET seq = account_heads.seq + 1
  RETURNING account_id, seq
)
"""),
    ("entries", None, """\
entries AS (
  INSERT INTO journal (tenant_id, account_id, lot_id, kind, amount, unit, effective_at, recorded_at, actor,
                       reason, reference, hold_key, policy_version, account_seq)
  SELECT $1, ent.account_id, ent.lot_id, ent.kind, ent.amount, ent.unit, ent.effective_at, $2, ent.actor,
         ent.reason, ent.reference, ent.hold_key, ent.policy_version, heads.seq
  FROM ent_rows ent JOIN heads ON heads.account_id = ent.account_id
  ORDER BY ent.n  -- entry ids in the order the operations journaled
  RETURNING entry_id, lot_id
)
"""),
    ("checkpoints", None, """\
checkpoints AS (
  INSERT INTO lot_checkpoints (tenant_id, lot_id, account_id, through_entry_id, at, entries, {buckets})
  SELECT $1, p.lot_id, p.account_id, e.through_entry_id, $2, p.entries, {p_buckets}
  FROM (SELECT * FROM new_balances UNION ALL SELECT * FROM balances) p
  JOIN (SELECT lot_id, max(entry_id) AS through_entry_id FROM entries GROUP BY lot_id) e ON e.lot_id = p.lot_id
  WHERE p.entries / {every} > p.entries_before / {every}
)
"""),
    ("notified", None, """\
notified AS (  -- delivered to LISTENers at COMMIT, never for a rolled-back batch
  SELECT pg_notify('credits_balance', $1 || chr(31) || account_id || chr(31) || seq::text) FROM heads
)
"""),
    ("new_holds", 'hld', """\
new_holds AS (
  INSERT INTO holds (tenant_id, hold_key, account_id, unit, requested, reserved, up_to, reference,
                     policy_version, release_on_ttl, ttl_expires_at, charges, created_at)
  SELECT $1, hld.*, $2 FROM {hld}
)
"""),
    ("new_debits", None, """\
new_debits AS (
  INSERT INTO debits (tenant_id, hold_key, account_id, unit, requested, reserved, up_to, reference,
                      policy_version, charges, allocations, created_at)
  SELECT $1, dbt.*, $2 FROM {dbt}
  UNION ALL
  SELECT $1, tdk.hold_key, tdb.account_id, tdb.unit, tdb.requested, tdb.reserved, tdb.up_to, tdb.reference,
         tdb.policy_version, tdb.charges, tdb.allocations, $2
  FROM {tdk_again} JOIN {tdb} ON tdb.t = tdk.t
)
"""),
    ("allocations", 'alc', """\
allocations AS (
  INSERT INTO hold_allocations (tenant_id, hold_key, position, charge_id, lot_id, amount)
  SELECT $1, alc.* FROM {alc}
)
"""),
    ("resolutions", 'res', """\
resolutions AS (
  INSERT INTO hold_resolutions (tenant_id, hold_key, status, posted, released, reason, resolved_at)
  SELECT $1, res.*, $2 FROM {res}
)
"""),
    ("postings", 'pst', """\
postings AS (
  INSERT INTO hold_postings (tenant_id, hold_key, position, posted) SELECT $1, pst.* FROM {pst}
)
"""),
    ("reversals", 'rev', """\
reversals AS (
  INSERT INTO hold_reversals (tenant_id, hold_key, policy, expired_at_once, reversed_at)
  SELECT $1, rev.*, $2 FROM {rev}
)
"""),
    ("grace", 'grc', """\
grace AS (
  INSERT INTO lot_grace (tenant_id, lot_id, usable_until) SELECT $1, grc.* FROM {grc}
)
"""),
    ("audit", 'aud', """\
audit AS (
  INSERT INTO audit_log (tenant_id, key_id, role, method, code, detail, reason, subjects, request_id, at)
  SELECT aud.tenant_id, aud.key_id, aud.role, aud.method, aud.code, aud.detail, aud.reason,
         string_to_array(aud.subjects, chr(29)), aud.request_id, $2
  FROM {aud}
)
"""),
    ("keys", 'key', """\
keys AS (
  INSERT INTO idempotency_keys (tenant_id, key, method, request_hash, response, created_at)
  SELECT $1, key.key, key.method, key.request_hash, key.response, $2 FROM {key}
)
"""),
]
_FINAL = "SELECT (SELECT count(*) FROM notified)"


@functools.cache
def _build_flush(present: frozenset[str]) -> str:
    """The flush statement for a batch with rows for the `present` tables; its parameters are $1 (tenant),
    $2 (now), then the columns of each present table in `_TABLES` order."""
    n = 3
    src: dict[str, str] = {}
    for name, _ in _TABLES:
        src[name], n = _source(name, n, present)
    tdk_first = n - len(dict(_TABLES)["tdk"])  # the templated debits' columns are read twice
    src["tdk_again"] = _source("tdk", tdk_first, present)[0]
    bucket_updates = ", ".join(f"{b} = b.{b} + upd.{b}" for b in BUCKETS)
    ctes = ",\n".join(text for _, leaf, text in _CTES if leaf is None or leaf in present)
    return ("WITH\n" + ctes + "\n" + _FINAL).format(
        **src, buckets=", ".join(BUCKETS), bucket_updates=bucket_updates,
        returned_buckets=", ".join(f"b.{b}" for b in BUCKETS), p_buckets=", ".join(f"p.{b}" for b in BUCKETS),
        every=CHECKPOINT_EVERY)



def _text(value: Any) -> str:
    if value is None:
        return _NULL
    if value is True:
        return "t"
    if value is False:
        return "f"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[str]:
    """Row tuples → one delimited text parameter per column."""
    if not rows:
        return [""] * width
    out = []
    for col in zip(*rows, strict=True):
        kinds = set(map(type, col))  # C loops only: a batch of debits has thousands of rows
        kind = next(iter(kinds)) if len(kinds) == 1 else None
        if kind is str:
            out.append(_SEP + _SEP.join(col))  # type: ignore[arg-type]
        elif kind is int:
            out.append(_SEP + _SEP.join(map(str, col)))
        elif kind is bytes:
            out.append(_SEP + _SEP.join(map(bytes.hex, col)))  # type: ignore[arg-type]
        elif all(issubclass(k, datetime) for k in kinds):
            # a batch's instants are mostly its one `now`: each distinct instant formatted once
            shown = {v: v.isoformat() for v in set(col)}
            out.append(_SEP + _SEP.join(map(shown.__getitem__, col)))
        else:
            out.append(_SEP + _SEP.join(map(_text, col)))
    return out


_INDEX = {b: i for i, b in enumerate(BUCKETS)}
_ENTRIES = len(BUCKETS)  # the entry counter's slot in a lot's delta row
# `deltas(kind, 1)` as ((bucket, sign, slot), (bucket, sign, slot)) per kind, for `Effects.move` (hot path)
_MOVES = {kind: tuple((b, d, _INDEX[b]) for b, d in deltas(kind, 1).items()) for kind in EntryKind}


@dataclass(frozen=True, slots=True)
class EntryContext:
    """Who and why, copied onto every journal entry an operation writes."""

    actor: str = ""
    reason: str = ""
    reference: str = ""
    hold_key: str = ""
    policy_version: int = 0


@dataclass(frozen=True, slots=True)
class DebitTemplate:
    """Everything a debit writes but its hold key, shared by the debits of a batch that took the same
    amounts from the same lots: its journal entries (`takes`: (lot_id, amount) in allocation order, kind
    DEBIT, effective at the flush's instant, no reason) and its `debits` row. A debit written through a
    template (`Effects.debit_by_template`) writes exactly the rows `move_as` and a debit row would."""

    account_id: str
    unit: str
    takes: tuple[tuple[str, int], ...]
    actor: str
    reference: str
    policy_version: int
    requested: int
    reserved: int
    up_to: bool
    charges_json: str
    allocations_json: str

    def entry_rows(self, now: datetime, hold_key: str) -> list[tuple[object, ...]]:
        """The journal entries of one debit, as `move_as` queues them."""
        return [(self.account_id, lot_id, EntryKind.DEBIT.value, amount, self.unit, now, self.actor, "",
                 self.reference, hold_key, self.policy_version) for lot_id, amount in self.takes]

    def debit_row(self, hold_key: str) -> tuple[str, str, str, int, int, bool, str, int, str, str]:
        return (hold_key, self.account_id, self.unit, self.requested, self.reserved, self.up_to, self.reference,
                self.policy_version, self.charges_json, self.allocations_json)


@dataclass
class Effects:
    tenant_id: str
    now: datetime
    entries: list[tuple[object, ...]] = field(default_factory=list)
    # per lot: bucket changes, then the number of entries written (the projection's `entries`)
    lot_deltas: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0] * (len(BUCKETS) + 1)))
    created_entries: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    closed: dict[str, datetime] = field(default_factory=dict)
    new_lots: list[Lot] = field(default_factory=list)
    holds: list[Hold] = field(default_factory=list)
    debits: list[Hold] = field(default_factory=list)
    # debits rows already in column order (hold_key, account_id, unit, requested, reserved, up_to, reference,
    # policy_version, charges JSON, allocations JSON): a batch of debits builds no Hold per debit
    debit_rows: list[tuple[str, str, str, int, int, bool, str, int, str, str]] = field(default_factory=list)
    resolutions: list[tuple[str, str, int, int, str]] = field(default_factory=list)
    postings: list[tuple[str, int, int]] = field(default_factory=list)
    reversals: list[tuple[str, str, int]] = field(default_factory=list)
    grace: list[tuple[str, datetime]] = field(default_factory=list)
    idempotency: list[tuple[str, str, bytes, bytes]] = field(default_factory=list)
    audit: list[AuditRecord] = field(default_factory=list)
    # Debits written through templates (a batch of debits): per debit its hold key and template index,
    # per template how many debits use it. Never queued beside `entries` (see `debit_by_template`), so
    # the flush orders either the entries or the templated debits, each as they were queued.
    templates: list[DebitTemplate] = field(default_factory=list)
    template_uses: list[int] = field(default_factory=list)
    templated_keys: list[str] = field(default_factory=list)
    templated: list[int] = field(default_factory=list)
    # The locked accounts' in-memory states, when the writer has them (alert_watch reads balances from them).
    states: dict[str, Any] = field(default_factory=dict)
    _created: set[str] = field(default_factory=set)

    def move(self, lot: Lot, kind: EntryKind, amount: int, ctx: EntryContext,
             effective_at: datetime | None = None) -> None:
        """Moves `amount` between two buckets of `lot` and journals it."""
        self.move_as(lot, kind, amount, effective_at or self.now, ctx.actor, ctx.reason, ctx.reference, ctx.hold_key,
                     ctx.policy_version)

    def move_as(self, lot: Lot, kind: EntryKind, amount: int, effective_at: datetime, actor: str, reason: str,
                reference: str, hold_key: str, policy_version: int) -> None:
        """`move` with the context's fields given one by one (a batch of debits builds no context per debit)."""
        if self.templated:
            self._expand_templated()
        self._shift(lot, kind, amount)
        self.entries.append((
            lot.account_id, lot.lot_id, kind.value, amount, lot.unit, effective_at, actor, reason, reference, hold_key,
            policy_version,
        ))

    def add_template(self, template: DebitTemplate) -> int:
        """Registers a debit template for this flush; its index for `debit_by_template`."""
        self.templates.append(template)
        self.template_uses.append(0)
        return len(self.templates) - 1

    def debit_by_template(self, t: int, hold_key: str, lots: Sequence[Lot]) -> None:
        """A debit whose journal entries and debits row are template `t`'s with `hold_key`: takes each of
        the template's amounts from `lots` (the template's lots, in its order) as `move_as` would."""
        template = self.templates[t]
        for lot, (lot_id, amount) in zip(lots, template.takes, strict=True):
            assert lot.lot_id == lot_id and lot.account_id == template.account_id and lot.unit == template.unit
            self._shift(lot, EntryKind.DEBIT, amount)
        if self.entries:  # entries queued first: keep one order, these rows follow them
            self.entries.extend(template.entry_rows(self.now, hold_key))
            self.debit_rows.append(template.debit_row(hold_key))
            return
        self.templated_keys.append(hold_key)
        self.templated.append(t)
        self.template_uses[t] += 1

    def _expand_templated(self) -> None:
        """The templated debits as plain entries and debit rows (an entry is about to follow them)."""
        for hold_key, t in zip(self.templated_keys, self.templated, strict=True):
            template = self.templates[t]
            self.entries.extend(template.entry_rows(self.now, hold_key))
            self.debit_rows.append(template.debit_row(hold_key))
            self.template_uses[t] -= 1
        self.templated_keys.clear()
        self.templated.clear()

    def _shift(self, lot: Lot, kind: EntryKind, amount: int) -> None:
        """Moves `amount` between the two buckets of `kind` in `lot`, and counts the entry for the projection."""
        assert amount > 0, "journal amounts are positive"
        (src, src_sign, src_i), (dst, _, dst_i) = _MOVES[kind]
        setattr(lot, src, getattr(lot, src) + src_sign * amount)
        setattr(lot, dst, getattr(lot, dst) + amount)
        if lot.lot_id in self._created:
            self.created_entries[lot.lot_id] += 1
        else:
            row = self.lot_deltas[lot.lot_id]
            row[src_i] += src_sign * amount
            row[dst_i] += amount
            row[_ENTRIES] += 1
        assert lot.available >= 0 and lot.held >= 0, f"lot {lot.lot_id} would go negative"

    def create(self, lot: Lot) -> None:
        """A new lot: inserted with its final balances at flush."""
        self.new_lots.append(lot)
        self._created.add(lot.lot_id)

    def close(self, lot: Lot) -> None:
        if lot.closed_at is None:
            lot.closed_at = self.now
            if lot.lot_id not in self._created:
                self.closed[lot.lot_id] = self.now
                _ = self.lot_deltas[lot.lot_id]  # a delta row, so closed_at is written

    def resolve(self, hold: Hold, status: HoldStatus, posted: int, released: int, reason: str) -> None:
        hold.status, hold.posted, hold.released, hold.resolved_at = status, posted, released, self.now
        self.resolutions.append((hold.hold_key, status.value, posted, released, reason))

    def remember(self, key: str, method: str, request_hash: bytes, response: bytes) -> None:
        self.idempotency.append((key, method, request_hash, response))

    def is_empty(self) -> bool:
        return not (self.new_lots or self.entries or self.lot_deltas or self.holds or self.debits or self.debit_rows
                    or self.templated or self.resolutions or self.postings or self.reversals or self.grace
                    or self.idempotency or self.audit)

    async def flush(self, conn: asyncpg.Connection) -> None:
        """Writes every queued row in one statement, inside the caller's transaction."""
        if self.is_empty():
            return
        ls, hs = self.new_lots, self.holds
        lots = [(x.lot_id, x.account_id, x.lot_type.value, x.unit, x.amount, x.priority, x.effective_at,
                 x.expires_at, ",".join(sorted(k.value for k in x.scope.kinds)), chr(29).join(sorted(x.scope.names)),
                 x.cost_basis, x.source, x.reason_code, x.campaign_id, x.incident_id, x.granted_by, x.origin_lot_id,
                 *_rollover_columns(x)) for x in ls]
        new_balances = [(x.lot_id, x.account_id, *(getattr(x, b) for b in BUCKETS), x.closed_at,
                         self.created_entries.get(x.lot_id, 0)) for x in ls]
        ids = list(self.lot_deltas)
        updates = [(i, *self.lot_deltas[i][:_ENTRIES], self.closed.get(i), self.lot_deltas[i][_ENTRIES]) for i in ids]
        as_json = _JsonMemo()
        holds = [(h.hold_key, h.account_id, h.unit, h.requested, h.reserved, h.up_to, h.reference, h.policy_version,
                  h.release_on_ttl, h.ttl_expires_at, as_json.charges(h.charges)) for h in hs]
        allocations = [(h.hold_key, a.position, a.charge_id, a.lot_id, a.amount) for h in hs for a in h.allocations]
        debits = [(h.hold_key, h.account_id, h.unit, h.requested, h.reserved, h.up_to, h.reference, h.policy_version,
                   as_json.charges(h.charges), as_json.allocations(h.allocations)) for h in self.debits]
        debits += self.debit_rows
        used = [(t, x) for t, x in enumerate(self.templates) if self.template_uses[t]]
        template_entries = [(t, pos, x.account_id, lot_id, EntryKind.DEBIT.value, amount, x.unit, x.actor, "",
                             x.reference, x.policy_version)
                            for t, x in used for pos, (lot_id, amount) in enumerate(x.takes)]
        template_debits = [(t, x.account_id, x.unit, x.requested, x.reserved, x.up_to, x.reference, x.policy_version,
                            x.charges_json, x.allocations_json) for t, x in used]
        keys = self.idempotency
        audit = [(a.tenant_id, a.key_id, a.role, a.method, a.code, a.detail, a.reason, chr(29).join(a.subjects),
                  a.request_id) for a in self.audit]
        rows: dict[str, list[Any]] = {
            "lot": lots, "bal": new_balances, "upd": updates, "ent": self.entries, "hld": holds, "dbt": debits,
            "tje": template_entries, "tdb": template_debits, "alc": allocations, "res": self.resolutions,
            "pst": self.postings, "rev": self.reversals, "grc": self.grace, "aud": audit, "key": keys,
            "tdk": self.templated_keys}
        present = frozenset(name for name, _ in _TABLES if rows[name])
        args: list[Any] = []
        for name, cols in _TABLES:
            if name not in present:
                continue
            if name == "key":
                args += [[k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], [k[3] for k in keys]]
            elif name == "tdk":
                args += [self.templated_keys, self.templated]
            else:
                args += _columns(rows[name], len(cols))
        await conn.execute(_build_flush(present), self.tenant_id, self.now, *args)
        await watch_changes(conn, self)  # alert rules, in this transaction (storage/alert_watch.py)


def _rollover_columns(lot: Lot) -> tuple[int | None, int | None, int | None]:
    """(max_amount, max_percent, expires_after_s); all None without a rollover policy."""
    r = lot.rollover
    return (None, None, None) if r is None else (r.max_amount, r.max_percent, r.expires_after_s)


def _charges_json(charges: Sequence[Charge]) -> str:
    return json.dumps([
        {"charge_id": c.charge_id, "kind": c.kind.value, "name": c.name, "amount": c.amount,
         "service_start": c.service_start.isoformat(), "service_end": c.service_end.isoformat()}
        for c in charges
    ])


def debit_json(charges: Sequence[Charge], allocations: Sequence[Allocation]) -> tuple[str, str]:
    """A debits row's charges and allocations columns, as `flush` writes them for a debit's Hold."""
    return _charges_json(charges), _allocations_json(allocations)


def _allocations_json(allocations: Sequence[Allocation]) -> str:
    return json.dumps([[a.position, a.charge_id, a.lot_id, a.amount, a.lot_type.value] for a in allocations])


class _JsonMemo:
    """One flush's JSON columns of holds and debits, each distinct value encoded once: the debits of a
    batch mostly carry equal charges (and equal allocations), and json.dumps was ~10 % of a batch."""

    def __init__(self) -> None:
        self._charges: dict[tuple[Charge, ...], str] = {}
        self._allocations: dict[tuple[Allocation, ...], str] = {}

    def charges(self, charges: Sequence[Charge]) -> str:
        key = tuple(charges)
        found = self._charges.get(key)
        if found is None:
            found = self._charges[key] = _charges_json(key)
        return found

    def allocations(self, allocations: Sequence[Allocation]) -> str:
        key = tuple(allocations)
        found = self._allocations.get(key)
        if found is None:
            found = self._allocations[key] = _allocations_json(key)
        return found
