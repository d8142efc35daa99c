"""Shared hypothesis settings (deterministic, no deadline, no example database) and the known-bug table."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings

EXAMPLES = int(os.environ.get("CREDITS_FUZZ_EXAMPLES", "30"))

FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,        # same examples on every run: CI is deterministic
    database=None,           # no .hypothesis directory in the checkout
    deadline=None,           # real servers: latency is not the property under test
    # Shrinking replays against a live server and is slow; xfail'd known bugs would pay it on every run.
    # CREDITS_FUZZ_SHRINK=1 turns it on when minimising a new finding.
    phases=[Phase.explicit, Phase.generate, *([Phase.shrink] if os.environ.get("CREDITS_FUZZ_SHRINK") else [])],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.large_base_example, HealthCheck.filter_too_much],
    print_blob=False,
)

# "<Service>/<Method>" -> reason. A listed RPC's fuzz test is xfail(strict=True): it flips when fixed.
NUL_AUDIT = ("a request refused with a NUL (\\x00) in any string field returns UNKNOWN: the audit write of the "
             "refusal fails (asyncpg CharacterNotInRepertoireError, Postgres text cannot hold NUL) in "
             "service_runtime/grpc_server.py guarded() -> AuditWriter.record")
NANOS = ("invoice_service/api/unpack.py timestamp() checks seconds but not nanos: Timestamp.nanos outside "
         "[0, 999999999] raises ValueError in ToDatetime -> UNKNOWN")
KNOWN_BUGS: dict[str, str] = {}  # RPCs whose whole fuzz test is a strict xfail (none: see KNOWN_BUG_INPUTS)

# Open bugs in code this suite does not own, each pinned by a minimal strict-xfail repro in
# test_known_bugs.py. The fuzz tests step over exactly these inputs (and nothing else), so every other
# property of the RPC stays guarded while the bug is open. Delete the entry when the repro XPASSes.
INT64_MAX = 2**63 - 1


def _bad_ts(ts: Any) -> bool:
    return not (-62135596800 <= ts.seconds <= 253402300799 and 0 <= ts.nanos <= 999_999_999)


def _bad_page_token(token: str) -> bool:
    return token.isdigit() and (not token.isascii() or int(token) > INT64_MAX)


AUDIT_QUERY_BUG = ("service_runtime/audit.py AuditServicer.QueryAudit: a page_token of non-ASCII digits ('²', "
                   "str.isdigit but not int()) or above 2^63-1 (asyncpg DataError on the bigint parameter), or a NUL "
                   "in subject/key_id/method (Postgres text cannot hold NUL) answers UNKNOWN")
FRONT_DOOR_TS_BUG = ("coordinator/front_door.py RunBillingCycle/CompensateOutage: as_of / expires_at go through "
                     "activities.from_ts -> Timestamp.ToDatetime unchecked; seconds outside [0001, 9999] or nanos "
                     "outside [0, 1e9) raise ValueError -> UNKNOWN")
KNOWN_BUG_INPUTS: dict[str, tuple[Any, str]] = {}  # all fixed: every input is sent again


def known_bug_input(method: Any, request: Any) -> str | None:
    """The open bug this request would trip (it is then not sent), or None."""
    entry = KNOWN_BUG_INPUTS.get(f"{method.containing_service.name}/{method.name}")
    if entry is None or isinstance(request, bytes) or not entry[0](request):
        return None
    return entry[1]


def case(method: Any, bugs: dict[str, str]) -> Any:
    reason = bugs.get(f"{method.containing_service.name}/{method.name}")
    if reason is None:
        return pytest.param(method, id=method.name)
    return pytest.param(method, id=method.name, marks=pytest.mark.xfail(strict=True, reason=f"bug: {reason}"))
