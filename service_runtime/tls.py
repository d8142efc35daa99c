"""TLS and mTLS for every gRPC server and client, from certificate paths in settings.

CREDITS_TLS_CERT_FILE / CREDITS_TLS_KEY_FILE: this process's certificate chain and key (PEM).
CREDITS_TLS_CA_FILE: the CA that signs peers. A server with a CA requires client certificates
signed by it (mTLS); a client with a CA verifies the server against it.
CREDITS_TLS_REQUIRED=1: refuse to start a server, or open a channel, without TLS — no plaintext.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc


@dataclass(frozen=True)
class TlsSettings:
    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""
    required: bool = False

    @staticmethod
    def from_env() -> TlsSettings:
        """CREDITS_TLS_CERT_FILE / _KEY_FILE / _CA_FILE / CREDITS_TLS_REQUIRED (service_runtime.settings)."""
        from service_runtime.settings import Settings

        s = Settings.from_env()
        return TlsSettings(cert_file=s.tls_cert_file, key_file=s.tls_key_file, ca_file=s.tls_ca_file,
                           required=s.tls_required)

    def probe_credentials(self) -> grpc.ChannelCredentials | None:
        """What a health probe inside the server's own pod dials it with: TLS when the server serves TLS,
        trusting the CA (else the server's own chain) and presenting the server's certificate when client
        certificates are required (mTLS). None: the server is plaintext."""
        if not self.server_enabled:
            return None
        roots = Path(self.ca_file or self.cert_file).read_bytes()
        if not self.ca_file:
            return grpc.ssl_channel_credentials(root_certificates=roots)
        return grpc.ssl_channel_credentials(root_certificates=roots, private_key=Path(self.key_file).read_bytes(),
                                            certificate_chain=Path(self.cert_file).read_bytes())

    @property
    def server_enabled(self) -> bool:
        return bool(self.cert_file and self.key_file)

    @property
    def client_enabled(self) -> bool:
        return bool(self.ca_file) or self.required

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """Credentials for a server port, or None for plaintext (refused when TLS is required)."""
        if not self.server_enabled:
            if self.required:
                raise RuntimeError("TLS is required (CREDITS_TLS_REQUIRED) but no certificate/key is configured")
            return None
        chain = Path(self.cert_file).read_bytes()
        key = Path(self.key_file).read_bytes()
        ca = Path(self.ca_file).read_bytes() if self.ca_file else None
        return grpc.ssl_server_credentials([(key, chain)], root_certificates=ca, require_client_auth=ca is not None)

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        if not self.client_enabled:
            return None
        ca = Path(self.ca_file).read_bytes() if self.ca_file else None
        key = Path(self.key_file).read_bytes() if self.key_file else None
        chain = Path(self.cert_file).read_bytes() if self.cert_file else None
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=chain)


def open_channel(address: str, tls: TlsSettings | None = None,
                 options: Sequence[tuple[str, Any]] | None = None,
                 interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None) -> grpc.aio.Channel:
    """A client channel to `address`: TLS (with a client certificate for mTLS) when configured."""
    tls = tls if tls is not None else TlsSettings.from_env()
    creds = tls.channel_credentials()
    if creds is None:
        return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(address, creds, options=options, interceptors=interceptors)


def temporal_tls() -> Any:
    """TLS for the Temporal client (a Temporal cluster with TLS, or Temporal Cloud with mTLS):

    CREDITS_TEMPORAL_TLS_CERT_FILE / _KEY_FILE: the client certificate and key (mTLS);
    CREDITS_TEMPORAL_TLS_CA_FILE: the server's CA (default: the system roots);
    CREDITS_TEMPORAL_TLS=1: TLS with the system roots and no client certificate.
    Returns False (plaintext, e.g. the local dev server) when none is set.
    """
    from temporalio.service import TLSConfig

    from service_runtime.settings import Settings

    s = Settings.from_env()
    cert, key, ca = s.temporal_tls_cert_file, s.temporal_tls_key_file, s.temporal_tls_ca_file
    if not (cert or key or ca) and not s.temporal_tls:
        return False
    if bool(cert) != bool(key):
        raise RuntimeError("CREDITS_TEMPORAL_TLS_CERT_FILE and CREDITS_TEMPORAL_TLS_KEY_FILE go together")
    return TLSConfig(
        server_root_ca_cert=Path(ca).read_bytes() if ca else None,
        client_cert=Path(cert).read_bytes() if cert else None,
        client_private_key=Path(key).read_bytes() if key else None,
    )
