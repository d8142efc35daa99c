"""TLS and mTLS on a real server: plaintext refused, client certificates required and verified."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from credits.ledger.v1 import ledger_pb2 as pb
from credits.ledger.v1 import ledger_pb2_grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ledger_service.api.permissions import PERMISSIONS
from ledger_service.api.servicer import SERVICE, LedgerServicer
from ledger_service.storage import MIGRATIONS_DIR
from service_runtime.api_keys import KeyResolver
from service_runtime.databases import TENANCY_MIGRATIONS
from service_runtime.grpc_server import create_server
from service_runtime.postgres import create_pool
from service_runtime.settings import Settings
from service_runtime.tls import TlsSettings, open_channel
from tests.postgres_fixtures import fresh_database
from tests.tenancy import add_tenant_key


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
          *, ca: bool = False) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer or (name, key)
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
               .not_valid_after(now + dt.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    return str(path.with_suffix(".crt")), str(path.with_suffix(".key"))


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, TlsSettings]:
    """A throwaway CA, a server certificate, a client certificate, and one from another CA."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("credits-test-ca", ca_key, None, ca=True)
    ca_file, _ = _write(tmp_path / "ca", ca, ca_key)
    out = {}
    for role in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        crt, k = _write(tmp_path / role, _cert(role, key, (ca.subject, ca_key)), key)
        out[role] = TlsSettings(cert_file=crt, key_file=k, ca_file=ca_file, required=True)
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue_crt, rogue_k = _write(tmp_path / "rogue", _cert("rogue", rogue_key, None), rogue_key)
    out["rogue"] = TlsSettings(cert_file=rogue_crt, key_file=rogue_k, ca_file=ca_file, required=True)
    out["no_cert"] = TlsSettings(ca_file=ca_file, required=True)
    return out


@pytest.fixture
async def tls_ledger(pki: dict[str, TlsSettings]) -> AsyncIterator[tuple[int, str]]:
    dsn = await fresh_database("ledger", [TENANCY_MIGRATIONS, MIGRATIONS_DIR])
    pool = await create_pool(dsn, max_size=4)
    server, port = await create_server(
        [(ledger_pb2_grpc.add_LedgerServiceServicer_to_server, LedgerServicer(pool, Settings()), SERVICE)],
        KeyResolver(pool), PERMISSIONS, "127.0.0.1:0", tls=pki["server"])
    key = await add_tenant_key(dsn, "t")
    try:
        yield port, key
    finally:
        await server.stop(0)
        await pool.close()


async def _list_units(channel: grpc.aio.Channel, key: str) -> pb.ListUnitsResponse:
    async with channel:
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        return await stub.ListUnits(pb.ListUnitsRequest(), metadata=[("x-api-key", key)], timeout=5)


async def test_mtls_client_is_served(pki: dict[str, TlsSettings], tls_ledger: tuple[int, str]) -> None:
    port, key = tls_ledger
    units = await _list_units(open_channel(f"localhost:{port}", pki["client"]), key)
    assert any(u.code == "USD" for u in units.units)


@pytest.mark.parametrize("client", ["plaintext", "no_cert", "rogue"])
async def test_plaintext_and_unverified_clients_are_refused(pki: dict[str, TlsSettings],
                                                            tls_ledger: tuple[int, str], client: str) -> None:
    port, key = tls_ledger
    tls = TlsSettings() if client == "plaintext" else pki[client]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _list_units(open_channel(f"localhost:{port}", tls), key)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_tls_required_without_a_certificate_refuses_to_start() -> None:
    with pytest.raises(RuntimeError, match="TLS is required"):
        TlsSettings(required=True).server_credentials()


def test_temporal_client_tls_from_settings(pki: dict[str, TlsSettings], monkeypatch: pytest.MonkeyPatch) -> None:
    from service_runtime.tls import temporal_tls

    for name in ("CERT_FILE", "KEY_FILE", "CA_FILE", ""):
        monkeypatch.delenv(f"CREDITS_TEMPORAL_TLS_{name}".rstrip("_"), raising=False)
    assert temporal_tls() is False  # the local dev server: plaintext
    client = pki["client"]
    monkeypatch.setenv("CREDITS_TEMPORAL_TLS_CERT_FILE", client.cert_file)
    monkeypatch.setenv("CREDITS_TEMPORAL_TLS_KEY_FILE", client.key_file)
    monkeypatch.setenv("CREDITS_TEMPORAL_TLS_CA_FILE", client.ca_file)
    config = temporal_tls()
    assert config.client_cert == Path(client.cert_file).read_bytes()
    assert config.server_root_ca_cert == Path(client.ca_file).read_bytes()
    monkeypatch.delenv("CREDITS_TEMPORAL_TLS_KEY_FILE")
    with pytest.raises(RuntimeError, match="go together"):
        temporal_tls()


async def test_the_pod_healthcheck_probes_a_tls_server(pki: dict[str, TlsSettings], tls_ledger: tuple[int, str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The Kubernetes probes' healthcheck, in the server's pod (its own CREDITS_TLS_* files), reaches the
    mTLS server that a plaintext probe cannot."""
    import asyncio
    import importlib.util

    spec = importlib.util.spec_from_file_location("entry", Path(__file__).parents[2] / "deploy/docker/entrypoint.py")
    assert spec and spec.loader
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    port, _ = tls_ledger
    server = pki["server"]
    assert await asyncio.to_thread(entry.healthcheck, f"127.0.0.1:{port}") == 1  # plaintext: refused
    for name, value in (("CERT_FILE", server.cert_file), ("KEY_FILE", server.key_file), ("CA_FILE", server.ca_file)):
        monkeypatch.setenv(f"CREDITS_TLS_{name}", value)
    assert await asyncio.to_thread(entry.healthcheck, f"127.0.0.1:{port}") == 0
    assert await asyncio.to_thread(entry.healthcheck, f"127.0.0.1:{port}", "liveness", "localhost") == 0


async def test_the_portal_dials_the_services_with_tls_when_configured(
        pki: dict[str, TlsSettings], tls_ledger: tuple[int, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The portal is a client like any other: with CREDITS_TLS_* set it presents its certificate."""
    from portal.backend import Backend

    port, key = tls_ledger
    client = pki["client"]
    monkeypatch.setenv("CREDITS_TLS_CERT_FILE", client.cert_file or "")
    monkeypatch.setenv("CREDITS_TLS_KEY_FILE", client.key_file or "")
    monkeypatch.setenv("CREDITS_TLS_CA_FILE", client.ca_file or "")
    backend = Backend.connect(f"localhost:{port}", f"localhost:{port}")
    try:
        units = await backend.ledger.ListUnits(pb.ListUnitsRequest(), metadata=[("x-api-key", key)], timeout=5)
        assert any(u.code == "USD" for u in units.units)
    finally:
        for channel in backend.channels:
            await channel.close()
