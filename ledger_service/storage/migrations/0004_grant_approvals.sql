-- Support grant limits and the two-person rule (service_runtime/permissions.py).

-- Per tenant and unit, in minor units; a unit without a row uses CREDITS_SUPPORT_MAX_GRANT /
-- CREDITS_SUPPORT_MAX_DAILY. Set by finance/admin with SetSupportGrantLimits (last write wins).
CREATE TABLE support_grant_limits (
    tenant_id      text NOT NULL,
    unit           text NOT NULL,
    max_per_grant  bigint NOT NULL CHECK (max_per_grant >= 0),
    max_per_day    bigint NOT NULL CHECK (max_per_day >= 0),
    updated_by     text NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, unit),
    FOREIGN KEY (tenant_id, unit) REFERENCES units (tenant_id, code)
);

-- A support grant above a limit: the request as asked (GrantCreditsRequest bytes), never changed.
CREATE TABLE grant_requests (
    tenant_id        text NOT NULL,
    request_id       text NOT NULL,
    seq              bigserial NOT NULL,
    idempotency_key  text NOT NULL,          -- the GrantCredits call's key
    account_id       text NOT NULL,
    unit             text NOT NULL,
    amount           bigint NOT NULL CHECK (amount > 0),
    lot_type         text NOT NULL,
    reason_code      text NOT NULL,
    incident_id      text NOT NULL,
    requested_by     text NOT NULL,          -- key id
    limit_exceeded   text NOT NULL,          -- max_per_grant | max_per_day
    request          bytea NOT NULL,
    created_at       timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, request_id),
    UNIQUE (tenant_id, idempotency_key),
    FOREIGN KEY (tenant_id, account_id) REFERENCES accounts (tenant_id, account_id)
);
CREATE INDEX grant_requests_by_seq ON grant_requests (tenant_id, seq);

-- At most one decision per request (the primary key): approved (with the lot it created) or rejected.
CREATE TABLE grant_request_decisions (
    tenant_id   text NOT NULL,
    request_id  text NOT NULL,
    status      text NOT NULL CHECK (status IN ('APPROVED', 'REJECTED')),
    decided_by  text NOT NULL,               -- key id, never the requester's
    reason      text NOT NULL DEFAULT '',
    lot_id      text,
    decided_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, request_id),
    FOREIGN KEY (tenant_id, request_id) REFERENCES grant_requests (tenant_id, request_id),
    CHECK ((status = 'APPROVED') = (lot_id IS NOT NULL))
);

CREATE TRIGGER grant_requests_immutable BEFORE UPDATE OR DELETE OR TRUNCATE ON grant_requests
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_rewrite();
CREATE TRIGGER grant_request_decisions_immutable BEFORE UPDATE OR DELETE OR TRUNCATE ON grant_request_decisions
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_rewrite();

-- The per-day limit sums a support key's COMPENSATORY lots of the last 24 hours.
CREATE INDEX lots_compensatory_by_granter ON lots (tenant_id, granted_by, unit, created_at)
    WHERE lot_type = 'COMPENSATORY';
