"""Group commit: all writes to one account are queued and applied in shared transactions.

Why: a row lock per request caps one hot account near 2k durable debits/s. Here the first request
for an account starts a drain task; while its transaction runs, later requests queue up and go in
the next transaction together. Each transaction locks the account row (so several processes stay
correct), loads the account's open lots once, applies the queued operations one after another in
memory — each sees the effects of the ones before it, exactly as if serial — and writes all
effects in a few bulk statements. Every caller is answered only after COMMIT returns, so each
acknowledged outcome is durable; a rejected operation writes nothing.

If a batch fails as a whole (a unique violation from a concurrent process, a deadlock, a bug in
one operation), it is retried once, then each operation runs alone so one bad request cannot sink
the others.

Batches of debits look their idempotency keys up only on that retry: the first attempt assumes every
key is new and lets the idempotency table's primary key say otherwise. A key that was used before
(a replayed batch, a conflicting request, a concurrent process) makes its insert fail with a unique
violation, the whole transaction rolls back with nothing written, and the retry loads the stored
keys and answers each as usual (replay or conflict). A fresh batch, the common case, saves the
lookup of its thousands of keys under the account lock.

Batches of debits run one transaction ahead: while Postgres executes a transaction's flush, and
again while its COMMIT waits for the disk, the writer takes the next batches of debits from the queue
and applies them in memory to a copy of the state this transaction leaves (`_Ahead`), so the
server's Python work overlaps the database's (and what queued during the commit joins them). That
next transaction then locks the account and loads it as always, and keeps the precomputed effects
only if what it loaded is exactly what they were computed from (`_Basis`: the account exists or not
alike, the same consumption policy, the same open lots with the same balances, and the account's
change number one past the previous flush, i.e. no other writer journaled in between); otherwise it
applies its operations again to what it loaded. The previous transaction failing (or being retried)
throws the precomputed effects away and puts their requests back at the head of the queue. Callers
are still answered only after their own transaction's COMMIT.

Two orderings keep the account's transactions back to back (issue #17; `harness/benches/batch_cpu.py`
times them):
- A batch that arrives while a flush or COMMIT is under way is applied ahead on arrival (`_Queue.
  on_arrival`), not when the COMMIT is sent: the server's work then happens while Postgres writes,
  and the COMMIT's answer is not kept waiting behind it.
- A committed batch of debits with a batch applied ahead behind it is answered once that next
  transaction has its account locked and loaded (one round trip later; at most ANSWER_WITHIN_S if
  another process holds the account's lock): packing the answers and the callers' next requests
  then overlap that transaction's flush instead of delaying its BEGIN and load. If the next
  transaction fails, the committed batch is answered all the same. Other operations (unary calls)
  are answered right after their COMMIT.

The group commit window (issue #17; `storage/commit_window.py` chooses it): when a transaction of unary
calls ends and requests are queued behind it (the account is busy), the next transaction may first wait
while requests keep coming — until GATHER_TARGET are queued, the window is over, or half a window brings
none. When the CPU is saturated this triples the requests per transaction and cuts every part's work per
request; when it is not, it would only add latency, so `CommitWindow` keeps it at 0 unless trying it
raised the throughput. A drain's first transaction (an idle account) never waits, nor do batches of
debits (they run ahead instead). While it waits, the drain holds its connection but no lock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from google.protobuf.message import Message

from ledger_service.domain.model import Lot
from ledger_service.domain.policy import Policy
from ledger_service.domain.settlement import Settlement
from ledger_service.storage.commit_window import CommitWindow
from ledger_service.storage.effects import Effects
from ledger_service.storage.state import AccountState, load_state
from service_runtime.audit import AuditRecord
from service_runtime.metrics import COMMIT_WINDOW
from service_runtime.rejections import Rejection, conflict, not_found

log = logging.getLogger(__name__)

Apply = Callable[[AccountState, Effects], Any]
Pack = Callable[[Any], Message | None]  # None: the operation answers through its result (a batch of debits)

# The longest a committed batch of debits waits for the next transaction's load before it is answered.
ANSWER_WITHIN_S = 0.005
# The group commit window (module notes; storage/commit_window.py chooses it, up to GATHER_WITHIN_S): the
# next transaction of a busy account waits for more requests while each half-window brings one, until
# GATHER_TARGET are queued.
GATHER_WITHIN_S = 0.004
GATHER_TARGET = 32

_RETRYABLE = (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError,
              asyncpg.SerializationError, asyncpg.LockNotAvailableError)


@dataclass(slots=True)  # one per request on the hot path
class Operation:
    """One request against one account. `apply` raises Rejection to refuse (nothing is written)."""

    method: str
    idempotency_key: str
    request_hash: bytes
    apply: Apply
    pack: Pack
    hold_keys: tuple[str, ...] = ()
    lot_ids: tuple[str, ...] = ()
    audit: AuditRecord | None = None  # written in the same transaction unless the operation is refused
    earlier_methods: tuple[str, ...] = ()  # former names of the verb (a renamed RPC): their stored keys replay
    # A batch of debits as one operation (operations/batch_debits.py): it checks these keys itself and
    # shares its transaction only with other batches of debits (no other operation may see its debits'
    # in-memory effects: they record no Hold in the state), up to `max_batch_debits` debits (`size`).
    own_keys: tuple[str, ...] = ()
    size: int = 1


@dataclass(slots=True)
class Outcome:
    """What an operation produced: its packed response (fresh), or the stored bytes of an earlier call."""

    message: Message | None = None
    result: Any = None
    replay: bytes | None = None


Result = Outcome | Exception


@dataclass
class _Pending:
    """Operations submitted together, answered together (one future for a whole batch call)."""

    ops: list[Operation]
    future: asyncio.Future[list[Result]]


@dataclass
class _Queue:
    items: list[_Pending] = field(default_factory=list)
    running: bool = False
    # while a transaction's flush or COMMIT is under way: applies what just arrived ahead (module notes)
    on_arrival: Callable[[], None] | None = None
    # while the next transaction gathers requests: resolved once GATHER_TARGET are queued
    gathering: asyncio.Future[None] | None = None


@dataclass(frozen=True, slots=True)
class _Basis:
    """What a batch applied ahead assumed about its account (compared with what its transaction loads)."""

    exists: bool
    policy: Policy
    settlement: Settlement
    open_lots: dict[str, Lot]
    head_seq: int

    @classmethod
    def of(cls, state: AccountState, head_seq: int) -> _Basis:
        open_lots = {i: dataclasses.replace(lot) for i, lot in state.lots.items()
                     if lot.account_id == state.account_id and (lot.available > 0 or lot.held > 0)}
        return cls(state.exists, state.policy, state.settlement, open_lots, head_seq)

    def holds_for(self, state: AccountState) -> bool:
        """`state` (freshly loaded under the lock) is what the batch was applied to."""
        return (state.exists == self.exists and state.policy == self.policy and state.settlement == self.settlement
                and state.head_seq == self.head_seq and state.lots == self.open_lots)


@dataclass(slots=True)
class _Ahead:
    """The next batch of debits, applied in memory while the previous transaction flushed."""

    batch: list[_Pending]
    basis: _Basis
    state: AccountState  # the copy it was applied to, as the batch left it
    effects: Effects
    outcomes: list[Result]


def _size(pending: _Pending) -> int:
    return sum(op.size for op in pending.ops)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _of_batch(pending: _Pending) -> bool:
    """A batch of debits (operations with `own_keys`): shares a transaction only with other such."""
    return any(op.own_keys for op in pending.ops)


class AccountWriter:
    """Serialises and batches writes per (tenant, account)."""

    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = 512, max_batch_debits: int = 4096,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 gather_within_s: float = GATHER_WITHIN_S) -> None:
        self._pool = pool
        self.window = CommitWindow.upto(gather_within_s)
        self._max_batch = max_batch
        self._max_batch_debits = max_batch_debits
        self._clock = clock
        self._queues: dict[tuple[str, str], _Queue] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # batches applied ahead whose basis held (their effects were kept), and those applied again
        self.applied_ahead = 0
        self.applied_again = 0

    async def submit(self, tenant_id: str, account_id: str, op: Operation) -> Outcome:
        """Applies one operation; raises its Rejection (or a bug's exception)."""
        (result,) = await self.submit_many(tenant_id, account_id, [op])
        if isinstance(result, Exception):
            raise result
        return result

    async def submit_many(self, tenant_id: str, account_id: str, ops: list[Operation]) -> list[Result]:
        """Queues operations together; each gets its own outcome (Outcome or the exception)."""
        key = (tenant_id, account_id)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue()
        future: asyncio.Future[list[Result]] = asyncio.get_running_loop().create_future()
        queue.items.append(_Pending(ops, future))
        if not queue.running:
            self._start_drain(key, queue)
        elif queue.gathering is not None:
            if len(queue.items) >= GATHER_TARGET:
                _resolve(queue.gathering)
        elif queue.on_arrival is not None:
            try:
                queue.on_arrival()
            except Exception:  # a bug there must not fail this submit: the drain applies the request anyway
                log.exception("applying arrivals ahead on %s failed", account_id)
        return await future

    def _start_drain(self, key: tuple[str, str], queue: _Queue) -> None:
        queue.running = True
        task = asyncio.get_running_loop().create_task(self._drain(key, queue))
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    def _take(self, queue: _Queue, room: int | None = None) -> list[_Pending]:
        """The next transaction's requests: from the head of the queue, batches of debits with batches of
        debits only, up to the size limit (`room`: debits that still fit, into a batch applied ahead)."""
        batch: list[_Pending] = []
        size = 0
        of_batch = _of_batch(queue.items[0])
        limit = self._max_batch_debits if of_batch else self._max_batch
        if room is not None:
            limit, size = room, 0
            if _size(queue.items[0]) > room:
                return batch
        while queue.items and (not batch or (_of_batch(queue.items[0]) == of_batch
                                             and size + _size(queue.items[0]) <= limit)):
            pending = queue.items.pop(0)
            batch.append(pending)
            size += _size(pending)
        return batch

    async def _drain(self, key: tuple[str, str], queue: _Queue) -> None:
        ahead: _Ahead | None = None
        answer: Callable[[], None] | None = None  # a committed batch of debits whose callers wait for it
        busy = False  # a transaction has run in this drain: what is queued arrived while it did
        try:
            async with self._pool.acquire() as conn:  # one connection for the whole drain
                while queue.items or ahead is not None:
                    if ahead is not None:
                        batch, given, ahead = ahead.batch, ahead, None
                    else:
                        window = self.window.window_s
                        if busy and window > 0 and not _of_batch(queue.items[0]):
                            await self._gather(queue, window)
                        batch, given = self._take(queue), None
                    previous, answer = answer, None  # answered by _run, once it has its account loaded
                    try:
                        ahead, answer = await self._run(conn, key, batch, given, queue, previous)
                    except Exception as exc:
                        for pending in batch:
                            if not pending.future.done():
                                pending.future.set_exception(exc)
                        raise
                    busy = True
                    self._committed(sum(len(p.ops) for p in batch))
                    if ahead is None:  # no transaction right behind it: answer now
                        answer()
                        answer = None
        except Exception:  # the connection broke: that batch failed; the rest retries on a new one
            log.exception("account writer for %s lost its connection", key)
        finally:
            if answer is not None:
                answer()
            if ahead is not None:  # taken from the queue but not run: back to its head
                queue.items[:0] = ahead.batch
            queue.running = False
            if not queue.items and self._queues.get(key) is queue:
                del self._queues[key]
            elif queue.items:  # raced with a submit, or the connection broke: carry on
                self._start_drain(key, queue)

    def _committed(self, requests: int) -> None:
        window = self.window.window_s
        self.window.committed(requests, asyncio.get_running_loop().time())
        if self.window.window_s != window:
            COMMIT_WINDOW.set(self.window.window_s)

    @staticmethod
    async def _gather(queue: _Queue, window: float) -> None:
        """The group commit window (module notes): waits while requests keep arriving, until GATHER_TARGET are
        queued or `window` is over; a half-window that brings none ends it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + window
        while len(queue.items) < GATHER_TARGET:
            left = deadline - loop.time()
            if left <= 0:
                return
            seen = len(queue.items)
            waiter = queue.gathering = loop.create_future()
            timer = loop.call_later(min(window / 2, left), _resolve, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                queue.gathering = None
            if len(queue.items) == seen:
                return

    def _ahead(self, queue: _Queue, state: AccountState, effects: Effects, prior: _Ahead | None) -> _Ahead | None:
        """Takes the next batches of debits from the queue and applies them to a copy of `state`, the
        state the transaction in flight leaves when it commits (see the module notes); with `prior`
        (taken earlier in the same transaction), adds the batches queued since, as far as they fit."""
        if not queue.items or not _of_batch(queue.items[0]):
            return prior
        if prior is None:
            journaled = bool(effects.entries or effects.templated)
            basis = _Basis.of(state, state.head_seq + 1 if journaled else state.head_seq)
            # no idempotency records: as in a transaction of its own, a key the batch reuses is found by
            # the table's primary key (it fails the first attempt; the retry looks the keys up), and the
            # records of a chain of batches applied ahead do not pile up in memory
            copy = dataclasses.replace(state, lots={i: dataclasses.replace(lot) for i, lot in basis.open_lots.items()},
                                       holds={}, tombstones=set(), idempotency={}, head_seq=basis.head_seq,
                                       _sorted={})
            fx = Effects(state.tenant_id, self._clock())
            fx.states[state.account_id] = copy
            prior = _Ahead([], basis, copy, fx, [])
        taken = self._take(queue, self._max_batch_debits - sum(_size(p) for p in prior.batch))
        try:
            outcomes = [self._apply_one(prior.state, prior.effects, op) for p in taken for op in p.ops]
        except Exception:  # a bug in an operation: it runs in its own turn, where such failures are handled
            log.exception("applying a batch ahead on %s failed", state.account_id)
            queue.items[:0] = prior.batch + taken  # its copy of the state is spoiled: all of it again
            return None
        if not prior.batch and not taken:
            return None
        return _Ahead(prior.batch + taken, prior.basis, prior.state, prior.effects, prior.outcomes + outcomes)

    async def _run(self, conn: asyncpg.Connection, key: tuple[str, str], batch: list[_Pending],
                   given: _Ahead | None, queue: _Queue,
                   answer_before: Callable[[], None] | None = None) -> tuple[_Ahead | None, Callable[[], None]]:
        """Runs `batch` (with its effects applied ahead, if `given`). Returns the next batch, applied ahead
        while this one flushed (None: none, or this transaction failed; only a batch of debits has one),
        and the call that answers the batch's callers. `answer_before`: the previous batch's answer, called
        once this transaction has its account loaded (module notes)."""
        ops = [op for p in batch for op in p.ops]
        ahead: list[_Ahead | None] = [None]
        waiting = [answer_before]

        def answer_previous() -> None:
            if waiting[0] is not None:
                waiting[0], previous = None, waiting[0]
                previous()

        # ... or after ANSWER_WITHIN_S, if the account's lock is slow to come (another process holds it)
        late = asyncio.get_running_loop().call_later(ANSWER_WITHIN_S, answer_previous) if answer_before else None

        def take_ahead(state: AccountState, effects: Effects) -> None:
            ahead[0] = self._ahead(queue, state, effects, ahead[0])

        def put_back() -> None:  # the transaction failed: the batch applied ahead assumed it committed
            if ahead[0] is not None:
                queue.items[:0] = ahead[0].batch
                ahead[0] = None

        try:
            outcomes = await self._attempts(conn, key, ops, given, queue,
                                            take_ahead if _of_batch(batch[0]) else None, put_back, answer_previous)
        finally:
            answer_previous()
            if late is not None:
                late.cancel()

        def answer() -> None:
            i = 0
            for pending in batch:
                n = len(pending.ops)
                if not pending.future.done():
                    pending.future.set_result(outcomes[i:i + n])
                i += n

        return ahead[0], answer

    async def _attempts(self, conn: asyncpg.Connection, key: tuple[str, str], ops: list[Operation],
                        given: _Ahead | None, queue: _Queue,
                        take_ahead: Callable[[AccountState, Effects], None] | None,
                        put_back: Callable[[], None], loaded: Callable[[], None]) -> list[Result]:
        """`ops` in one transaction, retried once; failing that, each in a transaction of its own."""
        outcomes: list[Result] | None = None
        for attempt in range(2):
            try:
                outcomes = await self._transaction(conn, key, ops, batch_keys_new=attempt == 0,
                                                   given=given if attempt == 0 else None, take_ahead=take_ahead,
                                                   arrivals=queue, loaded=loaded)
                break
            except _RETRYABLE:
                put_back()
                if attempt == 0:
                    continue
            except (asyncpg.PostgresConnectionError, ConnectionError, OSError):
                put_back()
                raise
            except Exception:
                put_back()
                log.exception("batch of %d on %s failed", len(ops), key)
                break
            except BaseException:  # cancelled (shutting down): the batch applied ahead waits in the queue
                put_back()
                raise
        if outcomes is None:
            # Fall back to one transaction per operation so a bad one cannot fail its neighbours.
            outcomes = []
            for op in ops:
                try:
                    outcomes.extend(await self._transaction(conn, key, [op]))
                except (asyncpg.PostgresConnectionError, ConnectionError, OSError):
                    raise
                except Exception as exc:
                    outcomes.append(exc)
        return outcomes

    async def _transaction(self, conn: asyncpg.Connection, key: tuple[str, str], ops: list[Operation], *,
                           batch_keys_new: bool = False, given: _Ahead | None = None,
                           take_ahead: Callable[[AccountState, Effects], None] | None = None,
                           arrivals: _Queue | None = None, loaded: Callable[[], None] | None = None) -> list[Result]:
        """One transaction over `ops`. `batch_keys_new`: the keys of batches of debits are not looked up
        (taken as new; one that is not fails the transaction with a unique violation: module notes).
        `given`: `ops` applied ahead, kept if their basis holds. `take_ahead`: called while the flush and
        again while the COMMIT are under way, with the state and effects this transaction commits, and
        meanwhile whenever a request arrives in `arrivals` (so little is left to apply once COMMIT returns).
        `loaded`: called once the account is locked and loaded."""
        tenant_id, account_id = key
        transaction = conn.transaction()
        await transaction.start()
        try:
            state = await load_state(
                conn, tenant_id, account_id,
                hold_keys=[k for op in ops for k in op.hold_keys],
                lot_ids=[i for op in ops for i in op.lot_ids],
                idempotency_keys=[op.idempotency_key for op in ops] if batch_keys_new
                else [k for op in ops for k in (op.idempotency_key, *op.own_keys)],
            )
            if loaded is not None:
                loaded()
            if given is not None and given.basis.holds_for(state):
                state, effects, outcomes = given.state, given.effects, given.outcomes
                self.applied_ahead += 1
            else:
                if given is not None:
                    self.applied_again += 1
                effects = Effects(tenant_id, self._clock())
                effects.states[account_id] = state
                outcomes = [self._apply_one(state, effects, op) for op in ops]
            if take_ahead is None:
                await effects.flush(conn)
            else:
                await self._overlapped(effects.flush(conn), lambda: take_ahead(state, effects), arrivals)
        except BaseException:
            await transaction.rollback()
            raise
        if take_ahead is None:
            await transaction.commit()
        else:  # the commit waits for the disk: apply what was queued meanwhile ahead too
            await self._overlapped(transaction.commit(), lambda: take_ahead(state, effects), arrivals)
        return outcomes

    @staticmethod
    async def _overlapped(statement: Coroutine[Any, Any, object], work: Callable[[], None],
                          arrivals: _Queue | None) -> None:
        """Runs `work` (Python only) while `statement` is on its way to Postgres and back: once it is sent,
        and again each time a request arrives in `arrivals` meanwhile."""
        running = asyncio.ensure_future(statement)
        await asyncio.sleep(0)  # the statement is sent
        try:
            work()
            if arrivals is not None:
                arrivals.on_arrival = work
        finally:
            try:
                await running
            finally:
                if arrivals is not None:
                    arrivals.on_arrival = None

    @staticmethod
    def _apply_one(state: AccountState, effects: Effects, op: Operation) -> Outcome | Exception:
        stored = state.idempotency.get(op.idempotency_key) if op.idempotency_key else None
        if stored is not None:
            method, request_hash, response = stored
            if (method != op.method and method not in op.earlier_methods) or request_hash != op.request_hash:
                return conflict("idempotency_key", f"{op.idempotency_key!r} was used for a different request")
            if op.audit is not None:
                effects.audit.append(op.audit)
            return Outcome(replay=response)
        if not state.exists and not op.own_keys:  # a batch checks its own keys first, then the account
            return not_found("account_id", f"account {state.account_id!r} not found")
        try:
            result = op.apply(state, effects)
        except Rejection as rej:
            return rej
        if op.audit is not None:
            effects.audit.append(op.audit)
        message = op.pack(result)
        if op.idempotency_key and message is not None:
            response = message.SerializeToString()
            effects.remember(op.idempotency_key, op.method, op.request_hash, response)
            state.idempotency[op.idempotency_key] = (op.method, op.request_hash, response)
        return Outcome(message=message, result=result)
