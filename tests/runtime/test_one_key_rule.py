"""One idempotency key rule and one answer to a reused key, in both services (service_runtime.idempotency)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from credits.invoice.v1 import invoice_pb2 as ipb
from credits.ledger.v1 import ledger_pb2 as lpb

from service_runtime import idempotency, identifiers
from tests.invoice.conftest import InvoiceEnv, start_env
from tests.ledger.conftest import Ledger

BAD_KEYS = ["a b", "caf\u00e9", "k" * 201, "tab\there"]


@pytest.fixture
async def invoice() -> AsyncIterator[InvoiceEnv]:
    running, server = await start_env()
    try:
        yield running
    finally:
        await server.stop(None)
        await running.close()


def test_the_key_rule_is_the_shared_one() -> None:
    assert idempotency.check_key is identifiers.check_key
    assert idempotency.check_key("inv/INV-1/run-7") == "inv/INV-1/run-7"


async def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code(), err.value.details() or ""


def _account(key: str, account_id: str = "acme") -> lpb.CreateAccountRequest:
    return lpb.CreateAccountRequest(idempotency_key=key, account_id=account_id)


def _customer(key: str, customer_id: str = "acme") -> ipb.CreateCustomerRequest:
    return ipb.CreateCustomerRequest(idempotency_key=key, customer_id=customer_id, ledger_account_id="acme")


@pytest.mark.parametrize("key", BAD_KEYS, ids=["space", "non-ascii", "too-long", "control"])
async def test_both_services_refuse_the_same_bad_keys(key: str, ledger: Ledger, invoice: InvoiceEnv) -> None:
    for call in (ledger.call("CreateAccount", _account(key)), invoice.call("CreateCustomer", _customer(key))):
        code, details = await _code(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "idempotency_key" in details


async def test_both_services_answer_a_reused_key_alike(ledger: Ledger, invoice: InvoiceEnv) -> None:
    first = await ledger.call("CreateAccount", _account("k-1"))
    assert await ledger.call("CreateAccount", _account("k-1")) == first  # replayed
    first_customer = await invoice.call("CreateCustomer", _customer("k-1"))
    assert await invoice.call("CreateCustomer", _customer("k-1")) == first_customer
    for call in (ledger.call("CreateAccount", _account("k-1", "other")),
                 invoice.call("CreateCustomer", _customer("k-1", "other"))):
        code, details = await _code(call)
        assert code == grpc.StatusCode.ALREADY_EXISTS and "idempotency_key" in details
        assert "'k-1' was already used for a different request" in details
