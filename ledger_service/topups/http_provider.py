"""A payment provider over a small, Stripe-like HTTP protocol (aiohttp), the adapter the top-up saga uses.

    POST /v1/charges   Idempotency-Key: <key>   {"amount": 5000, "currency": "USD", "payment_method": "pm_x",
                                                  "description": "..."}
         200 {"id": "ch_...", "status": "succeeded"|"declined"|"pending", "amount": ..., "currency": ...}
         (the same key answers the same charge, never a second one)
    GET  /v1/charges?idempotency_key=<key>  200 the charge | 404 none

Anything but a 200 (or a 404 on find), a timeout or a broken connection is PaymentUnknown.
The local server that speaks it for tests and the chaos harness: harness/payments/server.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from ledger_service.domain.payments import Payment, PaymentStatus, PaymentUnknown


def _payment(body: dict[str, Any]) -> Payment:
    try:
        return Payment(str(body["id"]), PaymentStatus(body["status"]), int(body["amount"]), str(body["currency"]),
                       str(body.get("message", "")))
    except (KeyError, ValueError, TypeError) as err:
        raise PaymentUnknown(f"unexpected answer: {err}") from None


class HttpPaymentProvider:
    def __init__(self, base_url: str, api_key: str = "", timeout_s: float = 10.0) -> None:
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def charge(self, idempotency_key: str, amount: int, currency: str, payment_method: str,
                     description: str) -> Payment:
        body = {"amount": amount, "currency": currency, "payment_method": payment_method, "description": description}
        return await self._request("POST", "/v1/charges", json_body=body,
                                   headers={"Idempotency-Key": idempotency_key})

    async def find(self, idempotency_key: str) -> Payment | None:
        return await self._request("GET", "/v1/charges", params={"idempotency_key": idempotency_key}, missing_ok=True)

    async def _request(self, method: str, path: str, *, json_body: Any = None, params: dict[str, str] | None = None,
                       headers: dict[str, str] | None = None, missing_ok: bool = False) -> Any:
        try:
            async with self._open().request(method, self._base + path, json=json_body, params=params,
                                            headers=headers) as response:
                if response.status == 404 and missing_ok:
                    return None
                if response.status != 200:
                    raise PaymentUnknown(f"HTTP {response.status}")
                return _payment(await response.json())
        except (TimeoutError, aiohttp.ClientError, OSError, asyncio.CancelledError) as err:
            if isinstance(err, asyncio.CancelledError):
                raise
            raise PaymentUnknown(f"{type(err).__name__}: {err}") from None
