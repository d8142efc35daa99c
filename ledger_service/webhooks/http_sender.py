"""The real HTTP adapter of webhook delivery (aiohttp): one signed POST, SSRF-checked on every attempt.

A target's address is checked when it is resolved, by the resolver the connection then uses (so a DNS
answer cannot change between the check and the connect): loopback, private, link-local (cloud metadata),
multicast and reserved addresses are refused unless the endpoint allows private targets. Redirects are
not followed (a redirect to an internal host would bypass the check).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from ledger_service.domain.webhooks import is_public, literal_address

MAX_ERROR = 300


class PrivateTargetError(OSError):
    """The target resolved to an address the endpoint may not call."""


class PublicOnlyResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, and refuses a host with any non-public address."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: Any = 0) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        bad = [r["host"] for r in found if not is_public(r["host"])]
        if bad:
            raise PrivateTargetError(f"{host} resolves to a non-public address {bad[0]}")
        return found

    async def close(self) -> None:
        await self._inner.close()


@dataclass(frozen=True)
class SendResult:
    http_status: int      # 0 when no response came
    error: str            # "" on success
    duration_ms: int

    @property
    def delivered(self) -> bool:
        return 200 <= self.http_status < 300


class HttpSender:
    """POSTs webhook bodies; `async with HttpSender() as sender` owns its two sessions."""

    def __init__(self, timeout_s: float = 10.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._public: aiohttp.ClientSession | None = None
        self._any: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HttpSender:
        self._public = aiohttp.ClientSession(timeout=self._timeout,
                                             connector=aiohttp.TCPConnector(resolver=PublicOnlyResolver()))
        self._any = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for session in (self._public, self._any):
            if session is not None:
                await session.close()

    async def post(self, url: str, body: bytes, headers: dict[str, str], allow_private: bool) -> SendResult:
        start = time.monotonic()

        def done(status: int, error: str) -> SendResult:
            return SendResult(status, error[:MAX_ERROR], int((time.monotonic() - start) * 1000))

        address = literal_address(url)
        if address is not None and not allow_private and not is_public(address):
            return done(0, f"refused: {address} is not a public address")
        if not allow_private and (urlsplit(url).hostname or "").lower() in ("localhost",):
            return done(0, "refused: localhost is not a public address")
        session = self._any if allow_private else self._public
        assert session is not None, "HttpSender used outside `async with`"
        try:
            async with session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                await response.read()
                return done(response.status, "" if 200 <= response.status < 300 else f"HTTP {response.status}")
        except PrivateTargetError as err:
            return done(0, f"refused: {err}")
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            cause = getattr(err, "os_error", None) or err.__cause__  # aiohttp wraps the resolver's refusal
            if isinstance(cause, PrivateTargetError):
                return done(0, f"refused: {cause}")
            return done(0, f"{type(err).__name__}: {err}")
