"""Stripe as the top-up PaymentProvider: an off-session PaymentIntent, confirmed at once, through the
`stripe` package (its aiohttp client).

- charge: `PaymentIntent.create(amount, currency, payment_method, customer, confirm, off_session,
  metadata={"topup_id"})` with the top-up id as Stripe's `Idempotency-Key` (Stripe answers the same
  PaymentIntent to the same key for 24 hours). A policy's payment_method is `pm_...`, or
  `cus_.../pm_...` for a customer's saved method.
- find: `PaymentIntent.search(metadata['topup_id']:'<id>')`. Stripe's search can lag a new intent by up
  to a minute; a miss is then answered by charge() with the same key, which returns that intent.
- outcome: `succeeded` -> SUCCEEDED; `processing`, `requires_action`, `requires_confirmation`,
  `requires_capture` -> PENDING (asked again); `requires_payment_method`, `canceled`, a card error or an
  invalid request -> DECLINED; no answer, rate limits and Stripe's 5xx -> PaymentUnknown.
"""

from __future__ import annotations

from typing import Any

import stripe

from ledger_service.domain.payments import Payment, PaymentStatus, PaymentUnknown

_STATUS = {"succeeded": PaymentStatus.SUCCEEDED, "processing": PaymentStatus.PENDING,
           "requires_action": PaymentStatus.PENDING, "requires_confirmation": PaymentStatus.PENDING,
           "requires_capture": PaymentStatus.PENDING, "requires_payment_method": PaymentStatus.DECLINED,
           "canceled": PaymentStatus.DECLINED}


def _payment(resource: Any) -> Payment:
    intent = resource.to_dict() if hasattr(resource, "to_dict") else dict(resource)
    status = _STATUS.get(str(intent["status"]))
    if status is None:
        raise PaymentUnknown(f"unexpected PaymentIntent status {intent['status']!r}")
    error = intent.get("last_payment_error") or {}
    return Payment(str(intent["id"]), status, int(intent["amount"]), str(intent["currency"]).upper(),
                   str(error.get("message", "")) if isinstance(error, dict) else "")


class StripePaymentProvider:
    def __init__(self, api_key: str, *, api_base: str = "", timeout_s: float = 10.0, max_retries: int = 0) -> None:
        http = self._http = stripe.AIOHTTPClient(timeout=timeout_s)
        extra: dict[str, Any] = {"base_addresses": {"api": api_base}} if api_base else {}
        self._client = stripe.StripeClient(api_key, http_client=http, max_network_retries=max_retries, **extra)

    async def charge(self, idempotency_key: str, amount: int, currency: str, payment_method: str,
                     description: str) -> Payment:
        customer, _, method = payment_method.rpartition("/")
        params: dict[str, Any] = {"amount": amount, "currency": currency.lower(), "payment_method": method,
                                  "confirm": True, "off_session": True, "description": description,
                                  "metadata": {"topup_id": idempotency_key}}
        if customer:
            params["customer"] = customer
        try:
            intent = await self._client.v1.payment_intents.create_async(
                params, {"idempotency_key": idempotency_key})  # type: ignore[arg-type]
        except stripe.CardError as err:
            body: dict[str, Any] = err.json_body if isinstance(err.json_body, dict) else {}
            declined = (body.get("error") or {}).get("payment_intent")
            if declined:
                return Payment(str(declined["id"]), PaymentStatus.DECLINED, amount, currency, str(err.user_message))
            return Payment(f"declined:{idempotency_key}", PaymentStatus.DECLINED, amount, currency,
                           str(err.user_message))
        except stripe.InvalidRequestError as err:
            return Payment(f"invalid:{idempotency_key}", PaymentStatus.DECLINED, amount, currency, str(err))
        except stripe.StripeError as err:  # connection, rate limit, 5xx, authentication: outcome unknown
            raise PaymentUnknown(f"{type(err).__name__}: {err}") from None
        return _payment(intent)

    async def find(self, idempotency_key: str) -> Payment | None:
        query = f"metadata['topup_id']:'{idempotency_key}'"
        try:
            found = await self._client.v1.payment_intents.search_async({"query": query})
        except stripe.StripeError as err:
            raise PaymentUnknown(f"{type(err).__name__}: {err}") from None
        return _payment(found.data[0]) if found.data else None

    async def close(self) -> None:
        await self._http.close_async()
