"""An example webhook receiver (aiohttp): verifies each request's signature the documented way
(ledger_service.domain.webhooks.verify: HMAC-SHA256 over "<t>." + body, timestamp within tolerance),
dedupes by event id, and keeps what it received for a person (`creditctl webhooks receive`) or a test.

    receiver = ExampleReceiver(["whsec_..."])
    port = await receiver.start(0)          # POST http://127.0.0.1:<port>/webhooks
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ledger_service.domain.webhooks import DEFAULT_TOLERANCE_S, EVENT_ID_HEADER, SIGNATURE_HEADER, verify

PATH = "/webhooks"


@dataclass
class ExampleReceiver:
    secrets: list[str]
    tolerance_s: int = DEFAULT_TOLERANCE_S
    clock: Callable[[], float] = time.time
    on_event: Callable[[dict[str, Any]], None] | None = None
    secret_source: Callable[[], Awaitable[list[str]]] | None = None  # secrets read per request (creditctl up)
    events: dict[str, dict[str, Any]] = field(default_factory=dict)   # event id -> first body accepted
    deliveries: Counter[str] = field(default_factory=Counter)          # event id -> verified requests
    rejected: int = 0
    fail_next: int = 0                                                 # answer 503 to this many requests
    _runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        secrets = self.secrets if self.secret_source is None else await self.secret_source()
        if not any(verify(s, request.headers.get(SIGNATURE_HEADER, ""), body, self.clock(), self.tolerance_s)
                   for s in secrets):
            self.rejected += 1
            return web.Response(status=401, text="bad signature or stale timestamp")
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.Response(status=503, text="try again later")
        event_id = request.headers.get(EVENT_ID_HEADER, "")
        self.deliveries[event_id] += 1
        if event_id not in self.events:  # dedupe: a retry of a delivered event changes nothing
            self.events[event_id] = json.loads(body)
            if self.on_event is not None:
                self.on_event(self.events[event_id])
        return web.Response(status=200, text="ok")

    async def start(self, port: int = 0, host: str = "127.0.0.1") -> int:
        app = web.Application()
        app.router.add_post(PATH, self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        return int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
