"""Every LedgerService RPC, fuzzed from its request descriptor: documented statuses only, and a
rejected request writes nothing (every table's row count and content unchanged)."""

from __future__ import annotations

import pytest
from credits.ledger.v1 import ledger_pb2 as lpb
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.conftest import Seeded
from tests.fuzz.generators import message_strategy
from tests.fuzz.settings import FUZZ, KNOWN_BUGS, case

SERVICE = lpb.DESCRIPTOR.services_by_name["LedgerService"]


@pytest.mark.parametrize("method", [case(m, KNOWN_BUGS) for m in SERVICE.methods])
@FUZZ
@given(data=st.data())
async def test_ledger_rpc_fuzz(ledger: Seeded, method: object, data: st.DataObject) -> None:
    request = data.draw(message_strategy(method.input_type, ledger.pools), label="request")  # type: ignore[attr-defined]
    # Tenant A's admin key: auth and roles are fuzzed in test_auth_fuzz; here the payload is the point.
    # Now and then tenant B's key on the same pools: B's view must never include A's... (B owns SECRET).
    key = data.draw(st.sampled_from([ledger.a.key] * 9 + [ledger.b.key]), label="key")
    await ledger.service.checked_call(method, request, key, secret_allowed=key == ledger.b.key)  # type: ignore
