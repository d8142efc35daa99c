-- Alert rules, their state machines, the alert events (the outbox, written in the transaction of the
-- ledger change that caused them) and the webhook endpoints that receive them, with one delivery row
-- per (event, endpoint) fanned out in that same transaction and a log of every attempt.

CREATE TABLE alert_rules (
    tenant_id    text NOT NULL,
    rule_id      text NOT NULL,
    account_id   text NOT NULL,          -- '' = the tenant's default
    unit         text NOT NULL,
    scale        smallint NOT NULL,
    kind         text NOT NULL,
    params       jsonb NOT NULL,
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL,
    disabled_at  timestamptz,
    PRIMARY KEY (tenant_id, rule_id)
);
CREATE INDEX alert_rules_live ON alert_rules (tenant_id, account_id) WHERE disabled_at IS NULL;

-- One state machine per (rule, account, subject); account '' for tenant-wide subjects (a granting key).
CREATE TABLE alert_watches (
    tenant_id    text NOT NULL,
    rule_id      text NOT NULL,
    account_id   text NOT NULL,
    subject      text NOT NULL,
    firing       boolean NOT NULL,
    crossings    integer NOT NULL,
    data         jsonb NOT NULL,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, rule_id, account_id, subject)
);

CREATE TABLE alert_events (
    tenant_id    text NOT NULL,
    event_id     text NOT NULL,          -- rule/account/subject/crossing[/recovered]: one per crossing
    seq          bigserial,
    event_type   text NOT NULL,
    rule_id      text NOT NULL,
    account_id   text NOT NULL,
    subject      text NOT NULL,
    crossing     integer NOT NULL,
    payload      text NOT NULL,          -- the exact webhook body
    occurred_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, event_id)
);
CREATE INDEX alert_events_by_seq ON alert_events (tenant_id, seq);
CREATE INDEX alert_watches_by_account ON alert_watches (tenant_id, account_id);

CREATE TABLE webhook_endpoints (
    tenant_id      text NOT NULL,
    endpoint_id    text NOT NULL,
    url            text NOT NULL,
    event_types    text[] NOT NULL,      -- empty = every type
    allow_private  boolean NOT NULL,
    created_by     text NOT NULL,
    created_at     timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, endpoint_id)
);

-- Signing secrets: every secret whose expires_at is unset or in the future signs (rotation overlap).
CREATE TABLE webhook_secrets (
    tenant_id    text NOT NULL,
    endpoint_id  text NOT NULL,
    version      integer NOT NULL,
    secret       text NOT NULL,
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz,
    PRIMARY KEY (tenant_id, endpoint_id, version)
);

CREATE TABLE webhook_deliveries (
    tenant_id        text NOT NULL,
    event_id         text NOT NULL,
    endpoint_id      text NOT NULL,
    event_type       text NOT NULL,
    status           text NOT NULL,      -- PENDING, DELIVERED, DEAD
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    last_http_status integer NOT NULL DEFAULT 0,
    last_error       text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL,
    delivered_at     timestamptz,
    PRIMARY KEY (tenant_id, event_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'PENDING';
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (tenant_id, endpoint_id, created_at);

CREATE TABLE webhook_attempts (
    tenant_id    text NOT NULL,
    event_id     text NOT NULL,
    endpoint_id  text NOT NULL,
    attempt      integer NOT NULL,
    at           timestamptz NOT NULL,
    http_status  integer NOT NULL,
    error        text NOT NULL,
    duration_ms  integer NOT NULL,
    PRIMARY KEY (tenant_id, event_id, endpoint_id, attempt)
);
