"""Refused calls that authenticated nobody, counted instead of stored one by one.

A call with no key, a malformed key, or a key whose id or secret is unknown proves nothing about
who sent it, and anyone can send millions. Each such refusal adds one to the count of its window
(CREDITS_REFUSAL_WINDOW_S, default 60 s, aligned to the epoch so every server shares the rows),
source address (the peer without its port) and reason, in `refused_call_windows`: a flood grows
the table by at most one row per window and (source, reason). Counts from concurrent calls are
added in one upsert (group commit), and a caller is answered once its count is durable, as with
the audit trail. Refusals of a real key (revoked, expired, wrong role, bad input, rate limited)
are not counted here: they keep their individual records in audit_log (service_runtime.audit).
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import asyncpg

from service_runtime.group_commit import GroupCommit

DEFAULT_WINDOW_S = 60
UPSERT = """
INSERT INTO refused_call_windows (window_start, window_s, source, reason, calls, first_at, last_at)
SELECT w, $1, s, r, c, $6, $6
FROM unnest($2::timestamptz[], $3::text[], $4::text[], $5::int8[]) AS x(w, s, r, c)
ON CONFLICT (window_start, window_s, source, reason) DO UPDATE
SET calls = refused_call_windows.calls + EXCLUDED.calls,
    last_at = greatest(refused_call_windows.last_at, EXCLUDED.last_at)
"""


def source_of(peer: str) -> str:
    """The caller's address without its port: 'ipv4:10.0.0.7:53211' -> 'ipv4:10.0.0.7',
    'ipv6:[::1]:53211' -> 'ipv6:[::1]'; other forms (unix:...) as they are, bounded."""
    if peer.startswith(("ipv4:", "ipv6:")) and peer.count(":") >= 2:
        peer = peer.rpartition(":")[0]
    return peer[:100].replace("\x00", "") or "unknown"


def window_start(at: datetime, window_s: int) -> datetime:
    seconds = int(at.timestamp())
    return datetime.fromtimestamp(seconds - seconds % window_s, UTC)


Key = tuple[datetime, str, str]  # (window start, source, reason)


class RefusalCounter:
    """Adds refused anonymous calls to their window's count; `count` returns once it is durable."""

    def __init__(self, pool: asyncpg.Pool, window_s: int = DEFAULT_WINDOW_S) -> None:
        if window_s <= 0:
            raise ValueError("the refusal window must be a positive number of seconds")
        self._pool = pool
        self.window_s = window_s
        self._commits: GroupCommit[Key] = GroupCommit(self._write, "refused-call counts")

    async def count(self, peer: str, reason: str) -> None:
        await self._commits.add((window_start(datetime.now(UTC), self.window_s), source_of(peer), reason[:200]))

    async def _write(self, batch: list[Key]) -> None:
        counts = Counter(batch)
        keys = sorted(counts)  # one order for every server: concurrent upserts do not deadlock
        await self._pool.execute(UPSERT, self.window_s, [k[0] for k in keys], [k[1] for k in keys],
                                 [k[2] for k in keys], [counts[k] for k in keys], datetime.now(UTC))
