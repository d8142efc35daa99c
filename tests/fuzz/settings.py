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
KNOWN_BUGS: dict[str, str] = {}  # every bug the fuzzers found so far is fixed (see test_known_bugs.py)


def case(method: Any, bugs: dict[str, str]) -> Any:
    reason = bugs.get(f"{method.containing_service.name}/{method.name}")
    if reason is None:
        return pytest.param(method, id=method.name)
    return pytest.param(method, id=method.name, marks=pytest.mark.xfail(strict=True, reason=f"bug: {reason}"))
