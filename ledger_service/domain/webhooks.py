"""Webhook rules (pure): the signature, the retry schedule, and which targets may be called.

Signature (the recipe receivers follow; README "Alerts and webhooks"):

    Credits-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex> ...]
    v1 = hex(HMAC-SHA256(key=secret, msg=f"{t}.".encode() + body))

One v1 per active secret: during a rotation's overlap both the old and the new secret sign, so a
receiver holding either verifies. A receiver rejects a timestamp further than its tolerance from its
clock (a replayed old request) and compares in constant time. Headers also carry the event id
(`Credits-Event-Id`: the same on every retry, so receivers dedupe) and type (`Credits-Event-Type`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import random
import secrets as _secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from service_runtime.rejections import invalid

SIGNATURE_HEADER = "Credits-Signature"
EVENT_ID_HEADER = "Credits-Event-Id"
EVENT_TYPE_HEADER = "Credits-Event-Type"
DEFAULT_TOLERANCE_S = 300
SECRET_PREFIX = "whsec_"
MAX_URL = 2000


def new_secret() -> str:
    return SECRET_PREFIX + _secrets.token_hex(24)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secrets: list[str], timestamp: int, body: bytes) -> str:
    return ",".join([f"t={timestamp}", *(f"v1={signature(s, timestamp, body)}" for s in secrets)])


def verify(secret: str, header: str, body: bytes, now: float, tolerance_s: int = DEFAULT_TOLERANCE_S) -> bool:
    """The receiver's check: a well-formed header, a fresh timestamp, and one v1 made with `secret`."""
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1":
            candidates.append(value)
    if timestamp is None or abs(now - timestamp) > tolerance_s:
        return False
    expected = signature(secret, timestamp, body)
    return any(hmac.compare_digest(expected, c) for c in candidates)


@dataclass(frozen=True)
class RetrySchedule:
    """Attempt n (1-based) failed: wait base x 2^(n-1), capped, with ±20% jitter; DEAD after max_attempts."""

    base_s: float = 5.0
    cap_s: float = 3600.0
    max_attempts: int = 10

    def delay_after(self, attempt: int, rng: random.Random | None = None) -> float | None:
        """Seconds until the next attempt, or None when `attempt` was the last."""
        if attempt >= self.max_attempts:
            return None
        delay = min(self.cap_s, self.base_s * 2 ** (attempt - 1))
        return delay * (0.8 + 0.4 * (rng or random).random())


def check_url(url: str, field: str = "url") -> str:
    """An http(s) URL with a host (the address check happens on every delivery: DNS may change)."""
    if not url or len(url) > MAX_URL or not url.isascii() or any(c.isspace() for c in url):
        raise invalid(field, f"must be an http(s) URL of at most {MAX_URL} ASCII characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid(field, "must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise invalid(field, "must not carry credentials")
    try:
        _ = parts.port
    except ValueError:
        raise invalid(field, "has an invalid port") from None
    return url


def is_public(address: str) -> bool:
    """Is `address` (an IP) a public unicast address? Loopback, private, link-local (cloud metadata at
    169.254.169.254), multicast, reserved and unspecified addresses are not."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
                or ip.is_unspecified or not ip.is_global)


def literal_address(url: str) -> str | None:
    """The host of `url` when it is an IP literal (checked at creation), else None (checked when resolved)."""
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return host


def check_target(url: str, allow_private: bool, field: str = "url") -> None:
    """SSRF at creation: an IP-literal host must be public unless the endpoint allows private targets."""
    address = literal_address(url)
    if address is not None and not allow_private and not is_public(address):
        raise invalid(field, f"{address} is not a public address (set allow_private_targets for a local receiver)")
    host = (urlsplit(url).hostname or "").lower()
    if not allow_private and (host == "localhost" or host.endswith(".localhost")):
        raise invalid(field, "localhost is not a public address (set allow_private_targets for a local receiver)")
