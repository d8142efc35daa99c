"""Every RPC of every fuzzed service is covered (derived from the descriptors, cross-checked against the
permission tables and the servicers), and hostile API-key metadata on every RPC is refused cleanly."""

from __future__ import annotations

import grpc
import pytest
from credits.invoice.v1 import invoice_pb2 as ipb
from credits.ledger.v1 import ledger_pb2 as lpb

from invoice_service.api.permissions import PERMISSIONS as INVOICE_PERMISSIONS
from ledger_service.api.permissions import PERMISSIONS as LEDGER_PERMISSIONS
from tests.fuzz import test_invoice_fuzz, test_ledger_fuzz
from tests.fuzz.conftest import Running
from tests.fuzz.harness import AUDIT_TABLES, DOCUMENTED, path, request_class
from tests.tenancy import add_tenant_key

SERVICES = {"ledger": lpb.DESCRIPTOR.services_by_name["LedgerService"],
            "invoice": ipb.DESCRIPTOR.services_by_name["InvoiceService"]}


def _params(module: object) -> set[str]:
    marks = module.test_ledger_rpc_fuzz if hasattr(module, "test_ledger_rpc_fuzz") else module.test_invoice_rpc_fuzz
    for mark in getattr(marks, "pytestmark", []):
        if mark.name == "parametrize":
            return {p.values[0].name for p in mark.args[1]}
    raise AssertionError("fuzz test is not parametrized")


@pytest.mark.parametrize(("kind", "module", "permissions"), [
    ("ledger", test_ledger_fuzz, LEDGER_PERMISSIONS), ("invoice", test_invoice_fuzz, INVOICE_PERMISSIONS)])
def test_every_rpc_is_fuzzed(kind: str, module: object, permissions: dict[str, object]) -> None:
    service = SERVICES[kind]
    rpcs = {m.name for m in service.methods}
    assert _params(module) == rpcs, "an RPC of the service descriptor is not fuzzed"
    assert {path(m) for m in service.methods} <= set(permissions), "an RPC missing from PERMISSIONS"


GARBAGE_KEYS = ["", "ck_", "ck_.", "ck_x.y", "ck_" + "a" * 5000, "Bearer abc", "ck_deadbeef.\t", "ck_a\x7fb.c"]


@pytest.mark.parametrize("kind", ["ledger", "invoice"])
async def test_hostile_api_keys_are_unauthenticated_everywhere(kind: str, ledger_server: Running,
                                                                invoice_server: Running) -> None:
    running = ledger_server if kind == "ledger" else invoice_server
    svc = running.service
    good = await add_tenant_key(running.dsn, f"auth-{kind}", "admin")
    readonly = await add_tenant_key(running.dsn, f"auth-{kind}", "readonly")
    keys: list[object] = [*GARBAGE_KEYS, good + "x", good.split(".")[0] + ".wrong", None]
    for method in svc.descriptor.methods:
        empty = request_class(method)()
        for key in keys:
            before = await svc.snapshot.take()
            try:
                out = await svc.call(method, empty, key)  # type: ignore[arg-type]
            except Exception:
                continue  # refused client-side (metadata must be printable ASCII): never reaches the server
            assert out.code == grpc.StatusCode.UNAUTHENTICATED, (path(method), repr(key)[:40], out)
            after = await svc.snapshot.take()
            assert {t: v for t, v in after.items() if t not in AUDIT_TABLES} == \
                {t: v for t, v in before.items() if t not in AUDIT_TABLES}
        # a binary (-bin) metadata value under a look-alike name is not a key
        out = await svc.call(method, empty, None, [("x-api-key-bin", b"\xff\xfe\x00")])
        assert out.code == grpc.StatusCode.UNAUTHENTICATED, (path(method), out)
        # the read-only role: PERMISSION_DENIED for writes, never INTERNAL/UNKNOWN
        out = await svc.call(method, empty, readonly)
        assert out.code in DOCUMENTED, (path(method), out)
    svc.invalidate()
