"""The group commit window (storage/commit_window.py, storage/account_writer.py).

The tuner is driven here by simulated loads whose throughput depends on the window as measured on the
reference machine (issue #17): callers that saturate the CPU commit ~30 % more with the window on,
callers that do not commit ~40 % less, open-loop arrivals the same either way. Seeded noise of ±10 %
per commit; its invariants are checked after every call. On a real database, a writer with the window
on carries concurrent requests in fewer transactions, and answers each exactly as without it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from ledger_service.domain.journal import EntryKind
from ledger_service.storage.account_writer import GATHER_TARGET, AccountWriter, Operation, Outcome
from ledger_service.storage.commit_window import CommitWindow
from ledger_service.storage.effects import Effects
from ledger_service.storage.state import AccountState
from service_runtime.postgres import create_pool
from service_runtime.rejections import precondition
from tests.ledger.conftest import Ledger

TICK_S = 0.01  # one simulated transaction every 10 ms


def _run(window: CommitWindow, rate: Callable[[float], float], seconds: float, rng: random.Random,
         start: float = 0.0) -> list[float]:
    """Feeds `window` one transaction per tick committing `rate(window)` requests/s (with noise); checks its
    invariants after every call. Returns the window in use at each tick."""
    used: list[float] = []
    now = start
    for _ in range(int(seconds / TICK_S)):
        current = window.window_s
        used.append(current)
        level, moves = window.level, len(window.moves)
        baseline = window.baseline
        probing, settling, before_lull = window._probe, window._settling, window._before_lull
        window.committed(max(0, round(rate(current) * TICK_S * rng.uniform(0.9, 1.1))), now)
        assert window.window_s in window.levels
        if window.level > level:  # moved up: after a probe at that level that paid for itself, or back after a lull
            assert len(window.moves) == moves + 1 and window.moves[-1] == (now, window.levels[window.level])
            if probing is None:
                assert before_lull == window.level and window._before_lull == 0
            else:
                assert probing == window.level and not settling
                assert baseline > 0 and rate(window.levels[window.level]) > rate(window.levels[level])
        now += TICK_S
    return used


def chosen(window: CommitWindow) -> float:
    """The window the tuner settled on (`window_s` may be a probe's)."""
    return window.levels[window.level]


def _few_callers(window: CommitWindow, rng: random.Random, seconds: float, start: float = 0.0) -> None:
    """A transaction of 1-3 requests every millisecond (~2,000/s): the window must stay 0 throughout."""
    now = start
    for _ in range(int(seconds * 1000)):
        assert window.window_s == 0.0
        window.committed(rng.randint(1, 3), now)
        now += 0.001


def probing(used: list[float]) -> float:
    """The share of the time the window was on."""
    return sum(1 for w in used if w) / len(used)


def trickle(window_s: float) -> float:
    """Below `min_requests` per period: a lull."""
    return 100.0


def _turned_on(rng: random.Random) -> CommitWindow:
    """A window that 20 s of saturating load turned on."""
    window = CommitWindow.upto(0.004)
    _run(window, saturated, 20, rng)
    assert chosen(window) == 0.004
    return window


def saturated(window_s: float) -> float:
    return 5_000.0 if window_s else 3_800.0


def unsaturated(window_s: float) -> float:
    return 1_700.0 if window_s else 2_900.0


def open_loop(window_s: float) -> float:
    return 2_000.0


@pytest.mark.parametrize("seed", range(12))
def test_the_window_opens_only_where_it_raises_the_throughput(seed: int) -> None:
    rng = random.Random(seed)
    on = CommitWindow.upto(0.004)
    used = _run(on, saturated, 30, rng)
    assert chosen(on) == 0.004
    assert sum(1 for w in used[len(used) // 3:] if w) / (len(used) - len(used) // 3) > 0.85

    off = CommitWindow.upto(0.004)
    used = _run(off, unsaturated, 60, rng)
    assert chosen(off) == 0.0 and off.moves == []
    assert probing(used) < 0.2 and probing(used[len(used) // 2:]) < 0.1  # the probes: rarer and rarer

    steady = CommitWindow.upto(0.004)
    used = _run(steady, open_loop, 60, rng)
    assert probing(used) < 0.2 and probing(used[len(used) // 2:]) < 0.1


@pytest.mark.parametrize("seed", range(8))
def test_load_that_changes_moves_the_window_both_ways_and_idleness_closes_it(seed: int) -> None:
    rng = random.Random(1000 + seed)
    window = _turned_on(rng)
    _run(window, unsaturated, 40, rng, start=20)  # fewer callers now: the window costs them latency
    assert chosen(window) == 0.0
    _run(window, saturated, 40, rng, start=60)
    assert chosen(window) == 0.004
    _run(window, trickle, 3, rng, start=100)  # a trickle: below min_requests per period
    assert window.window_s == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_after_a_lull_the_window_comes_back_for_the_load_that_chose_it_and_not_for_a_trickle(seed: int) -> None:
    rng = random.Random(2000 + seed)
    window = _turned_on(rng)
    _run(window, trickle, 3, rng, start=20)  # a lull
    assert window.window_s == 0.0
    used = _run(window, saturated, 1, rng, start=23)  # the same callers again: on within the first period
    assert used[-1] == 0.004 and used.index(0.004) * TICK_S <= window.period_s + 2 * TICK_S

    _run(window, trickle, 3, rng, start=24)  # another lull, then a few callers (1-3 per transaction)
    _few_callers(window, rng, 20, start=27)


def test_small_transactions_are_never_made_to_wait() -> None:
    """A few callers (transactions of 1-3 requests): nothing arrives to gather, so no window is tried."""
    window = CommitWindow.upto(0.004)
    _few_callers(window, random.Random(3), 60)
    assert window.moves == []


def test_an_upward_probe_that_plainly_loses_is_given_up_after_its_first_period() -> None:
    window = CommitWindow.upto(0.004)
    used = _run(window, lambda w: 1_000.0 if w else 3_000.0, 10, random.Random(4))
    runs = [len(run) for run in "".join("1" if w else "0" for w in used).split("0") if run]
    assert len(runs) >= 2 and window.moves == []
    assert max(runs) * TICK_S <= window.period_s + 2 * TICK_S  # each probe one period, not two


def test_a_probe_of_no_window_that_plainly_loses_is_given_up_after_its_first_period() -> None:
    window = CommitWindow.upto(0.004)
    used = _run(window, saturated, 40, random.Random(5))
    assert chosen(window) == 0.004 and len(window.moves) == 1
    after = used[int(window.moves[0][0] / TICK_S) + 1:]
    runs = [len(run) for run in "".join("1" if w else "0" for w in after).split("1") if run]  # without a window
    assert len(runs) >= 2  # probes of no window were made ...
    assert max(runs) * TICK_S <= window.period_s + 2 * TICK_S  # ... each given up after one period


def test_a_window_of_zero_is_off() -> None:
    window = CommitWindow.upto(0)
    _run(window, saturated, 20, random.Random(7))
    assert window.levels == (0.0,) and window.window_s == 0.0 and window.moves == []


# --- on a real database ---------------------------------------------------------------------------

METHOD = "/test/DebitOne"


def _debit(key: str) -> Operation:
    """One unary debit of 1 token, answered with the lot it took from."""

    def apply(state: AccountState, fx: Effects) -> str:
        lot = next((x for x in state.sorted_lots("token") if x.available > 0), None)
        if lot is None:
            raise precondition("amount", "insufficient credits")
        fx.move_as(lot, EntryKind.DEBIT, 1, fx.now, "key", "", "", f"debit:{key}", state.policy.version)
        return lot.lot_id

    return Operation(METHOD, key, b"h", apply, lambda _: None)


async def _closed_loop(writer: AccountWriter, callers: int, each: int, rng: random.Random) -> list[object]:
    """`callers` each submitting `each` debits one after another, each after a think time of up to 10 ms."""
    pauses = [[rng.uniform(0, 0.010) for _ in range(each)] for _ in range(callers)]

    async def caller(c: int) -> list[object]:
        out = []
        for i in range(each):
            await asyncio.sleep(pauses[c][i])
            out.append((await writer.submit("tenant-a", "hot", _debit(f"k-{c}-{i}"))).result)
        return out

    return [r for rs in await asyncio.gather(*(caller(c) for c in range(callers))) for r in rs]


async def test_the_window_carries_concurrent_requests_in_fewer_transactions(ledger: Ledger) -> None:
    await ledger.account("hot")
    await ledger.grant("hot", "1000", unit="token", key="g-hot")
    pool = await create_pool(ledger.dsn, min_size=1, max_size=4)
    try:
        counts = {}
        for name, window in (("off", CommitWindow(levels=(0.0,))), ("on", CommitWindow(levels=(0.05,)))):
            writer = AccountWriter(pool)
            writer.window = window
            async with pool.acquire() as conn:
                before = await conn.fetchval("SELECT seq FROM account_heads WHERE tenant_id = 'tenant-a' "
                                             "AND account_id = 'hot'")
            answers = await _closed_loop(writer, GATHER_TARGET, 5, random.Random(5))
            assert len(answers) == GATHER_TARGET * 5 and all(isinstance(a, str) for a in answers)
            async with pool.acquire() as conn:
                after = await conn.fetchval("SELECT seq FROM account_heads WHERE tenant_id = 'tenant-a' "
                                            "AND account_id = 'hot'")
            counts[name] = after - before  # one change number per committed transaction that journaled
        # 32 callers x 5 with think times: without the window each transaction takes what queued meanwhile;
        # with it, the next one waits while requests keep coming (up to 50 ms here, until all 32 are back)
        assert counts["on"] <= 15 and counts["on"] < counts["off"], counts
        async with pool.acquire() as conn:
            consumed = await conn.fetchval("SELECT consumed FROM lot_balances WHERE tenant_id = 'tenant-a' "
                                           "AND account_id = 'hot'")
            journaled = await conn.fetchval("SELECT count(*) FROM journal WHERE tenant_id = 'tenant-a' "
                                            "AND account_id = 'hot' AND kind = 'DEBIT'")
        assert consumed == journaled == 2 * GATHER_TARGET * 5
    finally:
        await pool.close()


async def test_a_lone_caller_never_waits_for_the_window(ledger: Ledger) -> None:
    """The window is only for a busy account: a request that finds the queue idle starts its transaction."""
    await ledger.account("hot")
    await ledger.grant("hot", "100", unit="token", key="g-hot")
    pool = await create_pool(ledger.dsn, min_size=1, max_size=4)
    try:
        writer = AccountWriter(pool)
        writer.window = CommitWindow(levels=(5.0,))  # a window no test could wait out
        loop = asyncio.get_running_loop()
        started = loop.time()
        for i in range(20):
            outcome = await asyncio.wait_for(writer.submit("tenant-a", "hot", _debit(f"lone-{i}")), 2)
            assert isinstance(outcome, Outcome)
        assert loop.time() - started < 4
    finally:
        await pool.close()
