"""The group commit window: how long an account's next transaction waits for more requests, chosen by trying.

Why (issue #17): when the machine's CPU is saturated (one hot account, many callers in flight), a
transaction that waits a few milliseconds before it begins carries three times the requests, and
every part of a debit costs less per request: the transaction's round trips and Postgres's work per
statement, the server's event-loop wakeups, even the callers' (their answers come in bursts). On
the reference 2-core machine, 64 callers in flight went from ~3,800 to ~5,000 debits/s with a 4 ms
window. But when the CPU is not saturated (8 or 16 callers), the same window only adds latency:
throughput halved. Arrival times cannot tell the two apart (a request arrived every 0.3 ms in both),
so the window is chosen by what it does to the throughput.

The rule, per `CommitWindow` (one per AccountWriter, i.e. per server process):
- The window is one of `levels`: 0 (the lowest latency) and the window. Time is cut into periods of
  `period_s`; each period measures the requests committed per second.
- Periods at the current level are followed by a probe at the other level: two periods, of which
  only the second counts (in the first, callers still move at the old window's pace: measured on the
  reference machine, it reads close to the current level either way).
  The probe's rate decides against the mean of the current level's last two periods: a higher window
  is kept only if it committed more than `gain` times as many (it must pay for its latency), a lower
  one as soon as it committed at least `keep` times as many (latency is preferred when the window
  does not clearly help).
- A probe that moves nothing doubles the periods at the current level before the next probe (up to
  `max_rest`); a move sets them to eight (a window that paid for itself is kept 4 s before it is
  questioned). So at a steady load, about two periods in `max_rest` + 2 are a probe, and a probe
  costs at most those periods' latency (or throughput); a change of load is answered within
  `max_rest` + 2 periods (17 s).
- A window is tried only where it can gather: when the current level's transactions carried at
  least `min_batch` requests on average (requests already arrive while a transaction runs). With 8
  or 16 callers they carry 2-3, and trying a window there cost them a fifth of their throughput.
- A probe whose first period already fell below `abort_below` of the current rate is given up at
  once (a window tried where it only adds latency; no window tried where the window pays).
- A period with fewer than `min_requests` committed (little load) puts the window back to 0 and
  probes nothing (there is nothing to gather). The window chosen before such a lull comes back, with
  no probe, at the first period whose transactions carry `min_batch` again (load like the one that
  chose it); the pause before the next probe is kept. So a lull costs a saturating load nothing,
  and a trickle after it is never made to wait.

Invariants (tests/ledger/test_commit_window.py, seeded random schedules): the window is always one
of the levels; without load it is 0; it never moves up unless a probe at the higher level committed
more than `gain` times the current level's rate, or to the level chosen before a lull.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MOVES_KEPT = 64


@dataclass
class CommitWindow:
    """Chooses the group commit window (module notes). `committed` is called after each transaction."""

    levels: tuple[float, ...] = (0.0, 0.004)  # no window, then at most one
    period_s: float = 0.5
    gain: float = 1.05
    keep: float = 0.95
    min_requests: int = 200
    min_batch: float = 4.0
    abort_below: float = 0.85
    max_rest: int = 32
    level: int = 0
    _probe: int | None = None      # the level being probed, if any
    _settling: bool = False        # the probe's first period: not counted
    _rest: int = 0                 # periods at the current level still to go before the next probe
    _backoff: int = 1
    _period_start: float | None = None
    _count: int = 0
    _transactions: int = 0
    _before_lull: int = 0          # the level chosen before a period of little load
    _recent: list[float] = field(default_factory=list)  # the last two periods' rates at the current level
    moves: list[tuple[float, float]] = field(default_factory=list)  # the last MOVES_KEPT (time, new window)

    def __post_init__(self) -> None:
        if not 1 <= len(self.levels) <= 2:
            raise ValueError("a commit window has one or two levels")

    @classmethod
    def upto(cls, max_s: float) -> CommitWindow:
        """Levels 0 and `max_s` (0: always 0, the window off)."""
        return cls(levels=(0.0, max_s) if max_s > 0 else (0.0,))

    @property
    def window_s(self) -> float:
        """The window to use now (seconds)."""
        return self.levels[self._probe if self._probe is not None else self.level]

    @property
    def baseline(self) -> float:
        """Requests per second at the current level: the mean of its last two periods (0: none yet)."""
        return sum(self._recent) / len(self._recent) if self._recent else 0.0

    def committed(self, requests: int, now: float) -> None:
        """`requests` were committed in one transaction at time `now` (a monotonic clock, seconds)."""
        if self._period_start is None:
            self._period_start = now
        self._count += requests
        self._transactions += 1
        elapsed = now - self._period_start
        if elapsed < self.period_s:
            return
        count, transactions = self._count, self._transactions
        self._count, self._transactions, self._period_start = 0, 0, now
        rate = count / elapsed
        if count < self.min_requests:  # little load: nothing to gather
            if self._probe is None and self.level > 0:
                self._before_lull = self.level
            self._move(0, now)
            self._probe = None
            self._recent.clear()
            return
        queuing = count >= self.min_batch * transactions
        if self._probe is None:  # a period at the current level: probe the other one next, unless resting
            if self._before_lull and queuing:  # the load that chose it is back
                self._move(self._before_lull, now)
                self._before_lull = 0
                self._recent.clear()
                return
            self._recent[:] = [*self._recent[-1:], rate]
            if self._rest > 0:
                self._rest -= 1
            elif len(self.levels) > 1 and (self.level > 0 or queuing):
                self._probe, self._settling = 1 - self.level, True
            return
        probe = self._probe
        if self._settling:  # callers are still adjusting to the probe's window (it reads too close to the
            self._settling = False  # current level's rate at first): its second period decides ...
            if rate >= self.baseline * self.abort_below:
                return  # ... unless the probe is plainly losing already
            rate = 0.0
        self._probe = None
        if (probe > self.level and rate > self.baseline * self.gain) or \
                (probe < self.level and rate >= self.baseline * self.keep):
            self._before_lull = 0
            self._move(probe, now)
            self._recent.clear()
            self._backoff = 8
        else:
            self._backoff = min(2 * self._backoff, self.max_rest)
        self._rest = self._backoff

    def _move(self, level: int, now: float) -> None:
        if level != self.level:
            self.level = level
            self.moves.append((now, self.levels[level]))
            del self.moves[:-MOVES_KEPT]  # a server runs for months
