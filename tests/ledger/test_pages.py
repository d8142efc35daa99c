"""Every ledger List RPC follows the one page rule (service_runtime.pages): opaque tokens it issued,
anything else INVALID_ARGUMENT naming `page_token`; negative page sizes refused; paging through with
the returned tokens yields every item once, in order."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from credits.ledger.v1 import ledger_pb2 as pb

from tests.ledger.conftest import Ledger
from tests.ledger.requests_and_checks import charge, rejected, table_counts
from tests.tenancy import add_tenant_key

SERVICE = pb.DESCRIPTOR.services_by_name["LedgerService"]
PAGED = [m for m in SERVICE.methods if "page_token" in m.input_type.fields_by_name]
# The fields a List RPC needs besides its page, so that the page is what gets refused.
REQUIRED: dict[str, dict[str, Any]] = {"ListLots": {"account_id": "acme"}, "GetStatement": {"account_id": "acme"}}
ITEMS = {"ListLots": "lots", "ListEntries": "entries", "ListHolds": "holds", "ListGrantRequests": "requests",
         "ListAccounts": "accounts", "GetStatement": "lines"}


def test_every_paged_rpc_is_covered() -> None:
    assert {m.name for m in PAGED} == set(ITEMS), "a List RPC without a page test (add it to ITEMS)"


def _request(name: str, **fields: Any) -> Any:
    return getattr(pb, SERVICE.methods_by_name[name].input_type.name)(**REQUIRED.get(name, {}), **fields)


@pytest.mark.parametrize("name", sorted(ITEMS))
@pytest.mark.parametrize("token", ["!!", "abc", "1", "100", "Zm9vAGJhcg", "x" * 600])
async def test_a_token_the_service_did_not_issue_is_invalid(ledger: Ledger, name: str, token: str) -> None:
    """Raw cursors ("1", "100": the sequence numbers the ledger once used as tokens), non-base64, a
    cursor with a NUL in it, an oversized token."""
    await ledger.account("acme")
    before = await table_counts(ledger.dsn)
    await rejected(getattr(ledger.stub, name)(_request(name, page_token=token), metadata=ledger.md),
                   grpc.StatusCode.INVALID_ARGUMENT, "page_token")
    assert await table_counts(ledger.dsn) == before


@pytest.mark.parametrize("name", sorted(ITEMS))
async def test_negative_page_size_is_invalid(ledger: Ledger, name: str) -> None:
    await ledger.account("acme")
    await rejected(getattr(ledger.stub, name)(_request(name, page_size=-1), metadata=ledger.md),
                   grpc.StatusCode.INVALID_ARGUMENT, "page_size")


async def _page_through(ledger: Ledger, name: str, md: list[tuple[str, str]], **fields: Any) -> list[Any]:
    """Every item, following next_page_token two at a time."""
    out: list[Any] = []
    token = ""
    for _ in range(100):
        page = await getattr(ledger.stub, name)(_request(name, page_size=2, page_token=token, **fields), metadata=md)
        out.extend(getattr(page, ITEMS[name]))
        token = page.next_page_token
        if not token:
            return out
    raise AssertionError("paging did not end")


async def test_paging_through_with_returned_tokens_yields_everything_once(ledger: Ledger) -> None:
    await ledger.account("acme")
    for i in range(5):
        await ledger.grant("acme", f"{i + 1}.00", key=f"g{i}")
    for i in range(5):
        await ledger.stub.ReserveCredits(pb.ReserveCreditsRequest(
            idempotency_key=f"r{i}", hold_key=f"inv/{i}/run", account_id="acme", unit="USD",
            charges=[charge("0.10")]), metadata=ledger.md)
    support = [("x-api-key", await add_tenant_key(ledger.dsn, "tenant-a", role="support"))]
    await ledger.stub.SetSupportGrantLimits(pb.SetSupportGrantLimitsRequest(
        idempotency_key="lim", unit="USD", max_per_grant="1", max_per_day="1"), metadata=ledger.md)
    for i in range(5):
        out = await ledger.stub.GrantCredits(pb.GrantCreditsRequest(
            idempotency_key=f"s{i}", account_id="acme", type=pb.COMPENSATORY, unit="USD", amount="5",
            reason_code="outage", incident_id="INC-1"), metadata=support)
        assert out.grant_request.status == pb.PENDING_APPROVAL
    for i in range(5):
        await ledger.account(f"acme-team-{i}", parent="acme")
    for name, fields in (("ListLots", {}), ("ListEntries", {"account_id": "acme"}), ("ListHolds", {}),
                         ("ListGrantRequests", {}), ("ListAccounts", {}),
                         ("ListAccounts", {"parent_account_id": "acme"}), ("GetStatement", {})):
        paged = await _page_through(ledger, name, ledger.md, **fields)
        whole = getattr(await getattr(ledger.stub, name)(_request(name, page_size=1000, **fields),
                                                           metadata=ledger.md), ITEMS[name])
        assert len(whole) >= 5, name
        assert [x.SerializeToString() for x in paged] == [x.SerializeToString() for x in whole], name
    keys = [h.hold_key for h in await _page_through(ledger, "ListHolds", ledger.md, hold_key_prefix="inv/")]
    assert keys == sorted(f"inv/{i}/run" for i in range(5))
