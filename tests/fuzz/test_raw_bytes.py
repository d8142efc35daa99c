"""Bytes that do not parse as the request message, sent to every RPC of both services.

Left to grpcio, a DecodeError in deserialization answers UNKNOWN before any handler runs. The shared
interceptor wraps every request deserializer, so these bytes get INVALID_ARGUMENT naming `request`
(after authentication and the permission check), are audited, and write nothing else.
"""

from __future__ import annotations

import grpc
import pytest
from credits.invoice.v1 import invoice_pb2 as ipb
from credits.ledger.v1 import ledger_pb2 as lpb

from tests.fuzz.conftest import Running
from tests.fuzz.harness import AUDIT_TABLES, DOCUMENTED, path

GARBAGE = [
    b"\xff\xff\xff\xff",                        # invalid tag
    b"\x0a\x05\xff\xfe\xfd\xfc\xfb",              # field 1 (a string everywhere here) holding invalid UTF-8
    b"\x12\x04\xc3\x28\xa0\xa1",                  # field 2 string: invalid UTF-8 continuation bytes
    b"\x0a\x80\x80\x80\x80\x10",                  # length prefix far beyond the payload
    b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # an 11-byte varint
    b"\x0a",                                      # truncated
    b"\x00" * 16,                                 # field number 0
    b"\x0b\x0c",                                  # deprecated groups, unbalanced
]


def _methods(kind: str) -> list[object]:
    pb = lpb if kind == "ledger" else ipb
    name = "LedgerService" if kind == "ledger" else "InvoiceService"
    return list(pb.DESCRIPTOR.services_by_name[name].methods)


async def _check(running: Running, key: str) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    svc = running.service
    for method in svc.descriptor.methods:
        for payload in GARBAGE:
            before = await svc.snapshot.take()
            out = await svc.call(method, payload, key)
            seen.setdefault(out.code.name, set()).add(method.name)
            assert out.code in DOCUMENTED, (path(method), payload, out)
            if out.code != grpc.StatusCode.OK:
                after = await svc.snapshot.take()
                assert {t: v for t, v in after.items() if t not in AUDIT_TABLES} == \
                    {t: v for t, v in before.items() if t not in AUDIT_TABLES}, (path(method), payload)
    svc.invalidate()
    return seen


@pytest.mark.parametrize("kind", ["ledger", "invoice"])
async def test_unparseable_bytes_get_a_status_and_write_nothing(kind: str, ledger_server: Running,
                                                                 invoice_server: Running) -> None:
    running = ledger_server if kind == "ledger" else invoice_server
    from tests.tenancy import add_tenant_key

    key = await add_tenant_key(running.dsn, f"raw-{kind}", "admin")
    seen = await _check(running, key)
    print(kind, {code: len(ms) for code, ms in seen.items()})
    assert sum(len(ms) for ms in seen.values()) >= len(running.service.descriptor.methods)
