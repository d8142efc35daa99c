"""Every RPC of the ledger, invoice and billing front door against the one permission table.

Driven from the service descriptors: an RPC missing from `service_runtime.permissions` fails here
(and is refused for everyone at runtime). Each call uses an empty request: the interceptor decides
UNAUTHENTICATED / PERMISSION_DENIED before the request is looked at, and an allowed role gets any
other status (usually INVALID_ARGUMENT: nothing is written).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from credits.alerts.v1 import alerts_pb2
from credits.billing.v1 import billing_pb2, billing_pb2_grpc
from credits.invoice.v1 import invoice_pb2
from credits.ledger.v1 import ledger_pb2
from google.protobuf.descriptor import ServiceDescriptor

from service_runtime import permissions as perms
from service_runtime.api_keys import ROLES, KeyResolver, mint_key, store_tenant_key
from service_runtime.grpc_server import create_server
from service_runtime.postgres import create_pool
from tests.security.conftest import TENANT_A, Stack, code_of

LEDGER = ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"]
INVOICE = invoice_pb2.DESCRIPTOR.services_by_name["InvoiceService"]
BILLING = billing_pb2.DESCRIPTOR.services_by_name["BillingService"]
ALERTS = alerts_pb2.DESCRIPTOR.services_by_name["AlertsService"]
MODULES = {LEDGER.full_name: ledger_pb2, INVOICE.full_name: invoice_pb2, BILLING.full_name: billing_pb2,
           ALERTS.full_name: alerts_pb2}
REFUSED = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


def rpcs(service: ServiceDescriptor) -> list[tuple[str, str, Any]]:
    """(full method path, method name, empty request) per RPC of `service`."""
    module = MODULES[service.full_name]
    return [(f"/{service.full_name}/{m.name}", m.name, getattr(module, m.input_type.name)())
            for m in service.methods]


def test_every_rpc_of_every_service_has_a_permission_entry() -> None:
    for service in (LEDGER, INVOICE, BILLING, ALERTS):
        names = [m.name for m in service.methods]
        assert perms.missing(service.full_name, names) == [], service.full_name
        assert set(perms.BY_SERVICE[service.full_name]) == {f"/{service.full_name}/{n}" for n in names}


def test_service_tables_are_the_shared_table() -> None:
    from invoice_service.api.permissions import PERMISSIONS as INVOICE_TABLE
    from ledger_service.api.permissions import PERMISSIONS as LEDGER_TABLE

    assert LEDGER_TABLE == perms.LEDGER and INVOICE_TABLE == perms.INVOICE
    for table in perms.BY_SERVICE.values():
        for roles in table.values():
            assert roles and roles <= {*ROLES, "portal", "finance_portal"} and "admin" in roles


def test_front_door_serves_the_shared_table() -> None:
    from coordinator.front_door import PERMISSIONS

    assert PERMISSIONS == perms.BILLING


def test_least_privilege_shape() -> None:
    """The role model in the module docstring, as assertions (a change here is a policy change)."""
    for table in perms.BY_SERVICE.values():
        for path, roles in table.items():
            name = path.rpartition("/")[2]
            if "readonly" in roles:
                assert name.startswith(("Get", "List", "Explain", "Render", "Split", "Export", "Watch")), path
                # a read-only key reads everything; the books only finance (and read-only keys) read
                books = table is perms.FINANCE_BOOKS and roles - {"finance_portal"} == perms.FINANCE | {"readonly"}
                assert roles - {"portal"} == perms.ALL or books, path
            if "portal" in roles:  # a customer's portal session: the few reads a portal shows, nothing else
                assert name in perms.PORTAL_READS[path.strip("/").partition("/")[0]] and "readonly" in roles, path
            if "finance_portal" in roles:  # a finance session: the finance report reads, nothing else
                assert table is perms.FINANCE_BOOKS and name in perms.FINANCE_PORTAL_READS, path
                assert "readonly" in roles and "portal" not in roles, path
    ledger = {p.rpartition("/")[2]: r for p, r in perms.LEDGER.items()}
    invoice = {p.rpartition("/")[2]: r for p, r in perms.INVOICE.items()}
    service_writes = {n for n, r in {**ledger, **invoice}.items() if "service" in r and r - {"portal"} != perms.ALL}
    assert service_writes == {"ReserveCredits", "CommitHold", "ReleaseHold", "DebitCredits", "BatchDebitCredits",
                              "IngestEvent", "IngestEvents"}
    support_writes = {n for n, r in {**ledger, **invoice}.items() if "support" in r and r - {"portal"} != perms.ALL}
    # a link writes nothing: support shares it, and ends it when it went to the wrong person
    assert support_writes == {"GrantCredits", "CreatePortalLink", "RevokePortalLink"}
    assert "support" not in perms.BILLING[f"/{perms.BILLING_SERVICE}/CompensateOutage"]


class _NoTemporal:
    """A Temporal client stand-in: an allowed call gets past the interceptor and fails here."""

    namespace = "default"

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("no Temporal in the security suite")


@pytest.fixture(scope="module")
async def front_door(stack: Stack) -> AsyncIterator[billing_pb2_grpc.BillingServiceStub]:
    """The billing front door's servicer behind the shared table, without Temporal."""
    from coordinator.front_door import SERVICE, BillingServicer

    pool = await create_pool(stack.ledger_dsn, min_size=1, max_size=4)
    servicer = BillingServicer(_NoTemporal(), "q")  # type: ignore[arg-type]
    server, port = await create_server([(billing_pb2_grpc.add_BillingServiceServicer_to_server, servicer, SERVICE)],
                                       KeyResolver(pool), perms.BILLING)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield billing_pb2_grpc.BillingServiceStub(channel)
    finally:
        await channel.close()
        await server.stop(0)
        await pool.close()


def _targets(stack: Stack, front_door: Any) -> list[tuple[Any, str, str, Any]]:
    out = []
    for service, stub in ((LEDGER, stack.ledger), (INVOICE, stack.invoice), (BILLING, front_door)):
        out += [(stub, path, name, req) for path, name, req in rpcs(service)]
    return out


async def _bad_keys(dsns: list[str]) -> dict[str, str]:
    """Keys that must all be UNAUTHENTICATED: malformed, unknown, expired, revoked, wrong secret."""
    expired_id, expired, expired_hash = mint_key()
    revoked_id, revoked, revoked_hash = mint_key()
    for dsn in dsns:
        conn = await asyncpg.connect(dsn)
        try:
            await store_tenant_key(conn, TENANT_A, TENANT_A, expired_id, expired_hash, "admin",
                                   datetime.now(UTC) - timedelta(seconds=1))
            await store_tenant_key(conn, TENANT_A, TENANT_A, revoked_id, revoked_hash, "admin")
            await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE key_id = $1", revoked_id)
        finally:
            await conn.close()
    return {"malformed": "not-a-key", "unknown": mint_key()[1], "expired": expired, "revoked": revoked,
            "wrong secret": f"ck_{revoked_id}.wrong"}


async def test_every_rpc_refuses_a_missing_or_bad_key(stack: Stack, front_door: Any) -> None:
    bad = await _bad_keys([stack.ledger_dsn, stack.invoice_dsn])
    failures = []
    for stub, path, name, req in _targets(stack, front_door):
        code, details, _ = await code_of(getattr(stub, name)(req))
        if code != grpc.StatusCode.UNAUTHENTICATED:
            failures.append((path, "no key", code, details))
        for label, key in bad.items():
            code, details, _ = await code_of(getattr(stub, name)(req, metadata=[("x-api-key", key)]))
            if code != grpc.StatusCode.UNAUTHENTICATED:
                failures.append((path, label, code, details))
    assert failures == []


async def test_each_role_is_refused_exactly_where_the_table_says(stack: Stack, front_door: Any) -> None:
    failures = []
    for stub, path, name, req in _targets(stack, front_door):
        allowed = perms.allowed(path)
        for role in ROLES:
            code, details, _ = await code_of(
                getattr(stub, name)(req, metadata=[("x-api-key", stack.keys[TENANT_A][role])]))
            if role in allowed and code in REFUSED:
                failures.append((path, role, "refused but allowed", code, details))
            if role not in allowed and code != grpc.StatusCode.PERMISSION_DENIED:
                failures.append((path, role, "not refused", code, details))
            if code == grpc.StatusCode.PERMISSION_DENIED and role not in allowed:
                assert role in details and name in details
    assert failures == []
