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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from google.protobuf.message import Message

from ledger_service.storage.effects import Effects
from ledger_service.storage.state import AccountState, load_state
from service_runtime.audit import AuditRecord
from service_runtime.rejections import Rejection, conflict, not_found

log = logging.getLogger(__name__)

Apply = Callable[[AccountState, Effects], Any]
Pack = Callable[[Any], Message | None]  # None: the operation answers through its result (a batch of debits)

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


def _size(pending: _Pending) -> int:
    return sum(op.size for op in pending.ops)


def _of_batch(pending: _Pending) -> bool:
    """A batch of debits (operations with `own_keys`): shares a transaction only with other such."""
    return any(op.own_keys for op in pending.ops)


class AccountWriter:
    """Serialises and batches writes per (tenant, account)."""

    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = 512, max_batch_debits: int = 4096,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._pool = pool
        self._max_batch = max_batch
        self._max_batch_debits = max_batch_debits
        self._clock = clock
        self._queues: dict[tuple[str, str], _Queue] = {}
        self._tasks: set[asyncio.Task[None]] = set()

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
        return await future

    def _start_drain(self, key: tuple[str, str], queue: _Queue) -> None:
        queue.running = True
        task = asyncio.get_running_loop().create_task(self._drain(key, queue))
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, key: tuple[str, str], queue: _Queue) -> None:
        try:
            async with self._pool.acquire() as conn:  # one connection for the whole drain
                while queue.items:
                    batch: list[_Pending] = []
                    size = 0
                    of_batch = _of_batch(queue.items[0])
                    limit = self._max_batch_debits if of_batch else self._max_batch
                    while queue.items and (not batch or (_of_batch(queue.items[0]) == of_batch
                                                         and size + _size(queue.items[0]) <= limit)):
                        pending = queue.items.pop(0)
                        batch.append(pending)
                        size += _size(pending)
                    try:
                        await self._run(conn, key, batch)
                    except Exception as exc:
                        for pending in batch:
                            if not pending.future.done():
                                pending.future.set_exception(exc)
                        raise
        except Exception:  # the connection broke: that batch failed; the rest retries on a new one
            log.exception("account writer for %s lost its connection", key)
        finally:
            queue.running = False
            if not queue.items and self._queues.get(key) is queue:
                del self._queues[key]
            elif queue.items:  # raced with a submit, or the connection broke: carry on
                self._start_drain(key, queue)

    async def _run(self, conn: asyncpg.Connection, key: tuple[str, str], batch: list[_Pending]) -> None:
        ops = [op for p in batch for op in p.ops]
        outcomes: list[Result] | None = None
        for attempt in range(2):
            try:
                outcomes = await self._transaction(conn, key, ops, batch_keys_new=attempt == 0)
                break
            except _RETRYABLE:
                if attempt == 0:
                    continue
            except (asyncpg.PostgresConnectionError, ConnectionError, OSError):
                raise
            except Exception:
                log.exception("batch of %d on %s failed", len(ops), key)
                break
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
        i = 0
        for pending in batch:
            n = len(pending.ops)
            if not pending.future.done():
                pending.future.set_result(outcomes[i:i + n])
            i += n

    async def _transaction(self, conn: asyncpg.Connection, key: tuple[str, str],
                           ops: list[Operation], *, batch_keys_new: bool = False) -> list[Result]:
        """One transaction over `ops`. `batch_keys_new`: the keys of batches of debits are not looked up
        (taken as new; one that is not fails the transaction with a unique violation: module notes)."""
        tenant_id, account_id = key
        outcomes: list[Result] = []
        async with conn.transaction():
            state = await load_state(
                conn, tenant_id, account_id,
                hold_keys=[k for op in ops for k in op.hold_keys],
                lot_ids=[i for op in ops for i in op.lot_ids],
                idempotency_keys=[op.idempotency_key for op in ops] if batch_keys_new
                else [k for op in ops for k in (op.idempotency_key, *op.own_keys)],
            )
            effects = Effects(tenant_id, self._clock())
            effects.states[account_id] = state
            for op in ops:
                outcomes.append(self._apply_one(state, effects, op))
            await effects.flush(conn)
        return outcomes

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
