-- Auto top-up: one policy per (account, unit), its crossing state, and one top-up per crossing (the
-- primary key), written in the transaction of the ledger change that crossed the threshold.
CREATE TABLE topup_policies (
    tenant_id             text NOT NULL,
    account_id            text NOT NULL,
    unit                  text NOT NULL,
    scale                 smallint NOT NULL,
    threshold             bigint NOT NULL,
    amount                bigint NOT NULL,      -- 0 when target is set
    target                bigint NOT NULL,      -- 0 when amount is set
    cost_basis            numeric NOT NULL,
    payment_method        text NOT NULL,
    max_daily             bigint,
    max_monthly           bigint,
    failure_limit         integer NOT NULL,
    firing                boolean NOT NULL DEFAULT false,
    crossings             integer NOT NULL DEFAULT 0,
    consecutive_failures  integer NOT NULL DEFAULT 0,
    disabled_at           timestamptz,
    disabled_reason       text NOT NULL DEFAULT '',
    updated_by            text NOT NULL,
    updated_at            timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, account_id, unit)
);

CREATE TABLE topups (
    tenant_id        text NOT NULL,
    topup_id         text NOT NULL,            -- account/unit/crossing
    account_id       text NOT NULL,
    unit             text NOT NULL,
    crossing         integer NOT NULL,
    amount           bigint NOT NULL,
    status           text NOT NULL,            -- REQUESTED, CHARGING, AWAITING_PAYMENT, GRANTED, DECLINED, CAPPED
    payment_method   text NOT NULL,
    cost_basis       numeric NOT NULL,
    charge_id        text NOT NULL DEFAULT '',
    lot_id           text NOT NULL DEFAULT '',
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    last_error       text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, topup_id)
);
CREATE INDEX topups_due ON topups (next_attempt_at) WHERE status IN ('REQUESTED', 'CHARGING', 'AWAITING_PAYMENT');
CREATE INDEX topups_by_account ON topups (tenant_id, account_id, created_at);
