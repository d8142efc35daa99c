"""credits.audit.v1.AuditService/QueryAudit, registered on every server, fuzzed on the ledger and the
invoice server: documented statuses only, a refused query writes nothing but its audit record, and
tenant A never reads tenant B's trail (B's reasons and names carry the planted secret)."""

from __future__ import annotations

import pytest
from credits.audit.v1 import audit_pb2 as apb
from hypothesis import event, given
from hypothesis import strategies as st

from tests.fuzz.conftest import Seeded
from tests.fuzz.generators import Pools, message_strategy
from tests.fuzz.settings import FUZZ, KNOWN_BUGS, case, known_bug_input

SERVICE = apb.DESCRIPTOR.services_by_name["AuditService"]


def audit_pools(seeded: Seeded) -> Pools:
    a, b = seeded.a, seeded.b
    subjects = [f"{kind}_id={v}" for t in (a, b) for kind in ("account", "customer", "invoice")
                for v in t.ids.get(kind, [])[:2]]
    methods = ["GrantCredits", "CreateCustomer", "/credits.ledger.v1.LedgerService/GrantCredits", "QueryAudit",
               "%", "_", ""]
    by_name: dict[str, list[object]] = {
        "subject": [*subjects, "hold_key=x", ""],
        "key_id": [t.key.split(".")[0].removeprefix("ck_") for t in (a, b)] + [""],
        "method": methods, "page_token": ["", "1", "5", "100", "9223372036854775807"], "page_size": [0, 1, 5, 1000],
    }
    return Pools({**seeded.pools.by_name, **by_name}, seeded.pools.timestamps)


async def _fuzz(seeded: Seeded, method: object, data: st.DataObject) -> None:
    msg = data.draw(message_strategy(method.input_type, audit_pools(seeded)), label="request")  # type: ignore[attr-defined]
    key = data.draw(st.sampled_from([seeded.a.key] * 9 + [seeded.b.key]), label="key")
    if known_bug_input(method, msg):
        event("skipped: open bug (test_known_bugs.py)")
        return
    await seeded.service.checked_call(method, msg, key, secret_allowed=key == seeded.b.key)  # type: ignore


@pytest.mark.parametrize("method", [case(m, KNOWN_BUGS) for m in SERVICE.methods])
@FUZZ
@given(data=st.data())
async def test_query_audit_fuzz_on_ledger(ledger: Seeded, method: object, data: st.DataObject) -> None:
    await _fuzz(ledger, method, data)


@pytest.mark.parametrize("method", [case(m, KNOWN_BUGS) for m in SERVICE.methods])
@FUZZ
@given(data=st.data())
async def test_query_audit_fuzz_on_invoice(invoice: Seeded, method: object, data: st.DataObject) -> None:
    await _fuzz(invoice, method, data)
