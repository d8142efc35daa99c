"""Raw bytes sent to every RPC of both services, each first decoded here with the method's request type.

Left to grpcio, a DecodeError in deserialization answers UNKNOWN before any handler runs. The shared
interceptor wraps every request deserializer (service_runtime.call_guard.tolerant), so bytes that do not
decode as the request message get INVALID_ARGUMENT naming `request` (after authentication and the
permission check). Bytes that do decode — unknown fields, a balanced empty group are valid protobuf — are
an ordinary request and must get anything but that refusal. Either way nothing but the audit trail changes.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.message import DecodeError

from tests.fuzz.conftest import Running
from tests.fuzz.harness import AUDIT_TABLES, DOCUMENTED, path, request_class

GARBAGE = [
    b"\xff\xff\xff\xff",                        # invalid tag
    b"\x0a\x05\xff\xfe\xfd\xfc\xfb",              # field 1 length-delimited holding invalid UTF-8
    b"\x12\x04\xc3\x28\xa0\xa1",                  # field 2 length-delimited: invalid UTF-8 continuation bytes
    b"\x0a\x80\x80\x80\x80\x10",                  # length prefix far beyond the payload
    b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # an 11-byte varint
    b"\x0a",                                      # truncated
    b"\x00" * 16,                                 # field number 0
    b"\x0b",                                      # a group that never ends
    b"\x0b\x0c",                                  # a balanced empty group (valid protobuf: an unknown field)
    b"\xf8\xff\xff\xff\x0f\x01",                  # field 2^29-1 varint: valid, unknown everywhere
    b"",                                          # the empty message: valid
]
DECODE_REFUSAL = "request: is not a valid protobuf message"


def decodes(method: object, payload: bytes) -> bool:
    try:
        request_class(method).FromString(payload)  # type: ignore[arg-type]
    except DecodeError:
        return False
    return True


async def _check(running: Running, key: str) -> dict[str, dict[bool, int]]:
    """Per RPC: how many payloads did (True) and did not (False) decode locally, each answered as expected."""
    seen: dict[str, dict[bool, int]] = {}
    svc = running.service
    for method in svc.descriptor.methods:
        for payload in GARBAGE:
            parsed = decodes(method, payload)
            before = await svc.snapshot.take()
            out = await svc.call(method, payload, key)
            after = await svc.snapshot.take()
            where = (path(method), payload, parsed, out.code.name, out.details[:200])
            if parsed:
                assert out.code in DOCUMENTED, where
                assert DECODE_REFUSAL not in out.details, where
            else:
                assert out.code == grpc.StatusCode.INVALID_ARGUMENT, where
                assert DECODE_REFUSAL in out.details, where
            assert {t: v for t, v in after.items() if t not in AUDIT_TABLES} == \
                {t: v for t, v in before.items() if t not in AUDIT_TABLES}, where
            counts = seen.setdefault(method.name, {True: 0, False: 0})
            counts[parsed] += 1
    svc.invalidate()
    return seen


@pytest.mark.parametrize("kind", ["ledger", "invoice"])
async def test_raw_bytes_refused_exactly_when_they_do_not_decode_and_write_nothing(
        kind: str, ledger_server: Running, invoice_server: Running) -> None:
    running = ledger_server if kind == "ledger" else invoice_server
    from tests.tenancy import add_tenant_key

    key = await add_tenant_key(running.dsn, f"raw-{kind}", "admin")
    seen = await _check(running, key)
    print(kind, seen)
    # Both paths ran on every RPC: some payloads refused as undecodable, some decoded and served.
    lopsided = {m: c for m, c in seen.items() if not (c[True] and c[False])}
    assert set(seen) == {m.name for m in running.service.descriptor.methods} and not lopsided, lopsided
