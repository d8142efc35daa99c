"""Every invoice List RPC and QueryAudit page by the one rule (service_runtime.pages): a page_token
the service did not issue is INVALID_ARGUMENT naming page_token, a negative page_size is
INVALID_ARGUMENT naming page_size, a page_size above 1000 is served as 1000, and walking the
returned tokens visits every row once, in order."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from credits.audit.v1 import audit_pb2, audit_pb2_grpc
from credits.invoice.v1 import invoice_pb2 as pb

from tests.invoice.conftest import InvoiceEnv, seed_catalog, ts, when

# ListTopCustomers is a ranking bounded by its `limit` (at most 100), not a collection to walk: no pages.
RANKINGS = {"ListTopCustomers"}
LIST_RPCS = [m for m in pb.DESCRIPTOR.services_by_name["InvoiceService"].methods
             if m.name.startswith("List") and m.name not in RANKINGS]
NOT_ISSUED = ["!!", "1", "garbage!", "\u00b2", "MQ=", "a" * 600]
# Lists of one parent: the parent's id (from seed_catalog) goes with every request.
PARENTS: dict[str, dict[str, str]] = {"ListPlanVersions": {"plan_id": "chatppt-pro"}}


def _request(method: Any, **fields: Any) -> Any:
    return getattr(pb, method.input_type.name)(**fields)


async def _refused(call: Any, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert field in (err.value.details() or "")


def test_the_list_rpcs_are_found() -> None:
    with_token = {m.name for m in LIST_RPCS if "page_token" in m.input_type.fields_by_name}
    with_size = {m.name for m in LIST_RPCS if "page_size" in m.input_type.fields_by_name}
    assert "ListInvoices" in with_token and {"ListInvoices", "ListDueSubscriptions"} <= with_size
    assert with_token <= with_size
    for name in RANKINGS:  # a ranking stays bounded: a limit, and no page fields
        fields = pb.DESCRIPTOR.services_by_name["InvoiceService"].methods_by_name[name].input_type.fields_by_name
        assert "limit" in fields and "page_token" not in fields


@pytest.mark.parametrize("method", LIST_RPCS, ids=lambda m: m.name)
async def test_every_list_rpc_follows_the_page_rule(env: InvoiceEnv, method: Any) -> None:
    fields = method.input_type.fields_by_name
    parent = PARENTS.get(method.name, {})
    if parent:
        await seed_catalog(env)
    if "page_token" in fields:
        for token in NOT_ISSUED:
            await _refused(env.call(method.name, _request(method, page_token=token, **parent)), "page_token")
    await _refused(env.call(method.name, _request(method, page_size=-1, **parent)), "page_size")
    # above the maximum: served as 1000
    served = await env.call(method.name, _request(method, page_size=5000, **parent))
    assert isinstance(served, getattr(pb, method.output_type.name))


async def test_query_audit_follows_the_page_rule(env: InvoiceEnv) -> None:
    audit = audit_pb2_grpc.AuditServiceStub(env.channel)
    for token in NOT_ISSUED:
        await _refused(audit.QueryAudit(audit_pb2.QueryAuditRequest(page_token=token), metadata=env.md), "page_token")
    await _refused(audit.QueryAudit(audit_pb2.QueryAuditRequest(page_size=-1), metadata=env.md), "page_size")
    await seed_catalog(env)  # five mutations, after the refused queries above: more than two pages of two
    everything = await audit.QueryAudit(audit_pb2.QueryAuditRequest(page_size=5000), metadata=env.md)
    assert len(everything.records) == len(NOT_ISSUED) + 1 + 5 and everything.next_page_token == ""
    walked: list[int] = []
    token = ""
    while True:
        page = await audit.QueryAudit(audit_pb2.QueryAuditRequest(page_size=2, page_token=token), metadata=env.md)
        assert len(page.records) <= 2
        walked += [r.audit_id for r in page.records]
        token = page.next_page_token
        if not token:
            break
    assert walked == [r.audit_id for r in everything.records]


async def test_list_invoices_pages_with_its_tokens(env: InvoiceEnv) -> None:
    await seed_catalog(env, anchor=when(1, month=1))
    for month in range(1, 8):
        await env.call("CreateDraft", pb.CreateDraftRequest(idempotency_key=f"d{month}", customer_id="john-wick",
                                                            period_start=ts(when(1, month=month))))
    everything = await env.call("ListInvoices", pb.ListInvoicesRequest())
    assert len(everything.invoices) == 7 and everything.next_page_token == ""
    walked: list[str] = []
    token = ""
    for _ in range(10):
        page = await env.call("ListInvoices", pb.ListInvoicesRequest(page_size=3, page_token=token))
        walked += [i.invoice_id for i in page.invoices]
        token = page.next_page_token
        if not token:
            break
    assert walked == [i.invoice_id for i in everything.invoices]
    # A token carries the cursor only: another filter on the next page narrows, never breaks it.
    first = await env.call("ListInvoices", pb.ListInvoicesRequest(page_size=3))
    narrowed = await env.call("ListInvoices", pb.ListInvoicesRequest(customer_id="nobody", page_size=3,
                                                                     page_token=first.next_page_token))
    assert list(narrowed.invoices) == []
