"""Every RPC of every fuzzed service is covered (derived from the descriptors, cross-checked against the
permission tables and the servicers), and hostile API-key metadata on every RPC is refused cleanly."""

from __future__ import annotations

import grpc
import pytest
from credits.alerts.v1 import alerts_pb2 as alpb
from credits.audit.v1 import audit_pb2 as apb
from credits.billing.v1 import billing_pb2 as bpb
from credits.invoice.v1 import invoice_pb2 as ipb
from credits.ledger.v1 import ledger_pb2 as lpb

from coordinator.front_door import PERMISSIONS as BILLING_PERMISSIONS
from invoice_service.api.permissions import PERMISSIONS as INVOICE_PERMISSIONS
from ledger_service.api.permissions import ALERT_PERMISSIONS
from ledger_service.api.permissions import PERMISSIONS as LEDGER_PERMISSIONS
from service_runtime.audit import AUDIT_PERMISSIONS
from tests.fuzz import test_alerts_fuzz, test_audit_fuzz, test_billing_fuzz, test_invoice_fuzz, test_ledger_fuzz
from tests.fuzz.conftest import Running
from tests.fuzz.harness import AUDIT_TABLES, DOCUMENTED, path, request_class
from tests.tenancy import add_tenant_key

SERVICES = {"ledger": lpb.DESCRIPTOR.services_by_name["LedgerService"],
            "invoice": ipb.DESCRIPTOR.services_by_name["InvoiceService"],
            "billing": bpb.DESCRIPTOR.services_by_name["BillingService"],
            "audit": apb.DESCRIPTOR.services_by_name["AuditService"],
            "alerts": alpb.DESCRIPTOR.services_by_name["AlertsService"]}


def _params(module: object) -> set[str]:
    name = next(n for n in dir(module) if n.startswith("test_") and "fuzz" in n)
    for mark in getattr(getattr(module, name), "pytestmark", []):
        if mark.name == "parametrize":
            return {p.values[0].name for p in mark.args[1]}
    raise AssertionError("fuzz test is not parametrized")


@pytest.mark.parametrize(("kind", "module", "permissions"), [
    ("ledger", test_ledger_fuzz, LEDGER_PERMISSIONS), ("invoice", test_invoice_fuzz, INVOICE_PERMISSIONS),
    ("billing", test_billing_fuzz, BILLING_PERMISSIONS), ("audit", test_audit_fuzz, AUDIT_PERMISSIONS),
    ("alerts", test_alerts_fuzz, ALERT_PERMISSIONS)])
def test_every_rpc_is_fuzzed(kind: str, module: object, permissions: dict[str, object]) -> None:
    service = SERVICES[kind]
    rpcs = {m.name for m in service.methods}
    assert rpcs <= _params(module), "an RPC of the service descriptor is not fuzzed"
    assert {path(m) for m in service.methods} <= set(permissions), "an RPC missing from PERMISSIONS"


def test_audit_is_fuzzed_on_every_server() -> None:
    """QueryAudit is registered on every server (service_runtime.grpc_server.create_server)."""
    fuzzed = {n for n in dir(test_audit_fuzz) if n.startswith("test_query_audit_fuzz_on_")}
    assert fuzzed == {"test_query_audit_fuzz_on_ledger", "test_query_audit_fuzz_on_invoice"}
    assert "QueryAudit" in _params(test_billing_fuzz)  # the front door's, over its key database


def sendable(value: str) -> bool:
    """What grpc lets leave as a metadata value (validate_metadata.cc: bytes 0x20-0x7e)."""
    return all(" " <= c <= "~" for c in value)


GARBAGE_KEYS = ["", "ck_", "ck_.", "ck_x.y", "ck_" + "a" * 5000, "Bearer abc", "ck_deadbeef.\t", "ck_a\x7fb.c"]


@pytest.mark.parametrize("kind", ["ledger", "invoice"])
async def test_hostile_api_keys_are_unauthenticated_everywhere(kind: str, ledger_server: Running,
                                                                invoice_server: Running) -> None:
    running = ledger_server if kind == "ledger" else invoice_server
    svc = running.service
    good = await add_tenant_key(running.dsn, f"auth-{kind}", "admin")
    readonly = await add_tenant_key(running.dsn, f"auth-{kind}", "readonly")
    keys: list[str | None] = [*GARBAGE_KEYS, good + "x", good.split(".")[0] + ".wrong", None]
    unsendable = [k for k in keys if k is not None and not sendable(k)]
    assert unsendable and len(unsendable) < len(keys)  # both paths below are exercised
    reached = stopped = 0
    for method in svc.descriptor.methods:
        empty = request_class(method)()
        for key in keys:
            before = await svc.snapshot.take()
            if key in unsendable:
                # grpc refuses a header value outside printable ASCII before the call leaves this process
                with pytest.raises(Exception) as refused:  # grpc raises its own ExecuteBatchError
                    await svc.call(method, empty, key)
                assert not isinstance(refused.value, grpc.aio.AioRpcError), (path(method), repr(key), refused.value)
                assert await svc.snapshot.take() == before, (path(method), repr(key))  # not even an audit record
                stopped += 1
                continue
            out = await svc.call(method, empty, key)
            reached += 1
            assert out.code == grpc.StatusCode.UNAUTHENTICATED, (path(method), repr(key)[:40], out)
            after = await svc.snapshot.take()
            assert {t: v for t, v in after.items() if t not in AUDIT_TABLES} == \
                {t: v for t, v in before.items() if t not in AUDIT_TABLES}
            assert after != before, (path(method), repr(key)[:40])  # it reached the server: the refusal is recorded
        # a binary (-bin) metadata value under a look-alike name is not a key
        out = await svc.call(method, empty, None, [("x-api-key-bin", b"\xff\xfe\x00")])
        assert out.code == grpc.StatusCode.UNAUTHENTICATED, (path(method), out)
        # the read-only role: PERMISSION_DENIED for writes, never INTERNAL/UNKNOWN
        out = await svc.call(method, empty, readonly)
        assert out.code in DOCUMENTED, (path(method), out)
    svc.invalidate()
    n = len(svc.descriptor.methods)
    assert (reached, stopped) == (n * (len(keys) - len(unsendable)), n * len(unsendable))
