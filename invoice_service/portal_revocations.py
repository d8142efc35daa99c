"""Revoked customer portal links, as the invoice service learns them: from the ledger's gRPC API.

The ledger keeps the revocation list (`RevokePortalLink`, migration 0017) and refuses a revoked
session on every call (UNAUTHENTICATED "portal link revoked"). The invoice service never reads the
ledger's database: before it admits a portal session it presents that same session to the ledger
with the cheapest read the session may make (`GetBalance` of its own account) and refuses the call
the same way when the ledger does. No credential of the invoice service is involved: the session is
re-signed from its verified fields (`portal_sessions.sign` is deterministic, so this is the token
the caller presented).

Cache, per session id: "not revoked" for `ttl_s` (CREDITS_PORTAL_REVOCATION_CACHE_S, default 1 s:
a revoked link reads invoices at most that long after `RevokePortalLink` returned); "revoked" until
the session expires (a revocation is never undone). When the ledger cannot answer, the call is
refused (UNAUTHENTICATED, naming the ledger): a revoked link must not slip through an outage.
Calls with an API key never come here.
"""

from __future__ import annotations

import time

import grpc
from credits.ledger.v1 import ledger_pb2 as lpb
from credits.ledger.v1.ledger_pb2_grpc import LedgerServiceStub

from service_runtime import portal_sessions
from service_runtime.portal_sessions import PortalSession, SessionRefused
from service_runtime.tls import open_channel

ASK_TIMEOUT_S = 5.0
MAX_CACHED = 10_000


class LedgerRevocations:
    """`await revocations(session)`: whether the ledger refuses the session as revoked."""

    def __init__(self, ledger_addr: str, ttl_s: float = 1.0) -> None:
        self.ledger_addr = ledger_addr
        self.ttl_s = ttl_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: LedgerServiceStub | None = None
        self._until: dict[str, tuple[float, bool]] = {}  # session id -> (monotonic deadline, revoked)

    def _ledger(self) -> LedgerServiceStub:
        if self._stub is None:  # made on first use, on the server's event loop
            self._channel = open_channel(self.ledger_addr)  # TLS / mTLS when configured, as every client
            self._stub = LedgerServiceStub(self._channel)
        return self._stub

    async def __call__(self, session: PortalSession) -> bool:
        now = time.monotonic()
        hit = self._until.get(session.session_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        revoked = await self._ask(session)
        if len(self._until) >= MAX_CACHED:
            self._until = {k: v for k, v in self._until.items() if v[0] > now}
        keep_s = max(0.0, session.expires_at - time.time()) if revoked else self.ttl_s
        self._until[session.session_id] = (now + keep_s, revoked)
        return revoked

    async def _ask(self, session: PortalSession) -> bool:
        token = portal_sessions.sign(session, portal_sessions.secret_from_env())
        try:
            await self._ledger().GetBalance(lpb.GetBalanceRequest(account_id=session.account_id),
                                            metadata=[("x-api-key", token)], timeout=ASK_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            details = exc.details() or ""
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in details:
                return True
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return False  # the ledger admitted the session (it got past the call guard)
            raise SessionRefused(f"portal session not checked: the ledger ({self.ledger_addr}) could not say "
                                 f"whether the link was revoked ({exc.code().name}); try again") from exc
        return False

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel = self._stub = None

