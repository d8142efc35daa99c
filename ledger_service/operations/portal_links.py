"""RevokePortalLink: ends one customer portal link at once (ledger_service/storage/portal_links.py)."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg

from ledger_service.operations.calls import Call, M, once
from ledger_service.operations.context import Ledger
from ledger_service.storage import portal_links
from ledger_service.storage.portal_links import Revocation
from service_runtime.portal_sessions import PortalSession


async def revoke_portal_link(ledger: Ledger, call: Call[M], session: PortalSession, reason: str,
                             pack: Callable[[Revocation], M]) -> M:
    """Records the revocation once per idempotency key; the link is refused from the next call on."""

    async def work(conn: asyncpg.Connection) -> Revocation:
        return await portal_links.revoke(conn, session, reason, call.caller.owner or call.actor)

    return await once(ledger, call, work, pack)
