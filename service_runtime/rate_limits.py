"""An optional per-key rate limit for authenticated callers: a token bucket per key, per server.

Off unless CREDITS_KEY_RATE_LIMIT (calls per second) is set; CREDITS_KEY_RATE_BURST (default: one
second's worth) calls may arrive at once. A call over the limit is refused with RESOURCE_EXHAUSTED
carrying google.rpc.RetryInfo (when the next call would be admitted); being a refusal of a known
key, it is audited like any other. Roles in CREDITS_KEY_RATE_EXEMPT_ROLES (comma-separated) are
not limited. The buckets live in each server's memory: N servers admit up to N times the rate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from service_runtime.api_keys import Caller
from service_runtime.rejections import Reason, Rejection


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class KeyRateLimit:
    """`check(caller)` admits the call or raises RESOURCE_EXHAUSTED with the delay to retry after."""

    def __init__(self, rate_per_s: float, burst: float = 0, exempt_roles: frozenset[str] = frozenset(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not math.isfinite(rate_per_s) or rate_per_s <= 0:
            raise ValueError("the key rate limit must be a positive number of calls per second")
        self.rate = rate_per_s
        self.burst = burst if burst > 0 else max(1.0, rate_per_s)
        self.exempt_roles = exempt_roles
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def check(self, caller: Caller) -> None:
        if caller.role in self.exempt_roles:
            return
        now = self._clock()
        bucket = self._buckets.get(caller.key_id)
        if bucket is None:
            if len(self._buckets) > 100_000:  # keys are real (authenticated), but bound the memory anyway
                self._buckets.clear()
            bucket = self._buckets[caller.key_id] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return
        retry_after = (1 - bucket.tokens) / self.rate
        raise Rejection(Reason.EXHAUSTED, f"key {caller.key_id} is over its rate limit of {self.rate:g} calls/s; "
                                          f"retry in {retry_after:.3f} s", retry_after_s=retry_after)


def rate_limit_from(rate_per_s: float, burst: float, exempt_roles: str) -> KeyRateLimit | None:
    """The limit the settings ask for (None: off)."""
    if rate_per_s <= 0:
        return None
    roles = frozenset(r.strip() for r in exempt_roles.split(",") if r.strip())
    return KeyRateLimit(rate_per_s, burst, roles)
