"""Every InvoiceService RPC, fuzzed from its request descriptor: documented statuses only, and a
rejected request writes nothing (every table's row count and content unchanged)."""

from __future__ import annotations

import pytest
from credits.invoice.v1 import invoice_pb2 as ipb
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.conftest import Seeded
from tests.fuzz.generators import message_strategy
from tests.fuzz.settings import FUZZ, KNOWN_BUGS, case

SERVICE = ipb.DESCRIPTOR.services_by_name["InvoiceService"]


@pytest.mark.parametrize("method", [case(m, KNOWN_BUGS) for m in SERVICE.methods])
@FUZZ
@given(data=st.data())
async def test_invoice_rpc_fuzz(invoice: Seeded, method: object, data: st.DataObject) -> None:
    request = data.draw(message_strategy(method.input_type, invoice.pools), label="request")  # type: ignore[attr-defined]
    # Tenant A's admin key: auth and roles are fuzzed in test_auth_fuzz; here the payload is the point.
    # Now and then tenant B's key on the same pools: B's view must never include A's... (B owns SECRET).
    key = data.draw(st.sampled_from([invoice.a.key] * 9 + [invoice.b.key]), label="key")
    await invoice.service.checked_call(method, request, key, secret_allowed=key == invoice.b.key)  # type: ignore
