"""Every FinanceService RPC (served by the ledger server), fuzzed from its request descriptor: documented
statuses only, a rejected request writes nothing, and tenant A never sees tenant B's books."""

from __future__ import annotations

from dataclasses import replace

import pytest
from credits.finance.v1 import finance_pb2 as fpb
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.conftest import Seeded
from tests.fuzz.generators import Pools, message_strategy
from tests.fuzz.harness import Service
from tests.fuzz.settings import FUZZ, KNOWN_BUGS, case

SERVICE = fpb.DESCRIPTOR.services_by_name["FinanceService"]
PERIODS = ["2026-11", "2026-11-05", "2025-01", "2026-12", "2025-13", "2026-02-30", "", "11-2026"]
RULES = ["{}", '{"breakage": {"method": "PROPORTIONAL", "expected_rate": "0.2"}}', "[", '{"nope": 1}',
         '{"chart": {"REVENUE": ""}}', '{"free_treatment": {"PROMOTIONAL": "DEFERRED_REVENUE"}}']


def finance_pools(pools: Pools) -> Pools:
    return replace(pools, by_name={**pools.by_name, "period": PERIODS, "from_period": PERIODS,
                                   "to_period": PERIODS, "rules_json": RULES})


@pytest.mark.parametrize("method", [case(m, KNOWN_BUGS) for m in SERVICE.methods])
@FUZZ
@given(data=st.data())
async def test_finance_rpc_fuzz(ledger: Seeded, method: object, data: st.DataObject) -> None:
    service = Service("finance", SERVICE, ledger.service.channel, ledger.service.snapshot)
    request = data.draw(message_strategy(method.input_type, finance_pools(ledger.pools)),  # type: ignore[attr-defined]
                        label="request")
    key = data.draw(st.sampled_from([ledger.a.key] * 9 + [ledger.b.key]), label="key")
    await service.checked_call(method, request, key, secret_allowed=key == ledger.b.key)  # type: ignore[arg-type]
