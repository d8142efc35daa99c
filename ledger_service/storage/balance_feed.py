"""The ledger's own commits, fanned out to WatchBalance streams: Postgres LISTEN/NOTIFY, not polling.

Every batch that journals entries for an account stamps them with the account's next change number
and NOTIFYs `credits_balance` with `tenant, account, seq` in the same transaction (storage/effects.py,
migration 0015): Postgres delivers it only after COMMIT, and never for a rolled-back batch.

`BalanceFeed` keeps one LISTEN connection per server process while anything watches. Per watched
account an `AccountChannel` holds the balance at its last sequence and the recent changes; on each
notification it reads the changes after its sequence ONCE (however many streams watch the account)
and wakes its streams. Reading "everything after my sequence" rather than trusting the payload
makes a lost or coalesced notification harmless; when the LISTEN connection is lost, every channel
re-reads once it is back.

Invariant: a channel's changes are contiguous (seq, seq + 1, ...). The head row lock makes sequence
order commit order per account, so what is visible after N always starts at N + 1; a read that does
not is a bug and is logged, and the channel starts over from a snapshot (streams get RESYNC).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from ledger_service.domain.journal import Entry, EntryKind, deltas
from service_runtime.rejections import not_found

log = logging.getLogger(__name__)
CHANNEL = "credits_balance"
RECENT = 2048          # changes a channel keeps for streams that lag or resume
MAX_REPLAY = 10_000    # a resume further back than this is answered with RESYNC

SELECT_SNAPSHOT = """
SELECT (SELECT count(*) FROM accounts WHERE tenant_id = $1 AND account_id = $2) AS found,
       COALESCE((SELECT seq FROM account_heads WHERE tenant_id = $1 AND account_id = $2), 0) AS seq
"""
SELECT_BALANCES = """
SELECT l.unit, sum(b.available)::bigint AS available, sum(b.held)::bigint AS held
FROM lot_balances b JOIN lots l ON l.tenant_id = b.tenant_id AND l.lot_id = b.lot_id
WHERE b.tenant_id = $1 AND b.account_id = $2 GROUP BY l.unit
"""
SELECT_CHANGES = """
SELECT account_seq, entry_id, account_id, lot_id, kind, amount, unit, effective_at, recorded_at, actor, reason,
       reference, hold_key, policy_version
FROM journal WHERE tenant_id = $1 AND account_id = $2 AND account_seq > $3 AND account_seq <= $4
ORDER BY account_seq, entry_id
"""

Balances = dict[str, tuple[int, int]]  # unit -> (available, held)


@dataclass(frozen=True, slots=True)
class Change:
    seq: int
    recorded_at: datetime | None
    balances: Balances               # after the change, every unit of the account
    entries: tuple[Entry, ...] = ()
    # the change as the API packed it, per form, so a thousand streams of one account pack it once
    packed: dict[object, object] = field(default_factory=dict, compare=False, repr=False)


def apply(balances: Balances, entries: tuple[Entry, ...], sign: int = 1) -> Balances:
    out = dict(balances)
    for e in entries:
        d = deltas(e.kind, e.amount)
        available, held = out.get(e.unit, (0, 0))
        out[e.unit] = (available + sign * d.get("available", 0), held + sign * d.get("held", 0))
    return out


def _group(rows: list[asyncpg.Record]) -> list[tuple[int, tuple[Entry, ...]]]:
    by_seq: dict[int, list[Entry]] = {}
    for r in rows:
        by_seq.setdefault(r["account_seq"], []).append(Entry(
            r["entry_id"], r["account_id"], r["lot_id"], EntryKind(r["kind"]), r["amount"], r["unit"],
            r["effective_at"], r["recorded_at"], r["actor"], r["reason"], r["reference"], r["hold_key"],
            r["policy_version"]))
    return [(seq, tuple(entries)) for seq, entries in by_seq.items()]


def changes_after(recent: deque[Change], after: int) -> list[Change]:
    """The kept changes after `after`, oldest first: walked from the newest end, so a stream that is a
    change or two behind costs that much, not the length of what is kept."""
    out: list[Change] = []
    for change in reversed(recent):
        if change.seq <= after:
            break
        out.append(change)
    out.reverse()
    return out


class Gap(Exception):
    """The changes read were not contiguous with the channel's sequence (a bug: see the module notes)."""


@dataclass
class AccountChannel:
    tenant_id: str
    account_id: str
    pool: asyncpg.Pool
    seq: int = 0
    balances: Balances = field(default_factory=dict)
    recent: deque[Change] = field(default_factory=lambda: deque(maxlen=RECENT))
    # set (and replaced by a fresh one) after every catch-up: streams wait on it without a lock, so a
    # change wakes a thousand streams of the account in one loop pass (a Condition re-takes its lock
    # once per waiter, one waiter per pass, and holds the next catch-up behind them)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    epoch: int = 0         # bumped when the channel starts over from a snapshot
    watchers: int = 0
    task: asyncio.Task[None] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    error: BaseException | None = None

    async def load(self) -> None:
        """The snapshot: balances at the account's current sequence (NOT_FOUND for no such account)."""
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            head = await conn.fetchrow(SELECT_SNAPSHOT, self.tenant_id, self.account_id)
            if not head["found"]:
                raise not_found("account_id", f"account {self.account_id!r} not found")
            rows = await conn.fetch(SELECT_BALANCES, self.tenant_id, self.account_id)
        self.seq = head["seq"]
        self.balances = {r["unit"]: (r["available"], r["held"]) for r in rows}
        self.recent.clear()
        self.epoch += 1

    async def _read(self, after: int, upto: int) -> list[tuple[int, tuple[Entry, ...]]]:
        async with self.pool.acquire() as conn:
            return _group(await conn.fetch(SELECT_CHANGES, self.tenant_id, self.account_id, after, upto))

    async def catch_up(self) -> None:
        """Reads every change after `seq`, appends them, wakes the streams."""
        async with self.lock:
            try:
                found = await self._read(self.seq, 2**62)
                for seq, entries in found:
                    if seq != self.seq + 1:
                        raise Gap(f"{self.tenant_id}/{self.account_id}: change {seq} after {self.seq}")
                    self.balances = apply(self.balances, entries)
                    self.seq = seq
                    self.recent.append(Change(seq, entries[0].recorded_at, self.balances, entries))
            except Gap:
                log.exception("balance feed out of step; starting over from a snapshot")
                await self.load()
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    async def history(self, after: int) -> list[Change] | None:
        """The changes after `after` up to the channel's sequence, with their balances; None when
        `after` is unknown or further back than MAX_REPLAY."""
        async with self.lock:
            if after > self.seq or self.seq - after > MAX_REPLAY:
                return None
            if after == self.seq:
                return []
            if self.recent and self.recent[0].seq <= after + 1:
                return changes_after(self.recent, after)
            found = await self._read(after, self.seq)
            if [s for s, _ in found] != list(range(after + 1, self.seq + 1)):
                return None  # changes written before the sequence existed: nothing to replay from
            balances = self.balances
            out: list[Change] = []
            for seq, entries in reversed(found):
                out.append(Change(seq, entries[0].recorded_at, balances, entries))
                balances = apply(balances, entries, -1)
            return out[::-1]

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            try:
                await self.catch_up()
            except (asyncpg.PostgresError, OSError, ConnectionError):
                log.exception("balance feed read failed; retrying on the next notification")
                await asyncio.sleep(0.2)
                self.wake.set()


class BalanceFeed:
    """One LISTEN connection and the channels of the accounts being watched, per server process."""

    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self._pool = pool
        self._dsn = dsn
        self._channels: dict[tuple[str, str], AccountChannel] = {}
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        tenant_id, account_id, _seq = payload.split("\x1f")
        channel = self._channels.get((tenant_id, account_id))
        if channel is not None:
            channel.wake.set()

    async def _listen(self) -> None:
        while self._channels:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(self._dsn)
            except (OSError, asyncpg.PostgresError):
                log.exception("balance feed cannot connect; retrying")
                await asyncio.sleep(0.5)
                continue
            try:
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._on_notify)
                self._listening.set()
                for channel in self._channels.values():  # whatever was committed while not listening
                    channel.wake.set()
                while self._channels and not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), 1.0)
            finally:
                self._listening.clear()
                if not conn.is_closed():
                    await conn.close()

    async def attach(self, tenant_id: str, account_id: str) -> AccountChannel:
        """The account's channel, LISTENing before its snapshot is read (nothing committed in between
        is missed). Pair with `detach`."""
        key = (tenant_id, account_id)
        channel = self._channels.get(key)
        if channel is None:
            channel = self._channels[key] = AccountChannel(tenant_id, account_id, self._pool)
            channel.watchers += 1
            try:
                if self._listener is None or self._listener.done():
                    self._listener = asyncio.get_running_loop().create_task(self._listen())
                await asyncio.wait_for(self._listening.wait(), 10)
                await channel.load()
            except BaseException as exc:
                channel.error = exc
                channel.ready.set()
                self.detach(channel)
                raise
            channel.ready.set()
            channel.task = asyncio.get_running_loop().create_task(channel.run())
            channel.wake.set()
            return channel
        channel.watchers += 1
        await channel.ready.wait()
        if channel.error is not None:
            channel.watchers -= 1
            raise channel.error
        return channel

    def detach(self, channel: AccountChannel) -> None:
        channel.watchers -= 1
        if channel.watchers <= 0 and self._channels.get((channel.tenant_id, channel.account_id)) is channel:
            del self._channels[(channel.tenant_id, channel.account_id)]
            if channel.task is not None:
                channel.task.cancel()
