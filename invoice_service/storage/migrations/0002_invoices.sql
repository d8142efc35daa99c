-- Invoice service schema: catalog, usage events, invoices and their two-phase state.
-- Every row carries tenant_id and every query filters by it.

CREATE TABLE customers (
    tenant_id          text NOT NULL REFERENCES tenants (tenant_id),
    customer_id        text NOT NULL,
    name               text NOT NULL,
    ledger_account_id  text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, customer_id)
);

CREATE TABLE meters (
    tenant_id       text NOT NULL REFERENCES tenants (tenant_id),
    meter_code      text NOT NULL,
    name            text NOT NULL,
    aggregation     text NOT NULL CHECK (aggregation IN ('SUM', 'COUNT', 'MAX', 'UNIQUE_COUNT')),
    property        text NOT NULL DEFAULT '',
    allow_negative  boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, meter_code)
);

-- A plan is immutable once created; its priced components live in `terms` (validated JSON).
CREATE TABLE plans (
    tenant_id   text NOT NULL REFERENCES tenants (tenant_id),
    plan_id     text NOT NULL,
    name        text NOT NULL,
    currency    text NOT NULL,
    billing_interval text NOT NULL CHECK (billing_interval IN ('MONTHLY', 'QUARTERLY', 'YEARLY')),
    terms       jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, plan_id)
);

CREATE TABLE subscriptions (
    tenant_id        text NOT NULL,
    subscription_id  text NOT NULL,
    customer_id      text NOT NULL,
    plan_id          text NOT NULL,
    anchor           timestamptz NOT NULL,
    quantities       jsonb NOT NULL,          -- {"add_ons": {code: n}, "licenses": {code: seats}}
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, subscription_id),
    UNIQUE (tenant_id, customer_id),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers (tenant_id, customer_id),
    FOREIGN KEY (tenant_id, plan_id) REFERENCES plans (tenant_id, plan_id)
);

-- Usage events. The primary key deduplicates event ids; no foreign keys, because the ingest
-- transaction checks customers and meters once per batch (and a per-row FK lock would cost more).
CREATE TABLE usage_events (
    tenant_id    text NOT NULL,
    event_id     text NOT NULL,
    customer_id  text NOT NULL,
    meter_code   text NOT NULL,
    ts           timestamptz NOT NULL,
    quantity     numeric NOT NULL,
    unique_key   text,                        -- the UNIQUE_COUNT property's value
    properties   jsonb,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, event_id)
);
-- Drafts scan one customer's period: a range scan that never touches the heap once vacuumed.
CREATE INDEX usage_events_by_customer_ts ON usage_events (tenant_id, customer_id, ts)
    INCLUDE (meter_code, quantity, unique_key);

CREATE TABLE invoices (
    tenant_id          text NOT NULL REFERENCES tenants (tenant_id),
    invoice_id         text NOT NULL,
    customer_id        text NOT NULL,
    subscription_id    text NOT NULL,
    plan_id            text NOT NULL,
    ledger_account_id  text NOT NULL,
    currency           text NOT NULL,
    period_start       timestamptz NOT NULL,
    period_end         timestamptz NOT NULL,
    status             text NOT NULL CHECK (status IN ('DRAFT', 'PREPARED', 'FINALIZED', 'VOID_PENDING', 'VOIDED')),
    number             text,
    subtotal_minor     bigint NOT NULL DEFAULT 0,
    credits_minor      bigint NOT NULL DEFAULT 0,
    split_at           timestamptz[] NOT NULL DEFAULT '{}',
    draft_digest       text NOT NULL DEFAULT '',
    prepare_key        text NOT NULL DEFAULT '',
    void_reason        text NOT NULL DEFAULT '',
    created_at         timestamptz NOT NULL DEFAULT now(),
    computed_at        timestamptz NOT NULL DEFAULT now(),
    prepared_at        timestamptz,
    finalized_at       timestamptz,
    void_prepared_at   timestamptz,
    voided_at          timestamptz,
    PRIMARY KEY (tenant_id, invoice_id),
    UNIQUE (tenant_id, number),
    CHECK (credits_minor >= 0 AND credits_minor <= subtotal_minor),
    CHECK ((number IS NULL) = (status IN ('DRAFT', 'PREPARED')))
);
-- One live invoice per customer and period; a voided one does not block re-billing the period.
CREATE UNIQUE INDEX invoices_one_per_period ON invoices (tenant_id, customer_id, period_start)
    WHERE status <> 'VOIDED';
CREATE INDEX invoices_by_status ON invoices (tenant_id, status, prepared_at);

CREATE TABLE invoice_line_items (
    tenant_id      text NOT NULL,
    invoice_id     text NOT NULL,
    line_item_id   text NOT NULL,
    position       integer NOT NULL,
    kind           text NOT NULL,
    code           text NOT NULL,
    description    text NOT NULL,
    quantity       numeric NOT NULL,
    unit_price     numeric NOT NULL,
    amount_minor   bigint NOT NULL CHECK (amount_minor >= 0),
    service_start  timestamptz NOT NULL,
    service_end    timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, invoice_id, line_item_id),
    FOREIGN KEY (tenant_id, invoice_id) REFERENCES invoices (tenant_id, invoice_id)
);

-- Pieces of line items frozen by PrepareFinalize: what the ledger reserved against.
CREATE TABLE invoice_charges (
    tenant_id      text NOT NULL,
    invoice_id     text NOT NULL,
    charge_id      text NOT NULL,
    line_item_id   text NOT NULL,
    kind           text NOT NULL,
    name           text NOT NULL,
    quantity       numeric NOT NULL,
    amount_minor   bigint NOT NULL CHECK (amount_minor > 0),
    service_start  timestamptz NOT NULL,
    service_end    timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, invoice_id, charge_id),
    FOREIGN KEY (tenant_id, invoice_id, line_item_id)
        REFERENCES invoice_line_items (tenant_id, invoice_id, line_item_id)
);

CREATE TABLE credit_applications (
    tenant_id     text NOT NULL,
    invoice_id    text NOT NULL,
    position      integer NOT NULL,
    charge_id     text NOT NULL,
    lot_id        text NOT NULL,
    lot_type      text NOT NULL,
    amount_minor  bigint NOT NULL CHECK (amount_minor > 0),
    PRIMARY KEY (tenant_id, invoice_id, position),
    FOREIGN KEY (tenant_id, invoice_id, charge_id) REFERENCES invoice_charges (tenant_id, invoice_id, charge_id)
);

-- Gapless invoice numbers: the row is locked and incremented in the commit transaction.
CREATE TABLE invoice_counters (
    tenant_id    text PRIMARY KEY REFERENCES tenants (tenant_id),
    last_number  bigint NOT NULL
);

-- A finalized invoice is immutable: only its void state may change afterwards, and its line
-- items, charges and credit applications may not change at all.
CREATE FUNCTION invoices_refuse_finalized_edits() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.number IS NOT NULL AND (
        NEW.number IS DISTINCT FROM OLD.number OR NEW.subtotal_minor <> OLD.subtotal_minor
        OR NEW.credits_minor <> OLD.credits_minor OR NEW.period_start <> OLD.period_start
        OR NEW.period_end <> OLD.period_end OR NEW.customer_id <> OLD.customer_id
        OR NEW.currency <> OLD.currency OR NEW.finalized_at IS DISTINCT FROM OLD.finalized_at
        OR NEW.split_at <> OLD.split_at OR NEW.draft_digest <> OLD.draft_digest) THEN
        RAISE EXCEPTION 'invoice % is finalized and immutable', OLD.invoice_id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER invoices_immutable_when_finalized BEFORE UPDATE ON invoices
    FOR EACH ROW EXECUTE FUNCTION invoices_refuse_finalized_edits();
CREATE RULE invoices_no_delete AS ON DELETE TO invoices DO INSTEAD NOTHING;

CREATE FUNCTION invoice_children_refuse_frozen_edits() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    parent_status text;
BEGIN
    SELECT status INTO parent_status FROM invoices
     WHERE tenant_id = OLD.tenant_id AND invoice_id = OLD.invoice_id;
    IF parent_status NOT IN ('DRAFT', 'PREPARED') THEN
        RAISE EXCEPTION 'invoice % is % and immutable', OLD.invoice_id, parent_status;
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$;
CREATE TRIGGER line_items_immutable BEFORE UPDATE OR DELETE ON invoice_line_items
    FOR EACH ROW EXECUTE FUNCTION invoice_children_refuse_frozen_edits();
CREATE TRIGGER charges_immutable BEFORE UPDATE OR DELETE ON invoice_charges
    FOR EACH ROW EXECUTE FUNCTION invoice_children_refuse_frozen_edits();
CREATE TRIGGER applications_immutable BEFORE UPDATE OR DELETE ON credit_applications
    FOR EACH ROW EXECUTE FUNCTION invoice_children_refuse_frozen_edits();
