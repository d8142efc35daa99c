"""The portal on a real uvicorn (port 0) in front of the real ledger and invoice servers of the
coordinator's `stack` fixture; two customers, john-wick with a finalized invoice and anna with a draft."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from credits.invoice.v1 import invoice_pb2 as ipb

from portal.app import create_app
from service_runtime import portal_sessions
from service_runtime.settings import Settings
from stack.scenario import seed_customer
from tests.coordinator.conftest import Stack, stack, temporal_client, temporal_server  # noqa: F401 - fixtures

SECRET = "test-portal-secret-" + "x" * 40


@dataclass
class Portal:
    stack: Stack
    url: str
    invoice_id: str  # john-wick's finalized invoice
    draft_id: str    # anna's draft

    async def link(self, customer: str, ttl_s: int = 3600) -> ipb.PortalLink:
        return await self.stack.services.invoice.CreatePortalLink(
            ipb.CreatePortalLinkRequest(customer_id=customer, ttl_s=ttl_s), metadata=self.stack.md)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, follow_redirects=False, timeout=20)

    @asynccontextmanager
    async def signed_in(self, customer: str) -> AsyncIterator[httpx.AsyncClient]:
        """A browser-like client that opened the customer's link (the session is now its cookie)."""
        link = await self.link(customer)
        async with self.client() as client:
            opened = await client.get(f"/s/{link.token}")
            assert opened.status_code == 303 and opened.headers["location"] == "/"
            assert "credits_portal" in client.cookies and "httponly" in opened.headers["set-cookie"].lower()
            yield client


async def serve(app: object) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
        if task.done():
            task.result()
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, task, port


@pytest.fixture
async def portal(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Portal]:  # noqa: F811
    monkeypatch.setenv(portal_sessions.SECRET_ENV, SECRET)
    invoice_id = await seed_customer(stack.services)
    async with stack.worker():
        handle = await stack.start_finalize(invoice_id)
        assert (await handle.result()).outcome == "finalized"
    draft_id = await seed_customer(stack.services, "anna", "Anna Karenina", credit="20.00")
    app = create_app(Settings(ledger_addr=stack.ledger_addr, invoice_addr=stack.invoice_addr))
    server, task, port = await serve(app)
    try:
        yield Portal(stack, f"http://127.0.0.1:{port}", invoice_id, draft_id)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
