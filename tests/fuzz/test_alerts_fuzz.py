"""Every AlertsService RPC (served by the ledger server), fuzzed from its request descriptor against the
seeded ledger: documented statuses only, and a rejected request writes nothing."""

from __future__ import annotations

import pytest
from credits.alerts.v1 import alerts_pb2 as apb
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.conftest import Seeded
from tests.fuzz.generators import message_strategy
from tests.fuzz.settings import FUZZ, KNOWN_BUGS, case

SERVICE = apb.DESCRIPTOR.services_by_name["AlertsService"]


@pytest.mark.parametrize("method", [case(m, KNOWN_BUGS) for m in SERVICE.methods])
@FUZZ
@given(data=st.data())
async def test_alerts_rpc_fuzz(ledger: Seeded, method: object, data: st.DataObject) -> None:
    request = data.draw(message_strategy(method.input_type, ledger.pools), label="request")  # type: ignore[attr-defined]
    key = data.draw(st.sampled_from([ledger.a.key] * 9 + [ledger.b.key]), label="key")
    await ledger.service.checked_call(method, request, key, secret_allowed=key == ledger.b.key)  # type: ignore
