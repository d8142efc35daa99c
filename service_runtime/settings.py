"""Every CREDITS_* environment variable, in one settings object validated in one place (pydantic-settings).

`Settings.from_env()` reads and checks them all at once: a value that does not parse is a
`SettingsError` whose message is one line naming the variable (`CREDITS_EMBEDDED_PG_PORT='fifty':
Input should be a valid integer`); servers (`settings_or_exit`) and creditctl print that line and
exit 2, never a traceback. `Settings(field=value)` overrides single values for a caller that knows
better (tests, the demo's throw-away stack).

Where a value comes from, highest first: the caller's arguments, the environment, the running
stack's addresses (`stack_file`: `creditctl up` records where it actually listens in
`<data dir>/stack.json`, so a Temporal frontend or a server on port 0 is found by every command;
only the commands that talk to a stack read it: `from_env(stack=True)`), the default.
`describe()` says which, per variable, for `creditctl config show`.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

PREFIX = "CREDITS_"
STACK_FILE = "stack.json"
# What `creditctl up` records in the stack file (the addresses it really serves on); nothing else is read from it.
STACK_FIELDS = ("ledger_addr", "invoice_addr", "billing_addr", "temporal_addr", "temporal_ui_port", "embedded_pg_port",
                "task_queue", "temporal_namespace")
# Shown by `creditctl config show` as set/unset only.
SECRET_FIELDS = ("api_key", "coordinator_keys", "payment_api_key", "portal_secret")
DSN_FIELDS = ("ledger_dsn", "invoice_dsn", "ledger_app_dsn", "invoice_app_dsn")


class SettingsError(ValueError):
    """A CREDITS_* value that does not parse: the message is one line naming the variable."""


class Settings(BaseSettings):
    """Everything a process reads from its environment. Empty DSNs mean the embedded Postgres."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, extra="ignore", env_ignore_empty=True,
                                      validate_default=True)

    # --- where things are ---------------------------------------------------------------------
    data_dir: Path = Field(Path(".credits-data"), description="embedded Postgres data, Temporal database, stack.json")
    ledger_dsn: str = Field("", description="the ledger's Postgres (owner); empty: the embedded Postgres")
    invoice_dsn: str = Field("", description="the invoice service's Postgres (owner); empty: the embedded Postgres")
    # The services log in as a role under row-level security; empty = the owner DSN's host and
    # database with user CREDITS_DB_APP_ROLE (credits_app), as the embedded Postgres allows.
    ledger_app_dsn: str = Field("", description="the row-security role the ledger logs in as")
    invoice_app_dsn: str = Field("", description="the row-security role the invoice service logs in as")
    db_app_role: str = Field("credits_app", description="the app role of the embedded Postgres")
    row_security: bool = Field(True, description="row-level security per tenant (0 turns it off)")
    embedded_pg_port: int = Field(54329, ge=0, le=65535, description="embedded Postgres port (loopback)")
    ledger_addr: str = Field("127.0.0.1:50051", description="ledger gRPC address")
    invoice_addr: str = Field("127.0.0.1:50052", description="invoice gRPC address")
    billing_addr: str = Field("127.0.0.1:50053", description="billing front door gRPC address")
    temporal_addr: str = Field("", description="an external Temporal frontend; empty: `up` starts a dev server")
    temporal_port: int = Field(7233, ge=0, le=65535,
                               description="the dev server's frontend port (`up`); 0: any free port")
    temporal_namespace: str = Field("default", description="Temporal namespace")
    temporal_ui_port: int = Field(8233, ge=0, le=65535, description="the dev server's UI port (`up`)")
    temporal_ui_url: str = Field("", description="the Temporal UI the front door links operations to (deployed); "
                                 "`up` links its own")
    task_queue: str = Field("credits-billing", description="the coordinator's Temporal task queue")
    # --- product rules ------------------------------------------------------------------------
    clock_skew_s: int = Field(300, ge=0, description="an operation's time further in the future is rejected")
    # How far ahead a lot's validity window may lie (GrantCredits effective_at and expires_at): 10 years.
    lot_horizon_s: int = Field(3653 * 86400, gt=0, description="how far ahead a lot's window may lie")
    hold_ttl_s: int = Field(900, gt=0, description="default hold TTL")
    usage_grace_s: int = Field(3 * 24 * 3600, ge=0, description="late usage counts this long after its period")
    support_max_grant: str = Field("100", description="support grant limit per grant (major units)")
    support_max_daily: str = Field("500", description="support grant limit per day (major units)")
    grant_approval_threshold: str = Field("", description="grants above this need a second person; empty: none")
    # --- servers ------------------------------------------------------------------------------
    pool_max_size: int = Field(16, gt=0, description="database connections per server")
    # The ledger's group commit window (ledger_service/storage/commit_window.py): a busy account's next
    # transaction may wait up to this long for more requests, only while that raises the throughput.
    group_commit_window_ms: float = Field(4.0, ge=0, le=100, description="the longest a busy account's next "
                                          "transaction waits for more requests (0: never)")
    # gRPC health follows the database: checked this often, each check given this long (readiness).
    health_interval_s: float = Field(2.0, gt=0, description="how often each server checks its database")
    health_timeout_s: float = Field(1.5, gt=0, description="how long each database check may take")
    # Refused calls that proved no key are counted per window of this many seconds (refusal_counts).
    refusal_window_s: int = Field(60, gt=0, description="refused calls are counted per window of this long")
    # Optional per-key rate limit (rate_limits): calls per second (0 = off), burst, exempt roles.
    key_rate_limit: float = Field(0.0, ge=0, description="calls per second per key (0: off)")
    key_rate_burst: float = Field(0.0, ge=0, description="burst per key")
    key_rate_exempt_roles: str = Field("", description="roles the rate limit skips (comma-separated)")
    tls_cert_file: str = Field("", description="serve TLS with this certificate chain")
    tls_key_file: str = Field("", description="... and this key")
    tls_ca_file: str = Field("", description="require and verify client certificates; clients verify servers")
    tls_required: bool = Field(False, description="refuse to start (or connect) without TLS")
    # --- observability ------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field("INFO", description="log level")
    log_format: Literal["", "json", "text"] = Field("", description="json or text; empty: the process's own")
    metrics_addr: str = Field("", description="Prometheus endpoint (host:port); empty: off")
    temporal_metrics_addr: str = Field("", description="the worker's Temporal SDK metrics; empty: off")
    otlp_endpoint: str = Field("", description="OpenTelemetry collector; empty: no traces")
    trace_exporter: Literal["", "otlp", "console", "none", "off"] = Field("", description="otlp, console or none")
    service_name: str = Field("", description="the service name traces carry")
    # --- the coordinator ----------------------------------------------------------------------
    temporal_tls: bool = Field(False, description="TLS to Temporal with the system roots")
    temporal_tls_cert_file: str = Field("", description="client certificate for Temporal (mTLS)")
    temporal_tls_key_file: str = Field("", description="... and its key")
    temporal_tls_ca_file: str = Field("", description="Temporal's CA")
    coordinator_keys: str = Field("", description='the worker\'s keys per tenant, JSON {"tenant": "ck_..."}; '
                                  "empty: minted per tenant")
    coordinator_key_ttl_s: int = Field(86400, gt=0, description="lifetime of the keys the worker mints")
    worker_pollers: int = Field(10, gt=0, description="worker pollers")
    worker_max_activities: int = Field(200, gt=0, description="concurrent activities per worker")
    worker_max_workflow_tasks: int = Field(200, gt=0, description="concurrent workflow tasks per worker")
    # --- the client ---------------------------------------------------------------------------
    api_key: str = Field("", description="the key creditctl's gRPC commands use")
    # --- alerts, webhooks and auto top-up (served beside the ledger) -----------------------------
    # Webhook delivery (ledger_service/webhooks): first retry after this many seconds, doubling up to an
    # hour; dead-lettered after this many attempts; the outbox is polled this often besides NOTIFY.
    webhook_retry_base_s: float = Field(5.0, gt=0, description="first webhook retry after this long (doubling)")
    webhook_max_attempts: int = Field(10, gt=0, description="a webhook delivery is dead after this many attempts")
    webhook_poll_s: float = Field(1.0, gt=0, description="the webhook outbox is polled this often besides NOTIFY")
    # Auto top-up (ledger_service/topups): "http" (the protocol of http_provider.py, at the URL) or
    # "stripe" (PaymentIntents with the API key; the URL, if set, replaces Stripe's API base). No URL
    # (and no Stripe) = no top-up sagas: top-ups wait, visibly. The sagas need Temporal (`up`'s, or
    # CREDITS_TEMPORAL_ADDR for a ledger server of its own).
    payment_provider: Literal["http", "stripe"] = Field("http", description="auto top-up payment provider")
    payment_provider_url: str = Field("", description="the payment provider's base URL; empty: no top-ups")
    payment_api_key: str = Field("", description="the payment provider's API key")
    payment_timeout_s: float = Field(10.0, gt=0, description="a payment call's timeout")
    # A charge with no answer is asked again after this many seconds, doubling up to the cap (the saga's
    # retry policy); a top-up whose saga start may have been lost is started again (idempotently) after the lease.
    topup_retry_base_s: float = Field(2.0, gt=0, description="an unanswered charge is asked again after this long")
    topup_retry_cap_s: float = Field(600.0, gt=0, description="... doubling up to this")
    topup_lease_s: float = Field(60.0, gt=0, description="a top-up's saga start is made again after this")
    # --- the customer portal (portal/) ---------------------------------------------------------
    # Where it listens, and the base of the links CreatePortalLink mints (sessions are signed with
    # CREDITS_PORTAL_SECRET: service_runtime/portal_sessions.py).
    portal_addr: str = Field("127.0.0.1:8090", description="the customer portal's address")
    portal_url: str = Field("", description="the base of portal links; empty: http://<portal_addr>")
    portal_secret: str = Field("", description="signs portal sessions; empty: `up` keeps one in the data dir")
    # The invoice service asks the ledger whether a portal link was revoked (invoice_service/portal_revocations.py).
    portal_revocation_cache_s: float = Field(1.0, ge=0, description="the invoice service trusts the ledger's "
                                             "'not revoked' for a portal session this long")
    # --- the proving harness only (never read by product code) --------------------------------
    faults: str = Field("", description="harness: fault plan of a harness worker")
    fault_dir: str = Field("", description="harness: where a fault plan signals")
    portal_screenshots: str = Field("", description="tests: where the portal's browser test saves screenshots")

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.resolve()

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("trace_exporter", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("coordinator_keys")
    @classmethod
    def _keys_json(cls, value: str) -> str:
        if value:
            parsed = json.loads(value)  # a JSONDecodeError is a ValueError: reported as this variable's
            if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
                raise ValueError('expected a JSON object {"tenant": "ck_..."}')
        return value

    @property
    def portal_base_url(self) -> str:
        return (self.portal_url or f"http://{self.portal_addr}").rstrip("/")

    @classmethod
    def settings_customise_sources(
            cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings)

    @staticmethod
    def from_env(*, stack: bool = False, **overrides: Any) -> Settings:
        """The settings of this process; with `stack`, what the environment leaves unset is taken from
        the running stack's file (its real addresses). Raises SettingsError naming the variable."""
        try:
            if stack:
                data_dir = Settings(**{k: v for k, v in overrides.items() if k == "data_dir"}).data_dir
                recorded = {k: v for k, v in read_stack_file(data_dir).items() if k not in _env_values()}
                overrides = {**recorded, **overrides}
            if not overrides:  # the common call, made per request by a few rules: parsed once per environment
                ours = sorted((k, v) for k, v in os.environ.items() if k.upper().startswith(PREFIX))
                return _parsed(os.getcwd(), tuple(ours))
            return Settings(**overrides)
        except ValidationError as err:
            raise SettingsError(_one_line(err)) from None

    @property
    def stack_file(self) -> Path:
        return self.data_dir / STACK_FILE


@functools.lru_cache(maxsize=16)
def _parsed(cwd: str, environment: tuple[tuple[str, str], ...]) -> Settings:
    """Settings() for this CREDITS_* environment and working directory (a relative data dir resolves
    against it): a parse costs ~1.5 ms, a lookup microseconds. The object is frozen, so sharing it is safe;
    a bad value raises every time (exceptions are not cached)."""
    return Settings()


def env_name(field: str) -> str:
    return f"{PREFIX}{field.upper()}"


def _env_values() -> dict[str, Any]:
    """The fields the environment sets (as pydantic-settings reads them)."""
    return dict(EnvSettingsSource(Settings, env_prefix=PREFIX, env_ignore_empty=True)())


def _one_line(err: ValidationError) -> str:
    """`CREDITS_X='value': why` for each bad value, on one line."""
    parts = []
    for e in err.errors():
        field = str(e["loc"][0]) if e["loc"] else ""
        shown = os.environ.get(env_name(field), e.get("input"))
        parts.append(f"{env_name(field)}={shown!r}: {e['msg']}")
    return "; ".join(parts)


def settings_or_exit(**overrides: Any) -> Settings:
    """For a server's main: the settings, or one line on stderr naming the bad variable and exit 2."""
    try:
        return Settings.from_env(**overrides)
    except SettingsError as err:
        print(f"settings: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def read_stack_file(data_dir: Path) -> dict[str, Any]:
    """The addresses a running `creditctl up` recorded in `data_dir`; {} when none runs there (no file,
    an unreadable one, or one whose process is gone)."""
    try:
        recorded = json.loads((data_dir / STACK_FILE).read_text())
        os.kill(int(recorded["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {k: recorded[k] for k in STACK_FIELDS if k in recorded}


def write_stack_file(data_dir: Path, values: dict[str, Any]) -> Path:
    """Records where the stack of this process serves (only STACK_FIELDS, with this pid)."""
    path = data_dir / STACK_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), **{k: values[k] for k in STACK_FIELDS if k in values}}, indent=2))
    tmp.replace(path)
    return path


def remove_stack_file(data_dir: Path) -> None:
    path = data_dir / STACK_FILE
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def describe(settings: Settings, *, stack: bool = True) -> list[dict[str, str]]:
    """Every variable: name, value (secrets hidden), where it came from, and what it is for."""
    env = _env_values()
    recorded = read_stack_file(settings.data_dir) if stack else {}
    rows = []
    for field, info in Settings.model_fields.items():
        value = getattr(settings, field)
        if field in env:
            source = "env"
        elif field in recorded and recorded[field] == value:
            source = f"stack ({settings.stack_file})"
        elif value == info.default or (field == "data_dir" and value == Path(info.default).resolve()):
            source = "default"
        else:
            source = "argument"
        rows.append({"variable": env_name(field), "value": _shown(field, value), "source": source,
                     "description": info.description or ""})
    return rows


def _shown(field: str, value: Any) -> str:
    if field in SECRET_FIELDS:
        if not value:
            return ""
        return f"{value.split('.', 1)[0]}.*** (set)" if field == "api_key" else "*** (set)"
    text = str(value).lower() if isinstance(value, bool) else str(value)
    if field in DSN_FIELDS and value:
        head, at, tail = text.rpartition("@")
        user = head.split("//", 1)[-1]
        if at and ":" in user:  # a password in the DSN
            return f"{head.split('//', 1)[0]}//{user.split(':', 1)[0]}:***@{tail}"
    return text
