"""Portal sessions: signed, expiring, read-only credentials for ONE customer of one tenant, or (kind
`finance`) for one tenant's finance report reads.

A tenant mints one (invoice service `CreatePortalLink`, `creditctl portal link CUSTOMER`) and
hands the link to its customer; the customer portal (`portal/`) presents the token to the ledger
and invoice services in place of an API key. No API key ever reaches the browser.

    token = "ps1." + b64url(json payload) + "." + b64url(HMAC-SHA256(secret, "ps1." + payload))
    payload = {"t": tenant, "c": customer, "a": ledger account, "e": expiry (unix s), "i": session id}

The secret (`CREDITS_PORTAL_SECRET`, at least 32 characters) is shared by the services and the
portal; without one, tokens are neither minted nor accepted. A verified token makes a Caller with
role `portal` and the session attached: the permission table lets that role call only the reads
listed in `service_runtime.permissions.PORTAL_READS`, and `check_scope` keeps every one of them to
the session's own account or customer (another's is PERMISSION_DENIED; an invoice of another
customer is NOT_FOUND, so its existence is not revealed).

A finance session (`"k": "finance"` in the payload, no customer or account; finance service
`CreateFinanceLink`, `creditctl finance link`) is signed by the same rule and makes a Caller with role
`finance_portal`, which the permission table lets call only `FINANCE_PORTAL_READS` (the finance
reports and the journal export) of the session's tenant; it opens no customer's pages or reads, and a
customer session opens no finance page or read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

from service_runtime.rejections import Reason, Rejection

PREFIX = "ps1."
SECRET_ENV = "CREDITS_PORTAL_SECRET"
MIN_SECRET = 32
MAX_TTL_S = 30 * 86400
DEFAULT_TTL_S = 3600
ROLE = "portal"
FINANCE_ROLE = "finance_portal"
CUSTOMER, FINANCE = "customer", "finance"  # a session's kind: one customer's pages, or a tenant's finance pages
KINDS = (CUSTOMER, FINANCE)


class SessionRefused(Rejection):
    """UNAUTHENTICATED: expired, tampered, malformed, or portal sessions not configured.
    `expired` tells the portal which page to show (401 expired vs 403 not valid)."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(Reason.UNAUTHENTICATED, message, "x-api-key")
        self.expired = expired


@dataclass(frozen=True, slots=True)
class PortalSession:
    tenant_id: str
    customer_id: str
    account_id: str
    expires_at: int      # unix seconds
    session_id: str
    kind: str = CUSTOMER  # CUSTOMER or FINANCE (then customer_id and account_id are "")

    @property
    def role(self) -> str:
        return FINANCE_ROLE if self.kind == FINANCE else ROLE


def secret_from_env() -> str:
    """The shared secret, or "" when portal sessions are off (too short counts as off)."""
    value = os.environ.get(SECRET_ENV, "")
    return value if len(value) >= MIN_SECRET else ""


def new_secret() -> str:
    return secrets.token_urlsafe(48)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, signed: str) -> bytes:
    return hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest()


def sign(session: PortalSession, secret: str) -> str:
    fields: dict[str, Any] = {"t": session.tenant_id, "c": session.customer_id, "a": session.account_id,
                              "e": session.expires_at, "i": session.session_id}
    if session.kind != CUSTOMER:  # a customer session's payload stays as it always was
        fields["k"] = session.kind
    payload = _b64(json.dumps(fields, separators=(",", ":")).encode())
    signed = PREFIX + payload
    return f"{signed}.{_b64(_mac(secret, signed))}"


def mint(tenant_id: str, customer_id: str, account_id: str, ttl_s: int, secret: str,
         now: float | None = None, kind: str = CUSTOMER) -> PortalSession:
    now = time.time() if now is None else now
    return PortalSession(tenant_id, customer_id, account_id, int(now) + ttl_s, secrets.token_hex(8), kind)


def mint_finance(tenant_id: str, ttl_s: int, secret: str, now: float | None = None) -> PortalSession:
    """A finance session: the tenant's finance report reads, no customer."""
    return mint(tenant_id, "", "", ttl_s, secret, now, kind=FINANCE)


def verify(token: str, secret: str, now: float | None = None) -> PortalSession:
    """The session a token carries; SessionRefused unless it is ours, untampered and unexpired."""
    if not secret:
        raise SessionRefused("portal sessions are not configured on this server")
    if not token.startswith(PREFIX) or token.count(".") != 2 or len(token) > 2048:
        raise SessionRefused("not a portal session")
    signed, _, mac = token.rpartition(".")
    try:
        given = _unb64(mac)
        fields = json.loads(_unb64(signed[len(PREFIX):]))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise SessionRefused("not a portal session") from exc
    if not hmac.compare_digest(given, _mac(secret, signed)):
        raise SessionRefused("portal session signature does not match")
    try:
        session = PortalSession(str(fields["t"]), str(fields["c"]), str(fields["a"]), int(fields["e"]),
                                str(fields["i"]), str(fields.get("k", CUSTOMER)))
    except (KeyError, TypeError, ValueError) as exc:
        raise SessionRefused("not a portal session") from exc
    if session.kind not in KINDS:
        raise SessionRefused("not a portal session")
    if session.expires_at <= (time.time() if now is None else now):
        raise SessionRefused("portal session expired", expired=True)
    return session


# Which request field each portal read is scoped by: the session's account (ledger) or customer (invoice).
ACCOUNT_FIELD, CUSTOMER_FIELD = "account_id", "customer_id"


def check_scope(session: PortalSession, method: str, request: Any) -> None:
    """A portal read names the session's own account or customer, or is PERMISSION_DENIED. A finance
    session's reads are the tenant's reports (the permission table already allowed only those)."""
    if session.kind == FINANCE:
        return
    short = method.rsplit("/", 1)[-1]
    for field, own in ((ACCOUNT_FIELD, session.account_id), (CUSTOMER_FIELD, session.customer_id)):
        if hasattr(request, "DESCRIPTOR") and field in request.DESCRIPTOR.fields_by_name:
            if getattr(request, field) != own:
                raise Rejection(Reason.FORBIDDEN, f"a portal session reads only its own {field}", field)
            return
    if short not in SCOPED_BY_RESPONSE:
        raise Rejection(Reason.FORBIDDEN, f"a portal session may not call {short}")


# Reads addressed by another id (an invoice): the servicer's answer is checked instead (`check_answer`).
SCOPED_BY_RESPONSE = frozenset({"GetInvoice"})


def check_answer(session: PortalSession, method: str, response: Any) -> None:
    """An answer about another customer is NOT_FOUND for a portal session (its existence stays hidden)."""
    if session.kind == FINANCE or method.rsplit("/", 1)[-1] not in SCOPED_BY_RESPONSE:
        return
    if getattr(response, "customer_id", None) != session.customer_id:
        raise Rejection(Reason.NOT_FOUND, "invoice not found", "invoice_id")
