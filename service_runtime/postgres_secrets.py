"""The embedded Postgres's role passwords: generated once, kept owner-only, handed to the server as
SCRAM-SHA-256 verifiers.

The file is libpq's password file (`host:port:database:user:password` per line), so asyncpg and
`psql` read it when a DSN names it with `?passfile=` (service_runtime.embedded_postgres.dsn).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path

SUPERUSER = "postgres"
_HOSTS = ("127.0.0.1", "localhost")  # TCP on loopback; the unix socket counts as localhost
_SAFE = re.compile(r"^[A-Za-z0-9_-]{32,}$")  # token_urlsafe: no ':' or '\\' to escape, no quote in SQL
_ROLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
SCRAM_ITERATIONS = 4096


def write_owner_only(path: Path, text: str) -> None:
    """Writes `text` to `path` with mode 0600 from the first byte (never world-readable, not even briefly)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_passwords(passfile: Path) -> dict[str, str]:
    """role -> password from a password file this module wrote ({} if there is none)."""
    try:
        text = passfile.read_text()
    except FileNotFoundError:
        return {}
    found: dict[str, str] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) == 5:
            found.setdefault(fields[3], fields[4])
    return found


def write_passwords(passfile: Path, roles: Iterable[str], keep: dict[str, str] | None = None) -> dict[str, str]:
    """A password for each of `roles` (those in `keep` are kept), written to `passfile` (0600)."""
    passwords = {role: (keep or {}).get(role) or secrets.token_urlsafe(32) for role in roles}
    lines = ["# Embedded Postgres role passwords (generated at first start). Keep owner-only (0600)."]
    for role, password in passwords.items():
        if not _ROLE.match(role) or not _SAFE.match(password):
            raise ValueError(f"unsafe role name or password for {role!r}")
        lines += [f"{host}:*:*:{role}:{password}" for host in _HOSTS]
    write_owner_only(passfile, "\n".join(lines) + "\n")
    return passwords


def scram_verifier(password: str, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier Postgres stores for `password` (RFC 5802/7677): `ALTER ROLE ...
    PASSWORD '<verifier>'` sets the password without sending it."""
    if not _SAFE.match(password):
        raise ValueError("password must be url-safe base64 of at least 32 characters")
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"
