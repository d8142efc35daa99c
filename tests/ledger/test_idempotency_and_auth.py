"""Idempotency (SPEC §6) and authentication / tenant isolation."""

import asyncio

import grpc
from credits.ledger.v1 import ledger_pb2 as pb

from tests.ledger.conftest import Ledger
from tests.ledger.requests_and_checks import charge, rejected, table_counts
from tests.tenancy import add_tenant_key


async def test_same_key_same_payload_replays_different_payload_conflicts(ledger: Ledger) -> None:
    await ledger.account("acme")
    req = pb.GrantCreditsRequest(idempotency_key="g1", account_id="acme", type=pb.PURCHASED, unit="USD", amount="5")
    first = await ledger.stub.GrantCredits(req, metadata=ledger.md)
    again = await ledger.stub.GrantCredits(req, metadata=ledger.md)
    assert first == again
    before = await table_counts(ledger.dsn)
    other = pb.GrantCreditsRequest(idempotency_key="g1", account_id="acme", type=pb.PURCHASED, unit="USD", amount="6")
    await rejected(ledger.stub.GrantCredits(other, metadata=ledger.md), grpc.StatusCode.ALREADY_EXISTS,
                   "idempotency_key")
    # The same key on another verb is a conflict too.
    await rejected(ledger.stub.DebitCredits(pb.DebitCreditsRequest(idempotency_key="g1", account_id="acme",
                                                                   unit="USD", charges=[charge("1")]),
                                            metadata=ledger.md), grpc.StatusCode.ALREADY_EXISTS, "idempotency_key")
    assert await table_counts(ledger.dsn) == before


async def test_concurrent_duplicates_apply_once(ledger: Ledger) -> None:
    await ledger.account("acme")
    await ledger.grant("acme", "100")
    req = pb.DebitCreditsRequest(idempotency_key="dup", account_id="acme", unit="USD", charges=[charge("7")])
    results = await asyncio.gather(*(ledger.stub.DebitCredits(req, metadata=ledger.md) for _ in range(30)))
    assert len({r.SerializeToString() for r in results}) == 1
    acct = await ledger.stub.CreateAccount(pb.CreateAccountRequest(idempotency_key="ca", account_id="b"),
                                           metadata=ledger.md)
    same = await asyncio.gather(*(ledger.stub.CreateAccount(pb.CreateAccountRequest(
        idempotency_key="ca", account_id="b"), metadata=ledger.md) for _ in range(5)))
    assert all(s == acct for s in same)
    bal = await ledger.stub.GetBalance(pb.GetBalanceRequest(account_id="acme"), metadata=ledger.md)
    assert bal.totals[0].consumed == "7.00"


async def test_missing_unknown_and_malformed_keys_are_unauthenticated(ledger: Ledger) -> None:
    req = pb.GetAccountRequest(account_id="acme")
    await rejected(ledger.stub.GetAccount(req), grpc.StatusCode.UNAUTHENTICATED, "missing")
    await rejected(ledger.stub.GetAccount(req, metadata=[("x-api-key", "nonsense")]),
                   grpc.StatusCode.UNAUTHENTICATED, "malformed")
    await rejected(ledger.stub.GetAccount(req, metadata=[("x-api-key", "ck_abc.def")]),
                   grpc.StatusCode.UNAUTHENTICATED, "unknown")
    forged = ledger.key[:-3] + "xyz"
    await rejected(ledger.stub.GetAccount(req, metadata=[("x-api-key", forged)]),
                   grpc.StatusCode.UNAUTHENTICATED, "unknown")


async def test_other_tenants_objects_are_not_found(ledger: Ledger) -> None:
    await ledger.account("acme")
    lot = await ledger.grant("acme", "5")
    other = await add_tenant_key(ledger.dsn, "tenant-b")
    md = [("x-api-key", other)]
    await rejected(ledger.stub.GetAccount(pb.GetAccountRequest(account_id="acme"), metadata=md),
                   grpc.StatusCode.NOT_FOUND, "account_id")
    await rejected(ledger.stub.GetLot(pb.GetLotRequest(lot_id=lot.lot_id), metadata=md),
                   grpc.StatusCode.NOT_FOUND, "lot_id")
    await rejected(ledger.stub.DebitCredits(pb.DebitCreditsRequest(idempotency_key="x", account_id="acme", unit="USD",
                                                                   charges=[charge("1")]), metadata=md),
                   grpc.StatusCode.NOT_FOUND, "account_id")
    # tenant-b may create its own "acme" without seeing tenant-a's.
    await ledger.stub.CreateAccount(pb.CreateAccountRequest(idempotency_key="a", account_id="acme"), metadata=md)
    bal = await ledger.stub.GetBalance(pb.GetBalanceRequest(account_id="acme"), metadata=md)
    assert list(bal.totals) == []


async def test_readonly_role_cannot_mutate(ledger: Ledger) -> None:
    ro = await add_tenant_key(ledger.dsn, "tenant-a", role="readonly")
    await rejected(ledger.stub.CreateAccount(pb.CreateAccountRequest(idempotency_key="a", account_id="x"),
                                             metadata=[("x-api-key", ro)]),
                   grpc.StatusCode.PERMISSION_DENIED, "readonly")
    await ledger.account("x")
    await ledger.stub.GetAccount(pb.GetAccountRequest(account_id="x"), metadata=[("x-api-key", ro)])
