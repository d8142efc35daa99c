"""Settings for every process, read from CREDITS_* environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _env(name: str, default: str) -> str:
    return os.environ.get(f"CREDITS_{name}", default)


@dataclass(frozen=True)
class Settings:
    """Everything a process needs to find its peers. Empty DSNs mean the embedded Postgres."""

    data_dir: Path = field(default_factory=lambda: Path(_env("DATA_DIR", ".credits-data")).resolve())
    ledger_dsn: str = field(default_factory=lambda: _env("LEDGER_DSN", ""))
    invoice_dsn: str = field(default_factory=lambda: _env("INVOICE_DSN", ""))
    # The services log in as a role under row-level security; empty = the owner DSN's host and
    # database with user CREDITS_DB_APP_ROLE (credits_app), as the embedded Postgres allows.
    ledger_app_dsn: str = field(default_factory=lambda: _env("LEDGER_APP_DSN", ""))
    invoice_app_dsn: str = field(default_factory=lambda: _env("INVOICE_APP_DSN", ""))
    embedded_pg_port: int = field(default_factory=lambda: int(_env("EMBEDDED_PG_PORT", "54329")))
    ledger_addr: str = field(default_factory=lambda: _env("LEDGER_ADDR", "127.0.0.1:50051"))
    invoice_addr: str = field(default_factory=lambda: _env("INVOICE_ADDR", "127.0.0.1:50052"))
    billing_addr: str = field(default_factory=lambda: _env("BILLING_ADDR", "127.0.0.1:50053"))
    temporal_addr: str = field(default_factory=lambda: _env("TEMPORAL_ADDR", ""))
    temporal_namespace: str = field(default_factory=lambda: _env("TEMPORAL_NAMESPACE", "default"))
    temporal_ui_port: int = field(default_factory=lambda: int(_env("TEMPORAL_UI_PORT", "8233")))
    task_queue: str = field(default_factory=lambda: _env("TASK_QUEUE", "credits-billing"))
    clock_skew_s: int = field(default_factory=lambda: int(_env("CLOCK_SKEW_S", "300")))
    # How far ahead a lot's validity window may lie (GrantCredits effective_at and expires_at): 10 years.
    lot_horizon_s: int = field(default_factory=lambda: int(_env("LOT_HORIZON_S", str(3653 * 86400))))
    hold_ttl_s: int = field(default_factory=lambda: int(_env("HOLD_TTL_S", "900")))
    pool_max_size: int = field(default_factory=lambda: int(_env("POOL_MAX_SIZE", "16")))
    api_key: str = field(default_factory=lambda: _env("API_KEY", ""))
    # gRPC health follows the database: checked this often, each check given this long (readiness).
    health_interval_s: float = field(default_factory=lambda: float(_env("HEALTH_INTERVAL_S", "2")))
    health_timeout_s: float = field(default_factory=lambda: float(_env("HEALTH_TIMEOUT_S", "1.5")))
    # Refused calls that proved no key are counted per window of this many seconds (refusal_counts).
    refusal_window_s: int = field(default_factory=lambda: int(_env("REFUSAL_WINDOW_S", "60")))
    # Optional per-key rate limit (rate_limits): calls per second (0 = off), burst, exempt roles.
    key_rate_limit: float = field(default_factory=lambda: float(_env("KEY_RATE_LIMIT", "0")))
    key_rate_burst: float = field(default_factory=lambda: float(_env("KEY_RATE_BURST", "0")))
    key_rate_exempt_roles: str = field(default_factory=lambda: _env("KEY_RATE_EXEMPT_ROLES", ""))
    # Webhook delivery (ledger_service/webhooks): first retry after this many seconds, doubling up to an
    # hour; dead-lettered after this many attempts; the outbox is polled this often besides NOTIFY.
    webhook_retry_base_s: float = field(default_factory=lambda: float(_env("WEBHOOK_RETRY_BASE_S", "5")))
    webhook_max_attempts: int = field(default_factory=lambda: int(_env("WEBHOOK_MAX_ATTEMPTS", "10")))
    webhook_poll_s: float = field(default_factory=lambda: float(_env("WEBHOOK_POLL_S", "1")))
    # Auto top-up (ledger_service/topups): the payment provider's base URL (the HTTP protocol of
    # http_provider.py) and its API key; no URL (and no Stripe) = no executor (top-ups wait, visibly).
    # CREDITS_PAYMENT_PROVIDER: "http" (that protocol, at the URL) or "stripe" (PaymentIntents with the
    # API key; the URL, if set, replaces Stripe's API base).
    payment_provider: str = field(default_factory=lambda: _env("PAYMENT_PROVIDER", "http"))
    payment_provider_url: str = field(default_factory=lambda: _env("PAYMENT_PROVIDER_URL", ""))
    payment_api_key: str = field(default_factory=lambda: _env("PAYMENT_API_KEY", ""))
    payment_timeout_s: float = field(default_factory=lambda: float(_env("PAYMENT_TIMEOUT_S", "10")))
    # A charge with no answer is asked again after this many seconds, doubling up to the cap; a top-up
    # claimed by a process that died is taken up again after the lease.
    topup_retry_base_s: float = field(default_factory=lambda: float(_env("TOPUP_RETRY_BASE_S", "2")))
    topup_retry_cap_s: float = field(default_factory=lambda: float(_env("TOPUP_RETRY_CAP_S", "600")))
    topup_lease_s: float = field(default_factory=lambda: float(_env("TOPUP_LEASE_S", "60")))
    # The customer portal (portal/): where it listens, the base of the links CreatePortalLink mints.
    # Its sessions are signed with CREDITS_PORTAL_SECRET (service_runtime/portal_sessions.py).
    portal_addr: str = field(default_factory=lambda: _env("PORTAL_ADDR", "127.0.0.1:8090"))
    portal_url: str = field(default_factory=lambda: _env("PORTAL_URL", ""))  # "" = http://<portal_addr>

    @property
    def portal_base_url(self) -> str:
        return (self.portal_url or f"http://{self.portal_addr}").rstrip("/")

    @staticmethod
    def from_env() -> Settings:
        return Settings()
