"""Local leases of one account, pure bookkeeping: what a gate may still authorize without asking.

A lease is a ledger hold (ReserveCredits with `release_on_ttl`) the gate took ahead of need. The
gate authorizes requests against it locally and, when the lease is replaced, closed or at its report
interval, commits what was used on the hold (a partial commit releases the rest).

Invariants (kept here, checked by tests/gateway/test_lease_properties.py with seeded schedules):
- a lease never authorizes more than its hold reserved: 0 <= used <= reserved at every step;
- `used` = the estimates of the tickets still open + the actual amounts of the settled ones, so the
  amount committed on the hold is exactly what was consumed (an open ticket at commit counts at its
  estimate, the amount the gate let through);
- a lease is committed once, after it stopped authorizing and its open tickets settled (or their
  settle deadline passed).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Lease:
    hold_key: str
    reserved: int          # minor units the ledger holds for this lease
    taken_at: float        # monotonic seconds
    used: int = 0
    open_tickets: int = 0
    retired: bool = False  # replaced or closing: settles only, no new authorizations
    committed: bool = False

    @property
    def free(self) -> int:
        return self.reserved - self.used

    def take(self, cost: int) -> bool:
        """Authorizes `cost` locally if the lease can still cover it."""
        if self.retired or cost > self.reserved - self.used:
            return False
        self.used += cost
        self.open_tickets += 1
        return True

    def settle(self, estimate: int, actual: int) -> int:
        """Replaces a ticket's estimate by its actual amount; returns the excess the lease could not cover."""
        self.open_tickets -= 1
        delta = actual - estimate
        if delta <= 0:
            self.used += delta
            return 0
        covered = min(delta, self.reserved - self.used)
        self.used += covered
        return delta - covered

    @property
    def ready_to_commit(self) -> bool:
        return self.retired and not self.committed and self.open_tickets == 0


@dataclass(slots=True)
class ConsumptionRate:
    """Exponentially weighted consumption per second of one account at this gate (sizes the next lease).

    The hot path only adds to `pending` (no clock read); `fold` turns what was consumed since the last
    fold into the rate, when a lease is sized and at each report interval."""

    half_life_s: float = 2.0
    per_s: float = 0.0
    pending: int = 0
    _since: float = 0.0

    def record(self, amount: int, now: float) -> None:
        self.pending += amount
        self.fold(now)

    def fold(self, now: float) -> float:
        """The rate at `now`, with what was consumed since the last fold (at least 50 ms ago) in it."""
        if not self._since:
            self._since = now
        elapsed = now - self._since
        if elapsed >= 0.05:
            weight = 0.5 ** (elapsed / self.half_life_s)
            self.per_s = weight * self.per_s + (1 - weight) * (self.pending / elapsed)
            self._since, self.pending = now, 0
        return self.per_s


def lease_size(rate_per_s: float, horizon_s: float, cost: int, minimum: int, maximum: int) -> int:
    """What to lease: enough for `horizon_s` of the observed rate, at least `cost` and `minimum`,
    at most `maximum` (a whole number of minor units: rates are estimates, amounts are exact)."""
    wanted = int(rate_per_s * horizon_s) + 1
    return max(cost, min(maximum, max(minimum, wanted)))


@dataclass(slots=True)
class FailOpen:
    """Authorizations let through while the ledger was unreachable, bounded by a budget; debited later."""

    budget: int
    used: int = 0
    owed: list[int] = field(default_factory=list)

    def take(self, cost: int) -> bool:
        if self.used + cost > self.budget:
            return False
        self.used += cost
        return True
