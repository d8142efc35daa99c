"""ListAccounts: the tenant's accounts by id, or one account's direct children; other tenants' never."""

from __future__ import annotations

import grpc
from credits.ledger.v1 import ledger_pb2 as pb

from tests.ledger.conftest import Ledger
from tests.ledger.requests_and_checks import rejected
from tests.tenancy import add_tenant_key


async def _ids(ledger: Ledger, parent: str = "", key: str | None = None) -> list[str]:
    md = [("x-api-key", key or ledger.key)]
    page = await ledger.stub.ListAccounts(pb.ListAccountsRequest(parent_account_id=parent), metadata=md)
    return [a.account_id for a in page.accounts]


async def test_every_account_or_one_parents_children(ledger: Ledger) -> None:
    await ledger.account("org")
    await ledger.account("org.b", parent="org")
    await ledger.account("org.a", parent="org")
    await ledger.account("org.a.x", parent="org.a")
    await ledger.account("solo")
    assert await _ids(ledger) == ["org", "org.a", "org.a.x", "org.b", "solo"]
    assert await _ids(ledger, "org") == ["org.a", "org.b"]  # direct children only
    assert await _ids(ledger, "org.a") == ["org.a.x"]
    assert await _ids(ledger, "solo") == []
    page = await ledger.stub.ListAccounts(pb.ListAccountsRequest(parent_account_id="org"), metadata=ledger.md)
    assert [a.parent_account_id for a in page.accounts] == ["org", "org"] and page.next_page_token == ""


async def test_an_unknown_parent_is_not_found_and_tenants_are_apart(ledger: Ledger) -> None:
    await ledger.account("mine")
    await rejected(ledger.stub.ListAccounts(pb.ListAccountsRequest(parent_account_id="nobody"), metadata=ledger.md),
                   grpc.StatusCode.NOT_FOUND, "parent_account_id")
    await rejected(ledger.stub.ListAccounts(pb.ListAccountsRequest(parent_account_id="bad id"), metadata=ledger.md),
                   grpc.StatusCode.INVALID_ARGUMENT, "parent_account_id")
    other = await add_tenant_key(ledger.dsn, "tenant-b", "readonly")
    assert await _ids(ledger, key=other) == []
    await rejected(ledger.stub.ListAccounts(pb.ListAccountsRequest(parent_account_id="mine"),
                                            metadata=[("x-api-key", other)]), grpc.StatusCode.NOT_FOUND,
                   "parent_account_id")
