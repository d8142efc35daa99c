"""A small local HTTP payment server speaking ledger_service/topups/http_provider.py's protocol, and the
subset of Stripe's PaymentIntents API that ledger_service/topups/stripe_provider.py uses (form-encoded
POST /v1/payment_intents with an Idempotency-Key, GET /v1/payment_intents/search by metadata).

Per payment method it can approve, decline, stay pending for N lookups, answer late (past the client's
timeout) or lose the response (the charge is made, then the connection is dropped). Charges are kept
by idempotency key: the same key never charges twice, whatever the client retries.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Charge:
    charge_id: str
    key: str
    amount: int
    currency: str
    payment_method: str
    status: str
    lookups_left: int = 0  # pending: becomes succeeded after this many lookups

    def body(self) -> dict[str, Any]:
        return {"id": self.charge_id, "status": self.status, "amount": self.amount, "currency": self.currency}


@dataclass
class Behaviour:
    """What the server does for a payment method (the default one for any other)."""

    outcome: str = "succeeded"    # succeeded | declined | pending
    pending_lookups: int = 2      # pending: lookups until it succeeds
    late_s: float = 0.0           # answer this late
    lose_responses: int = 0       # make the charge, then drop the connection, this many times
    fail_requests: int = 0        # answer 503 before doing anything, this many times


@dataclass
class PaymentServer:
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    default: Behaviour = field(default_factory=Behaviour)
    charges: dict[str, Charge] = field(default_factory=dict)    # by idempotency key
    requests: int = 0
    faults: Counter[str] = field(default_factory=Counter)       # what the behaviours did, by kind
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None

    def behaviour(self, method: str) -> Behaviour:
        return self.behaviours.get(method, self.default)

    @property
    def captured(self) -> list[Charge]:
        """Charges that took money."""
        return [c for c in self.charges.values() if c.status == "succeeded"]

    async def _create(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        key = request.headers.get("Idempotency-Key", "")
        body = await request.json()
        b = self.behaviour(str(body.get("payment_method", "")))
        if not key:
            return web.json_response({"error": "Idempotency-Key required"}, status=400)
        if b.fail_requests > 0:
            b.fail_requests -= 1
            self.faults["payment_unavailable"] += 1
            return web.json_response({"error": "unavailable"}, status=503)
        charge = self.charges.get(key)
        if charge is None:
            charge = self.charges[key] = Charge(f"ch_{next(self._ids):06d}", key, int(body["amount"]),
                                                str(body["currency"]), str(body["payment_method"]), b.outcome,
                                                b.pending_lookups)
        if b.late_s:
            self.faults["payment_late"] += 1
            await asyncio.sleep(b.late_s)
        if b.lose_responses > 0:
            b.lose_responses -= 1
            self.faults["payment_response_lost"] += 1
            assert request.transport is not None
            request.transport.close()  # processed, but the client never hears it
            return web.Response(status=200)
        return web.json_response(charge.body())

    async def _find(self, request: web.Request) -> web.Response:
        self.requests += 1
        charge = self.charges.get(request.query.get("idempotency_key", ""))
        if charge is None:
            return web.json_response({"error": "no such charge"}, status=404)
        if charge.status == "pending":
            charge.lookups_left -= 1
            if charge.lookups_left <= 0:
                charge.status = "succeeded"
        return web.json_response(charge.body())

    # --- the Stripe PaymentIntents subset ------------------------------------------------------------

    @staticmethod
    def _intent(charge: Charge, topup_id: str) -> dict[str, Any]:
        status = {"succeeded": "succeeded", "pending": "processing", "declined": "requires_payment_method"}
        return {"id": f"pi_{charge.charge_id}", "object": "payment_intent", "amount": charge.amount,
                "currency": charge.currency.lower(), "status": status[charge.status],
                "metadata": {"topup_id": topup_id}, "livemode": False}

    async def _stripe_create(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        self.requests += 1
        key = request.headers.get("Idempotency-Key", "")
        method = str(form.get("payment_method", ""))
        b = self.behaviour(method)
        if b.fail_requests > 0:
            b.fail_requests -= 1
            self.faults["payment_unavailable"] += 1
            return web.json_response({"error": {"type": "api_error", "message": "unavailable"}}, status=503)
        charge = self.charges.get(key)
        if charge is None:
            charge = self.charges[key] = Charge(f"ch_{next(self._ids):06d}", key, int(str(form["amount"])),
                                                str(form["currency"]).upper(), method, b.outcome, b.pending_lookups)
        intent = self._intent(charge, str(form.get("metadata[topup_id]", key)))
        if b.lose_responses > 0:
            b.lose_responses -= 1
            self.faults["payment_response_lost"] += 1
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=200)
        if charge.status == "declined":
            return web.json_response({"error": {"type": "card_error", "code": "card_declined",
                                                "message": "Your card was declined.", "payment_intent": intent}},
                                     status=402)
        return web.json_response(intent)

    async def _stripe_search(self, request: web.Request) -> web.Response:
        self.requests += 1
        found = re.fullmatch(r"metadata\['topup_id'\]:'([^']*)'", request.query.get("query", ""))
        charge = self.charges.get(found.group(1)) if found else None
        data = []
        if charge is not None:
            if charge.status == "pending":
                charge.lookups_left -= 1
                if charge.lookups_left <= 0:
                    charge.status = "succeeded"
            data = [self._intent(charge, charge.key)]
        return web.json_response({"object": "search_result", "url": "/v1/payment_intents/search",
                                  "has_more": False, "data": data})

    async def start(self, port: int = 0) -> str:
        app = web.Application()
        app.router.add_post("/v1/charges", self._create)
        app.router.add_get("/v1/charges", self._find)
        app.router.add_post("/v1/payment_intents", self._stripe_create)
        app.router.add_get("/v1/payment_intents/search", self._stripe_search)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        server = site._server
        assert server is not None
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
