-- The credit ledger. Amounts are bigint minor units of the lot's unit (see units.scale).
--
-- Immutable: units, accounts' identity, lots (configuration), holds, hold_allocations,
-- hold_resolutions, journal, transfers. Only lot_balances (the projection) and policy pointers
-- change, always in the same transaction as the journal entries that explain the change.

CREATE TABLE units (
    tenant_id   text NOT NULL,
    code        text NOT NULL,
    scale       smallint NOT NULL CHECK (scale BETWEEN 0 AND 9),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, code)
);

CREATE TABLE accounts (
    tenant_id          text NOT NULL,
    account_id         text NOT NULL,
    parent_account_id  text,
    root_account_id    text NOT NULL,
    name               text NOT NULL DEFAULT '',
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, account_id),
    FOREIGN KEY (tenant_id, parent_account_id) REFERENCES accounts (tenant_id, account_id)
);

-- Consumption policies: versioned per tenant (account_id = '') with per-account overrides.
CREATE TABLE consumption_policies (
    tenant_id    text NOT NULL,
    account_id   text NOT NULL DEFAULT '',
    version      integer NOT NULL,
    sort_keys    text[] NOT NULL,
    type_order   text[] NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, version)
);
CREATE INDEX consumption_policies_by_account ON consumption_policies (tenant_id, account_id, version DESC);

CREATE TABLE lots (
    tenant_id      text NOT NULL,
    lot_id         text NOT NULL,
    seq            bigserial NOT NULL,
    account_id     text NOT NULL,
    lot_type       text NOT NULL,
    unit           text NOT NULL,
    amount         bigint NOT NULL CHECK (amount > 0),
    priority       smallint NOT NULL CHECK (priority BETWEEN 1 AND 100),
    effective_at   timestamptz NOT NULL,
    expires_at     timestamptz,
    scope_kinds    text[] NOT NULL DEFAULT '{}',
    scope_names    text[] NOT NULL DEFAULT '{}',
    cost_basis     numeric(30, 9) NOT NULL DEFAULT 0,
    source         text NOT NULL DEFAULT '',
    reason_code    text NOT NULL DEFAULT '',
    campaign_id    text NOT NULL DEFAULT '',
    incident_id    text NOT NULL DEFAULT '',
    granted_by     text NOT NULL DEFAULT '',
    origin_lot_id  text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, lot_id),
    FOREIGN KEY (tenant_id, account_id) REFERENCES accounts (tenant_id, account_id),
    FOREIGN KEY (tenant_id, unit) REFERENCES units (tenant_id, code),
    CHECK (expires_at IS NULL OR expires_at > effective_at)
);
CREATE INDEX lots_by_account ON lots (tenant_id, account_id, unit);

-- Extensions of a lot's usable window granted when a reversal reinstates credit on an expired
-- lot under REINSTATE_WITH_GRACE. Insert-only; the latest one wins.
CREATE TABLE lot_grace (
    tenant_id     text NOT NULL,
    lot_id        text NOT NULL,
    usable_until  timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, lot_id) REFERENCES lots (tenant_id, lot_id)
);
CREATE INDEX lot_grace_by_lot ON lot_grace (tenant_id, lot_id);

-- The projection: one row per lot, rebuilt-able from the journal (VerifyJournal proves it).
-- Invariant (SPEC §7): granted + reinstated = available + held + consumed + expired + voided
--                      + transferred_out, and no bucket is negative.
CREATE TABLE lot_balances (
    tenant_id        text NOT NULL,
    lot_id           text NOT NULL,
    account_id       text NOT NULL,
    granted          bigint NOT NULL,
    reinstated       bigint NOT NULL DEFAULT 0,
    available        bigint NOT NULL CHECK (available >= 0),
    held             bigint NOT NULL DEFAULT 0 CHECK (held >= 0),
    consumed         bigint NOT NULL DEFAULT 0 CHECK (consumed >= 0),
    expired          bigint NOT NULL DEFAULT 0 CHECK (expired >= 0),
    voided           bigint NOT NULL DEFAULT 0 CHECK (voided >= 0),
    transferred_out  bigint NOT NULL DEFAULT 0 CHECK (transferred_out >= 0),
    closed_at        timestamptz,          -- set when the lot was expired or voided
    PRIMARY KEY (tenant_id, lot_id),
    CHECK (granted + reinstated = available + held + consumed + expired + voided + transferred_out)
);
CREATE INDEX lot_balances_open ON lot_balances (tenant_id, account_id) WHERE available > 0 OR held > 0;

CREATE TABLE holds (
    tenant_id       text NOT NULL,
    hold_key        text NOT NULL,
    account_id      text NOT NULL,
    unit            text NOT NULL,
    requested       bigint NOT NULL,
    reserved        bigint NOT NULL,
    up_to           boolean NOT NULL,
    reference       text NOT NULL DEFAULT '',
    policy_version  integer NOT NULL,
    release_on_ttl  boolean NOT NULL,
    ttl_expires_at  timestamptz NOT NULL,
    charges         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, hold_key)
);
CREATE INDEX holds_by_account ON holds (tenant_id, account_id, created_at);

CREATE TABLE hold_allocations (
    tenant_id   text NOT NULL,
    hold_key    text NOT NULL,
    position    integer NOT NULL,
    charge_id   text NOT NULL,
    lot_id      text NOT NULL,
    amount      bigint NOT NULL CHECK (amount > 0),
    PRIMARY KEY (tenant_id, hold_key, position)
);

-- At most one resolution per hold key: the primary key makes "resolves exactly once" a database
-- fact. A TOMBSTONE row is a release that arrived before its reserve.
CREATE TABLE hold_resolutions (
    tenant_id    text NOT NULL,
    hold_key     text NOT NULL,
    status       text NOT NULL CHECK (status IN ('COMMITTED', 'RELEASED', 'TOMBSTONE')),
    posted       bigint NOT NULL DEFAULT 0,
    released     bigint NOT NULL DEFAULT 0,
    reason       text NOT NULL DEFAULT '',
    resolved_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, hold_key)
);

-- Per-allocation posted amounts of a committed hold (what a reversal gives back).
CREATE TABLE hold_postings (
    tenant_id   text NOT NULL,
    hold_key    text NOT NULL,
    position    integer NOT NULL,
    posted      bigint NOT NULL,
    PRIMARY KEY (tenant_id, hold_key, position)
);

-- The append-only journal. `amount` is the signed change of the lot's available balance;
-- `kind` says which other bucket moved (see ledger_service/domain/journal.py).
CREATE TABLE journal (
    entry_id        bigserial PRIMARY KEY,
    tenant_id       text NOT NULL,
    account_id      text NOT NULL,
    lot_id          text NOT NULL,
    kind            text NOT NULL,
    amount          bigint NOT NULL,
    unit            text NOT NULL,
    effective_at    timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    actor           text NOT NULL DEFAULT '',
    reason          text NOT NULL DEFAULT '',
    reference       text NOT NULL DEFAULT '',
    hold_key        text NOT NULL DEFAULT '',
    policy_version  integer NOT NULL DEFAULT 0
);
CREATE INDEX journal_by_account ON journal (tenant_id, account_id, entry_id);
CREATE INDEX journal_by_lot ON journal (tenant_id, lot_id, entry_id);
CREATE INDEX journal_by_reference ON journal (tenant_id, reference) WHERE reference <> '';

-- A committed hold whose posted amounts went back to their lots (invoice voided or refunded).
CREATE TABLE hold_reversals (
    tenant_id          text NOT NULL,
    hold_key           text NOT NULL,
    policy             text NOT NULL,
    expired_at_once    bigint NOT NULL DEFAULT 0,
    reversed_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, hold_key)
);

CREATE TABLE transfers (
    tenant_id        text NOT NULL,
    transfer_id      text NOT NULL,
    from_account_id  text NOT NULL,
    to_account_id    text NOT NULL,
    unit             text NOT NULL,
    amount           bigint NOT NULL,
    legs             jsonb NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, transfer_id)
);
CREATE TABLE transfer_reversals (
    tenant_id    text NOT NULL,
    transfer_id  text NOT NULL,
    reversed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, transfer_id)
);

CREATE TABLE transfer_limits (
    tenant_id         text NOT NULL,
    account_id        text NOT NULL,
    unit              text NOT NULL,
    max_per_transfer  bigint,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, account_id, unit)
);

-- The database itself refuses to rewrite history.
CREATE FUNCTION refuse_rewrite() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'table % is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER journal_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON journal
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_rewrite();
CREATE TRIGGER lots_immutable BEFORE UPDATE OR DELETE OR TRUNCATE ON lots
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_rewrite();
CREATE TRIGGER holds_immutable BEFORE UPDATE OR DELETE OR TRUNCATE ON holds
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_rewrite();
CREATE TRIGGER hold_allocations_immutable BEFORE UPDATE OR DELETE OR TRUNCATE ON hold_allocations
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_rewrite();
CREATE TRIGGER hold_resolutions_immutable BEFORE UPDATE OR DELETE OR TRUNCATE ON hold_resolutions
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_rewrite();
CREATE TRIGGER hold_reversals_immutable BEFORE UPDATE OR DELETE OR TRUNCATE ON hold_reversals
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_rewrite();
CREATE TRIGGER hold_postings_immutable BEFORE UPDATE OR DELETE OR TRUNCATE ON hold_postings
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_rewrite();
