"""The AccountWriter's batches applied ahead (storage/account_writer.py, module notes) change nothing a
caller or the database sees: on a real database, batches of debits (operations with `own_keys`, as
BatchDebitCredits submits) queued behind each other run one transaction ahead, and

- every acknowledged debit is journaled exactly once, the account never overspends, and the lot's
  balance is what the acknowledged debits took — also with a second writer (another process) debiting
  the same account at the same time and with replayed keys failing a first attempt (seeded);
- a batch applied ahead is kept when its basis holds and applied again when another writer journaled
  the account in between (then it answers from what it loaded);
- a batch applied ahead of a transaction that fails goes back to the queue and is answered after it.
"""

from __future__ import annotations

import asyncio
import random

import asyncpg
import pytest

from ledger_service.domain.journal import EntryKind
from ledger_service.storage.account_writer import (
    ANSWER_WITHIN_S,
    AccountWriter,
    Operation,
    Outcome,
    _Ahead,
    _Pending,
    _Queue,
)
from ledger_service.storage.effects import Effects
from ledger_service.storage.state import AccountState
from service_runtime.postgres import create_pool
from service_runtime.rejections import Rejection, precondition
from tests.ledger.conftest import Ledger

TENANT = "tenant-a"
METHOD = "/test/BatchOfOnes"


def _batch(keys: list[str]) -> Operation:
    """A batch of debits of 1 unit each, applied as BatchDebitCredits applies its debits (operations/
    batch_debits.py): a used key replays, a debit the lots cannot cover is refused alone."""

    def apply(state: AccountState, fx: Effects) -> list[bytes | Rejection]:
        out: list[bytes | Rejection] = []
        for key in keys:
            stored = state.idempotency.get(key)
            if stored is not None:
                out.append(stored[2])
                continue
            lot = next((x for x in state.sorted_lots("token") if x.available > 0), None)
            if lot is None:
                out.append(precondition("amount", "insufficient credits"))
                continue
            fx.move_as(lot, EntryKind.DEBIT, 1, fx.now, "key", "", "", f"debit:{key}", state.policy.version)
            answer = f"took {key} from {lot.lot_id}".encode()
            fx.remember(key, METHOD, b"h", answer)
            state.idempotency[key] = (METHOD, b"h", answer)
            out.append(answer)
        return out

    return Operation(METHOD, "", b"", apply, lambda _: None, own_keys=tuple(keys), size=len(keys))


def _took(outcome: object) -> list[str]:
    assert isinstance(outcome, Outcome), outcome
    return [a.decode() for a in outcome.result if isinstance(a, bytes)]


async def _setup(ledger: Ledger, amount: str) -> asyncpg.Pool:
    await ledger.account("hot")
    await ledger.grant("hot", amount, unit="token", key="g-hot")
    return await create_pool(ledger.dsn, min_size=1, max_size=4)


async def _consumed(pool: asyncpg.Pool) -> tuple[int, int, int]:
    async with pool.acquire() as conn:
        consumed = await conn.fetchval("SELECT consumed FROM lot_balances WHERE tenant_id = $1 AND account_id = 'hot'",
                                       TENANT)
        entries = await conn.fetchval("SELECT count(*) FROM journal WHERE tenant_id = $1 AND account_id = 'hot' "
                                      "AND kind = 'DEBIT'", TENANT)
        keys = await conn.fetchval("SELECT count(*) FROM idempotency_keys WHERE tenant_id = $1 AND method = $2",
                                   TENANT, METHOD)
    return consumed, entries, keys


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_batches_applied_ahead_never_overspend_nor_double_count(ledger: Ledger, seed: int) -> None:
    rng = random.Random(seed)
    credits = rng.randint(150, 400)
    pool = await _setup(ledger, str(credits))
    other_pool = await create_pool(ledger.dsn, min_size=1, max_size=2)
    size = 20
    ours = AccountWriter(pool, max_batch_debits=size)   # every batch its own transaction: one ahead at a time
    other = AccountWriter(other_pool, max_batch_debits=3 * size)  # another process on the same account
    try:
        used: list[str] = []
        calls = []
        for n in range(rng.randint(12, 20)):
            keys = [f"k{seed}-{n}-{i}" for i in range(size)]
            if used and rng.random() < 0.3:  # a replayed key: the first attempt fails, the retry replays it
                keys[rng.randrange(size)] = rng.choice(used)
            used += keys
            writer = other if rng.random() < 0.25 else ours
            calls.append(writer.submit_many(TENANT, "hot", [_batch(keys)]))
        results = await asyncio.gather(*calls)
        took = {t for (outcome,) in results for t in _took(outcome)}  # a replay answers its first answer again
        consumed, entries, stored = await _consumed(pool)
        assert consumed == entries == stored == len(took) == min(credits, len(set(used)))
        assert ours.applied_ahead > 0
    finally:
        await pool.close()
        await other_pool.close()


async def test_a_batch_applied_ahead_is_applied_again_when_another_writer_came_between(ledger: Ledger) -> None:
    pool = await _setup(ledger, "100")
    writer, other = AccountWriter(pool), AccountWriter(pool)
    try:
        async with pool.acquire() as conn:
            # the transaction in flight: 10 debits; the batch behind it is applied ahead on what it leaves
            queue = _Queue()
            loop = asyncio.get_running_loop()
            behind = _Pending([_batch([f"b{i}" for i in range(10)])], loop.create_future())
            queue.items.append(behind)
            ahead: list[_Ahead | None] = [None]

            def take_ahead(state: AccountState, fx: Effects) -> None:  # as the writer's drain does
                ahead[0] = writer._ahead(queue, state, fx, ahead[0])

            await writer._transaction(conn, (TENANT, "hot"), [_batch([f"a{i}" for i in range(10)])],
                                      take_ahead=take_ahead)
            given = ahead[0]
            assert given is not None and not queue.items
            # another process debits 85 before the batch's own transaction locks the account
            (other_outcome,) = await other.submit_many(TENANT, "hot", [_batch([f"o{i}" for i in range(85)])])
            assert len(_took(other_outcome)) == 85
            outcomes = await writer._transaction(conn, (TENANT, "hot"), behind.ops, batch_keys_new=True,
                                                 given=given)
        assert (writer.applied_ahead, writer.applied_again) == (0, 1)
        assert len(_took(outcomes[0])) == 5  # 100 - 10 - 85 left: the other 5 debits are refused
        assert await _consumed(pool) == (100, 100, 100)
    finally:
        await pool.close()


async def test_a_batch_applied_ahead_of_a_failed_transaction_goes_back_to_the_queue(ledger: Ledger) -> None:
    pool = await _setup(ledger, "1000")
    writer = AccountWriter(pool, max_batch_debits=10)
    try:
        first = await writer.submit_many(TENANT, "hot", [_batch([f"x{i}" for i in range(10)])])
        assert len(_took(first[0])) == 10
        # the first batch replays a used key (its first attempt fails) while the second waits behind it
        replaying = writer.submit_many(TENANT, "hot", [_batch(["x3", *(f"y{i}" for i in range(9))])])
        behind = writer.submit_many(TENANT, "hot", [_batch([f"z{i}" for i in range(10)])])
        (a,), (b,) = await asyncio.gather(replaying, behind)
        assert _took(a)[0] == _took(first[0])[3] and len(_took(a)) == 10 and len(_took(b)) == 10
        assert await _consumed(pool) == (29, 29, 29)
    finally:
        await pool.close()


async def test_batches_arriving_while_a_flush_is_under_way_are_applied_ahead_as_they_arrive(ledger: Ledger) -> None:
    """The flush is held up (another session locks the lot's balance row): each batch that arrives meanwhile
    is taken from the queue and applied ahead at once, not left for the COMMIT's turn."""
    pool = await _setup(ledger, "1000")
    writer = AccountWriter(pool)
    key = (TENANT, "hot")
    try:
        async with pool.acquire() as blocker:
            async with blocker.transaction():
                await blocker.execute("SELECT 1 FROM lot_balances WHERE tenant_id = $1 AND account_id = 'hot' "
                                      "FOR UPDATE", TENANT)
                first = asyncio.ensure_future(writer.submit_many(TENANT, "hot", [_batch([f"a{i}" for i in range(10)])]))
                for _ in range(200):  # until its flush waits for the lock
                    await asyncio.sleep(0.01)
                    if writer._queues[key].on_arrival is not None:
                        break
                assert writer._queues[key].on_arrival is not None
                later = []
                for n in range(3):
                    later.append(asyncio.ensure_future(
                        writer.submit_many(TENANT, "hot", [_batch([f"b{n}-{i}" for i in range(10)])])))
                    await asyncio.sleep(0)  # submitted: applied ahead on arrival, nothing left queued
                    assert writer._queues[key].items == []
                assert not first.done()
        (a,) = await first
        answers = [outcome for (outcome,) in await asyncio.gather(*later)]
        assert len(_took(a)) == 10 and all(len(_took(b)) == 10 for b in answers)
        assert (writer.applied_ahead, writer.applied_again) == (1, 0)  # the three in one transaction ahead
        assert await _consumed(pool) == (40, 40, 40)
    finally:
        await pool.close()


async def test_a_committed_batch_is_answered_once_the_next_transaction_loaded_or_failed(ledger: Ledger) -> None:
    """A batch's callers are answered after the transaction behind it has its account loaded (so their
    answers go out while that one flushes); if that transaction fails, they are answered all the same."""
    pool = await _setup(ledger, "100")
    writer = AccountWriter(pool)
    key = (TENANT, "hot")
    loop = asyncio.get_running_loop()
    try:
        calls: list[str] = []
        queue = _Queue()
        behind = _Pending([_batch([f"c{i}" for i in range(5)])], loop.create_future())
        async with pool.acquire() as conn:
            ahead, answer = await writer._run(conn, key, [behind], None, queue, lambda: calls.append("previous"))
        assert calls == ["previous"] and ahead is None and answer is not None
        assert not behind.future.done()  # a batch of debits: its answer is the caller's to give
        answer()
        assert len(_took(behind.future.result()[0])) == 5

        broken = await asyncpg.connect(ledger.dsn)  # its server process ends: the connection is lost
        try:
            async with pool.acquire() as admin:
                await admin.execute("SELECT pg_terminate_backend($1)", broken.get_server_pid())
            for _ in range(200):  # until the client has seen its server go (else BEGIN meets it, raising)
                if broken.is_closed():
                    break
                await asyncio.sleep(0.01)
            failing = _Pending([_batch(["d0"])], loop.create_future())
            _, answer = await writer._run(broken, key, [failing], None, queue, lambda: calls.append("previous again"))
        finally:
            broken.terminate()
        assert calls == ["previous", "previous again"]
        assert answer is not None
        answer()
        (outcome,) = failing.future.result()
        assert isinstance(outcome, asyncpg.InterfaceError)  # its own transaction failed: its caller is told
        assert await _consumed(pool) == (5, 5, 5)
    finally:
        await pool.close()


async def test_a_committed_batch_waits_for_the_next_load_only_briefly(ledger: Ledger) -> None:
    """Another process holds the account's lock: the transaction behind a committed batch waits for it, but
    the committed batch is answered within ANSWER_WITHIN_S all the same."""
    pool = await _setup(ledger, "100")
    writer = AccountWriter(pool)
    key = (TENANT, "hot")
    loop = asyncio.get_running_loop()
    answered: list[float] = []
    try:
        async with pool.acquire() as blocker, pool.acquire() as conn:
            async with blocker.transaction():
                await blocker.execute("SELECT 1 FROM accounts WHERE tenant_id = $1 AND account_id = 'hot' "
                                      "FOR NO KEY UPDATE", TENANT)
                behind = _Pending([_batch(["e0"])], loop.create_future())
                started = loop.time()
                running = asyncio.ensure_future(writer._run(conn, key, [behind], None, _Queue(),
                                                            lambda: answered.append(loop.time() - started)))
                for _ in range(200):
                    await asyncio.sleep(ANSWER_WITHIN_S)
                    if answered:
                        break
                assert len(answered) == 1 and answered[0] >= ANSWER_WITHIN_S  # by the timer, not by a load
                await asyncio.sleep(0.2)
                assert not running.done()  # the transaction behind it still waits for the lock
            await running  # the lock is released: the transaction goes on
        assert len(answered) == 1  # answered once
        assert await _consumed(pool) == (1, 1, 1)
    finally:
        await pool.close()
