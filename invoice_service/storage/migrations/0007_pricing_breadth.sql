-- Pricing breadth (issue 19 part B): variants of usage lines (dimensional, time of use, the
-- commitment true-up), coupons, and taxes per tenant tax region. Independent of 0006.

-- Tax rules: one per region of a tenant; a customer names its region.
CREATE TABLE tax_rules (
    tenant_id     text NOT NULL REFERENCES tenants (tenant_id),
    region        text NOT NULL,
    name          text NOT NULL,
    rate_percent  numeric NOT NULL CHECK (rate_percent >= 0 AND rate_percent <= 100),
    inclusive     boolean NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, region)
);
ALTER TABLE customers ADD COLUMN tax_region text NOT NULL DEFAULT '';

CREATE TABLE coupons (
    tenant_id         text NOT NULL REFERENCES tenants (tenant_id),
    coupon_code       text NOT NULL,
    name              text NOT NULL,
    percent_off       numeric CHECK (percent_off > 0 AND percent_off <= 100),
    amount_off        numeric CHECK (amount_off > 0),
    currency          text NOT NULL DEFAULT '',
    duration_periods  integer NOT NULL CHECK (duration_periods >= 0),
    applies_to        text NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, coupon_code),
    CHECK ((percent_off IS NULL) <> (amount_off IS NULL))
);
-- A coupon redeemed by a customer: it applies to `duration_periods` periods from the one
-- `redeemed_at` falls in. A customer redeems a coupon once.
CREATE TABLE coupon_redemptions (
    tenant_id    text NOT NULL,
    customer_id  text NOT NULL,
    coupon_code  text NOT NULL,
    redeemed_at  timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, customer_id, coupon_code),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers (tenant_id, customer_id),
    FOREIGN KEY (tenant_id, coupon_code) REFERENCES coupons (tenant_id, coupon_code)
);

ALTER TABLE invoice_line_items ADD COLUMN variant text NOT NULL DEFAULT '';
ALTER TABLE invoice_line_items ADD COLUMN discount_minor bigint NOT NULL DEFAULT 0;
ALTER TABLE invoice_line_items ADD COLUMN discount_codes text NOT NULL DEFAULT '';  -- coupon codes, comma-separated
ALTER TABLE invoice_line_items ADD COLUMN tax_minor bigint NOT NULL DEFAULT 0;
ALTER TABLE invoice_line_items ADD CONSTRAINT line_items_discount_within_amount
    CHECK (discount_minor >= 0 AND discount_minor <= amount_minor AND tax_minor >= 0);

-- The tax rule an invoice was taxed by is frozen on it with the totals.
ALTER TABLE invoices ADD COLUMN discount_minor bigint NOT NULL DEFAULT 0;
ALTER TABLE invoices ADD COLUMN tax_minor bigint NOT NULL DEFAULT 0;
ALTER TABLE invoices ADD COLUMN tax_region text NOT NULL DEFAULT '';
ALTER TABLE invoices ADD COLUMN tax_name text NOT NULL DEFAULT '';
ALTER TABLE invoices ADD COLUMN tax_rate_percent numeric;
ALTER TABLE invoices ADD COLUMN tax_inclusive boolean NOT NULL DEFAULT false;
ALTER TABLE invoices ADD CONSTRAINT invoices_credits_within_net
    CHECK (discount_minor >= 0 AND tax_minor >= 0 AND credits_minor + discount_minor <= subtotal_minor);

-- A finalized invoice's new totals are as immutable as the others.
CREATE FUNCTION invoices_refuse_finalized_tax_edits() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.number IS NOT NULL AND (
        NEW.discount_minor <> OLD.discount_minor OR NEW.tax_minor <> OLD.tax_minor
        OR NEW.tax_region <> OLD.tax_region OR NEW.tax_rate_percent IS DISTINCT FROM OLD.tax_rate_percent
        OR NEW.tax_inclusive <> OLD.tax_inclusive OR NEW.tax_name <> OLD.tax_name) THEN
        RAISE EXCEPTION 'invoice % is finalized and immutable', OLD.invoice_id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER invoices_tax_immutable_when_finalized BEFORE UPDATE ON invoices
    FOR EACH ROW EXECUTE FUNCTION invoices_refuse_finalized_tax_edits();
