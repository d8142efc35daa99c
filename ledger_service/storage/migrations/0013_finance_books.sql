-- Finance books (issue #12, SPEC §12; the `finance` package): revenue recognition, liability,
-- breakage and the accounting journal, projected from the ledger journal.
--
-- Reading the journal incrementally without missing an entry: entry_id is a bigserial, taken at
-- insert and committed in any order, so "everything after the last id I saw" could skip an id a
-- slower transaction commits later. The projector (finance/storage/projector.py) therefore only
-- reads up to a safe mark: it reads the sequence's last value S, then takes a transaction id P of
-- its own (in a short transaction of its own), and waits until the oldest running transaction is
-- >= P (pg_snapshot_xmin): every transaction that took an id <= S had its transaction id before S
-- was read, so < P, and has now ended. (A snapshot's xmax is not enough: it is one past the newest
-- *finished* transaction, so the newest writer, still running, can equal it.)
-- That needs a writer's transaction id to exist before it takes an entry id; this trigger makes it
-- so for every INSERT into the journal (once per statement, before any row default is computed).
CREATE FUNCTION journal_xid_first() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_current_xact_id();
    RETURN NULL;
END
$$;
CREATE TRIGGER journal_xid_before_ids BEFORE INSERT ON journal
    FOR EACH STATEMENT EXECUTE FUNCTION journal_xid_first();

-- Recognition rules as data (finance/domain/rules.py), versioned per tenant; insert-only.
CREATE TABLE finance_rules (
    tenant_id   text NOT NULL,
    version     integer NOT NULL CHECK (version > 0),
    rules       text NOT NULL,
    set_by      text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, version)
);

-- Per tenant: how far the journal is projected, and up to which instant the books are closed.
CREATE TABLE finance_cursors (
    tenant_id          text PRIMARY KEY,
    entry_id           bigint NOT NULL DEFAULT 0,
    entries_projected  bigint NOT NULL DEFAULT 0,
    closed_through     timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- Each closed period, for the record (closing is the only way closed_through moves).
CREATE TABLE finance_period_closes (
    tenant_id     text NOT NULL,
    period_start  timestamptz NOT NULL,
    period_end    timestamptz NOT NULL,
    closed_by     text NOT NULL DEFAULT '',
    closed_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, period_end)
);

-- A lot's book (finance.domain.books.LotBook): its terms kept from its grant, and its running money.
CREATE TABLE finance_lots (
    tenant_id          text NOT NULL,
    lot_id             text NOT NULL,
    account_id         text NOT NULL,
    lot_type           text NOT NULL,
    campaign_id        text NOT NULL DEFAULT '',
    source             text NOT NULL DEFAULT '',
    origin_lot_id      text NOT NULL DEFAULT '',
    currency           text NOT NULL,
    treatment          text NOT NULL,
    breakage_method    text NOT NULL,
    expected_rate      numeric NOT NULL DEFAULT 0,
    rules_version      integer NOT NULL DEFAULT 0,
    granted_at         timestamptz NOT NULL,
    deferred_at_grant  bigint NOT NULL,
    units_granted      bigint NOT NULL,
    units_remaining    bigint NOT NULL,
    recognized         bigint NOT NULL DEFAULT 0,
    breakage           bigint NOT NULL DEFAULT 0,
    advance            bigint NOT NULL DEFAULT 0,
    transferred_out    bigint NOT NULL DEFAULT 0,
    voided             bigint NOT NULL DEFAULT 0,
    units_consumed     bigint NOT NULL DEFAULT 0,
    units_expired      bigint NOT NULL DEFAULT 0,
    first_consumed_at  timestamptz,
    unit               text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, lot_id)
);

-- Money that left a lot by TRANSFER_OUT, until the other leg (GRANT of the copy, or REINSTATE of a
-- reversal) takes it; `matched` then. Never deleted.
CREATE TABLE finance_transfer_legs (
    tenant_id           text NOT NULL,
    reference           text NOT NULL,
    from_lot_id         text NOT NULL,
    from_origin_lot_id  text NOT NULL DEFAULT '',
    units               bigint NOT NULL,
    money               bigint NOT NULL,
    matched             boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tenant_id, reference, from_lot_id)
);

-- One row per projected ledger entry: the primary key makes "exactly once" a database fact.
CREATE TABLE finance_entries (
    tenant_id     text NOT NULL,
    entry_id      bigint NOT NULL,
    kind          text NOT NULL,
    lot_id        text NOT NULL,
    account_id    text NOT NULL,
    units         bigint NOT NULL,
    money         bigint NOT NULL,
    effective_at  timestamptz NOT NULL,
    posting_at    timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, entry_id)
);
CREATE INDEX finance_entries_by_posting ON finance_entries (tenant_id, posting_at);

-- The accounting journal: append-only, balanced per ledger entry and currency.
CREATE TABLE finance_lines (
    tenant_id     text NOT NULL,
    entry_id      bigint NOT NULL,
    line_no       smallint NOT NULL,
    posting_at    timestamptz NOT NULL,
    effective_at  timestamptz NOT NULL,
    gl_account    text NOT NULL,
    gl_code       text NOT NULL,
    debit         bigint NOT NULL CHECK (debit >= 0),
    credit        bigint NOT NULL CHECK (credit >= 0),
    currency      text NOT NULL,
    account_id    text NOT NULL,
    lot_id        text NOT NULL,
    lot_type      text NOT NULL,
    campaign_id   text NOT NULL DEFAULT '',
    entry_kind    text NOT NULL,
    hold_key      text NOT NULL DEFAULT '',
    reference     text NOT NULL DEFAULT '',
    memo          text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, entry_id, line_no),
    CHECK ((debit = 0) <> (credit = 0))
);
CREATE INDEX finance_lines_by_posting ON finance_lines (tenant_id, posting_at);

-- Sums of lines per UTC day and everything a report groups by, kept by the projector in the same
-- transaction as the lines (reports read these, not millions of lines; verify_books compares them).
CREATE TABLE finance_day_sums (
    tenant_id        text NOT NULL,
    day              date NOT NULL,
    account_id       text NOT NULL,
    lot_type         text NOT NULL,
    currency         text NOT NULL,
    gl_account       text NOT NULL,
    entry_kind       text NOT NULL,
    transfer         boolean NOT NULL,
    memo             text NOT NULL,
    breakage_method  text NOT NULL,
    debit            bigint NOT NULL DEFAULT 0,
    credit           bigint NOT NULL DEFAULT 0,
    lines            bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, day, account_id, lot_type, currency, gl_account, entry_kind, transfer, memo,
                 breakage_method)
);

-- Money that came onto (GRANT, REINSTATE) and left (the other kinds) lots, per UTC day: the lots'
-- own side of the liability check, as of any instant.
CREATE TABLE finance_money_sums (
    tenant_id   text NOT NULL,
    day         date NOT NULL,
    account_id  text NOT NULL,
    lot_type    text NOT NULL,
    currency    text NOT NULL,
    paid        boolean NOT NULL,
    money_in    bigint NOT NULL DEFAULT 0,
    money_out   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, day, account_id, lot_type, currency, paid)
);

CREATE TRIGGER finance_lines_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON finance_lines
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_rewrite();
CREATE TRIGGER finance_entries_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON finance_entries
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_rewrite();
CREATE TRIGGER finance_rules_immutable BEFORE UPDATE OR DELETE OR TRUNCATE ON finance_rules
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_rewrite();
CREATE TRIGGER finance_period_closes_immutable BEFORE UPDATE OR DELETE OR TRUNCATE ON finance_period_closes
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_rewrite();
