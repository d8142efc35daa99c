"""How creditctl reaches a running stack: settings, the API key as call metadata, channels and stubs.

Addresses and the key come from settings (CREDITS_LEDGER_ADDR, CREDITS_INVOICE_ADDR,
CREDITS_BILLING_ADDR, CREDITS_API_KEY), else from the stack file a running `creditctl up` keeps in
the data directory (service_runtime.settings); TLS from the CREDITS_TLS_* settings (service_runtime.tls).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from credits.alerts.v1 import alerts_pb2_grpc
from credits.billing.v1 import billing_pb2_grpc
from credits.finance.v1 import finance_pb2_grpc
from credits.invoice.v1 import invoice_pb2_grpc
from credits.ledger.v1 import ledger_pb2_grpc

from creditctl.errors import USAGE, UserError, rpc_refusals
from service_runtime.settings import Settings, SettingsError
from service_runtime.tls import open_channel

Metadata = list[tuple[str, str]]
Stub = TypeVar("Stub")
Result = TypeVar("Result")

MISSING_KEY = "CREDITS_API_KEY is not set: set it to an API key of your tenant (creditctl tenants create)"

# Exit status of a missing API key or a refused call, per service, as creditctl has always answered.
LEDGER_REFUSED = 2
BILLING_REFUSED = 2
INVOICE_REFUSED = 1
AUDIT_REFUSED = 1


def load_settings(*, stack: bool = True, **overrides: Any) -> Settings:
    """The CREDITS_* settings, and what the environment leaves unset from the running stack's file
    (`creditctl up` records its real addresses in the data directory) unless `stack` is False; a value
    that does not parse is one line naming the variable (exit 2)."""
    try:
        return Settings.from_env(stack=stack, **overrides)
    except SettingsError as err:
        raise UserError(f"settings: {err}", USAGE) from None


def api_key_metadata(api_key: str) -> Metadata:
    return [("x-api-key", api_key)]


def require_api_key(settings: Settings, status: int) -> str:
    if not settings.api_key:
        raise UserError(MISSING_KEY, status)
    return settings.api_key


def call(address: str, stub_type: Callable[[grpc.aio.Channel], Stub],
         work: Callable[[Stub, Metadata], Awaitable[Result]], *, api_key: str, refused: int) -> Result:
    """Runs `work` with a stub on a channel to `address`; a refused call exits with `refused`."""

    async def run() -> Result:
        async with open_channel(address) as channel:
            return await work(stub_type(channel), api_key_metadata(api_key))

    with rpc_refusals(refused, target=_target(address)):
        return asyncio.run(run())


_SETTING_OF_ADDR = {"ledger_addr": "CREDITS_LEDGER_ADDR", "invoice_addr": "CREDITS_INVOICE_ADDR",
                    "billing_addr": "CREDITS_BILLING_ADDR"}


def _target(address: str) -> str:
    """`ledger at 127.0.0.1:50051 (CREDITS_LEDGER_ADDR)` for the service at `address`, as the settings say."""
    try:
        settings = Settings.from_env(stack=True)
    except SettingsError:
        return address
    for attr, setting in _SETTING_OF_ADDR.items():
        if getattr(settings, attr) == address:
            return f"{attr.removesuffix('_addr')} at {address} ({setting})"
    return address


def call_ledger(work: Callable[[ledger_pb2_grpc.LedgerServiceStub, Metadata], Awaitable[Result]]) -> Result:
    settings = load_settings()
    key = require_api_key(settings, LEDGER_REFUSED)
    return call(settings.ledger_addr, ledger_pb2_grpc.LedgerServiceStub, work, api_key=key, refused=LEDGER_REFUSED)


def call_invoice(work: Callable[[invoice_pb2_grpc.InvoiceServiceStub, Metadata], Awaitable[Result]]) -> Result:
    settings = load_settings()
    key = require_api_key(settings, INVOICE_REFUSED)
    return call(settings.invoice_addr, invoice_pb2_grpc.InvoiceServiceStub, work, api_key=key,
                refused=INVOICE_REFUSED)


def call_billing(work: Callable[[billing_pb2_grpc.BillingServiceStub, Metadata], Awaitable[Result]]) -> Result:
    settings = load_settings()
    key = require_api_key(settings, BILLING_REFUSED)
    return call(settings.billing_addr, billing_pb2_grpc.BillingServiceStub, work, api_key=key,
                refused=BILLING_REFUSED)


# One unary call by RPC name, for the commands that make exactly one (most of them). The RPC names
# the commands pass here are what tests/creditctl/test_rpc_coverage.py counts.
SERVICES: dict[str, tuple[str, Callable[[grpc.aio.Channel], Any], int]] = {
    "ledger": ("ledger_addr", ledger_pb2_grpc.LedgerServiceStub, LEDGER_REFUSED),
    "invoice": ("invoice_addr", invoice_pb2_grpc.InvoiceServiceStub, INVOICE_REFUSED),
    "billing": ("billing_addr", billing_pb2_grpc.BillingServiceStub, BILLING_REFUSED),
    "alerts": ("ledger_addr", alerts_pb2_grpc.AlertsServiceStub, LEDGER_REFUSED),  # served by the ledger server
    "finance": ("ledger_addr", finance_pb2_grpc.FinanceServiceStub, LEDGER_REFUSED),  # served by the ledger
}


def rpc(service: str, method: str, request: Any) -> Any:
    """Calls `service`'s RPC `method` once with CREDITS_API_KEY; a refusal is one line (UserError)."""
    return rpcs(service, lambda call_one: call_one(method, request))


def rpcs(service: str, work: Callable[[Callable[[str, Any], Awaitable[Any]]], Awaitable[Result]]) -> Result:
    """Several calls on one channel: `work(call_one)` where `await call_one(method, request)` makes one."""
    addr_setting, stub_type, refused = SERVICES[service]
    settings = load_settings()
    key = require_api_key(settings, refused)

    async def run(stub: Any, md: Metadata) -> Result:
        async def call_one(method: str, request: Any) -> Any:
            return await getattr(stub, method)(request, metadata=md)

        return await work(call_one)

    return call(getattr(settings, addr_setting), stub_type, run, api_key=key, refused=refused)


def paged(service: str, method: str, request: Any, field: str, *, limit: int = 0) -> list[Any]:
    """Every item of a paged list RPC (`field` of each response), following next_page_token up to `limit`
    items (0 = all)."""

    async def work(call_one: Callable[[str, Any], Awaitable[Any]]) -> list[Any]:
        items: list[Any] = []
        while True:
            response = await call_one(method, request)
            items.extend(getattr(response, field))
            request.page_token = response.next_page_token
            if not request.page_token or (limit and len(items) >= limit):
                return items[:limit] if limit else items

    return rpcs(service, work)
