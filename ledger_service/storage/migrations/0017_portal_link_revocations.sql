-- Per-link revocation of customer portal sessions (service_runtime/portal_sessions.py).
--
-- A portal link is a signed, expiring token: nothing is stored when it is minted. Revoking one link
-- records its session id here; the ledger's key resolver refuses a session found here on every call,
-- and the portal asks the ledger on every request, so a revoked link stops at once (rotating
-- CREDITS_PORTAL_SECRET still ends every link). Insert-only: a revocation is never undone.
CREATE TABLE portal_link_revocations (
    tenant_id    text NOT NULL,
    session_id   text NOT NULL,
    customer_id  text NOT NULL,
    account_id   text NOT NULL,
    expires_at   timestamptz NOT NULL,      -- the link's own expiry: the row is useless after it
    reason       text NOT NULL DEFAULT '',
    revoked_by   text NOT NULL,
    revoked_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, session_id)
);
