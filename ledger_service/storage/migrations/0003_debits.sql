-- A debit (DebitCredits: reserve + commit in one step) is born committed, so it needs no pending
-- hold, allocation rows or resolution: one immutable row records what a hold would, with its
-- charges and allocations as compact JSON text (written on the hot path, read rarely).
CREATE TABLE debits (
    tenant_id       text NOT NULL,
    hold_key        text NOT NULL,          -- "debit:<idempotency key>"
    account_id      text NOT NULL,
    unit            text NOT NULL,
    requested       bigint NOT NULL,
    reserved        bigint NOT NULL,
    up_to           boolean NOT NULL,
    reference       text NOT NULL DEFAULT '',
    policy_version  integer NOT NULL,
    charges         text NOT NULL,          -- [{charge_id, kind, name, amount, service_start, service_end}]
    allocations     text NOT NULL,          -- [[position, charge_id, lot_id, amount, lot_type], ...]
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, hold_key)
);

CREATE TRIGGER debits_immutable BEFORE UPDATE OR DELETE OR TRUNCATE ON debits
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_rewrite();
