-- Subscriptions that change (issue #19, part A): plan versions, subscription phases (plan, version,
-- quantities and per-customer price overrides from an instant on), trials, calendar-aligned billing,
-- cancellation, and several subscriptions per customer (invoices are per subscription and period).

-- Editing a plan creates a version; `plans.terms` stays the latest version's terms, `plans.version` its number.
ALTER TABLE plans ADD COLUMN version integer NOT NULL DEFAULT 1 CHECK (version >= 1);
CREATE TABLE plan_versions (
    tenant_id   text NOT NULL,
    plan_id     text NOT NULL,
    version     integer NOT NULL CHECK (version >= 1),
    name        text NOT NULL,
    terms       jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, plan_id, version),
    FOREIGN KEY (tenant_id, plan_id) REFERENCES plans (tenant_id, plan_id)
);
INSERT INTO plan_versions (tenant_id, plan_id, version, name, terms, created_at)
SELECT tenant_id, plan_id, 1, name, terms, created_at FROM plans;

-- The subscription row holds the schedule and the phase in force last; phases hold the history.
ALTER TABLE subscriptions DROP CONSTRAINT subscriptions_tenant_id_customer_id_key;
ALTER TABLE subscriptions ADD COLUMN plan_version integer NOT NULL DEFAULT 1;
ALTER TABLE subscriptions ADD COLUMN overrides jsonb NOT NULL DEFAULT '{}';
ALTER TABLE subscriptions ADD COLUMN trial_end timestamptz;
ALTER TABLE subscriptions ADD COLUMN calendar_aligned boolean NOT NULL DEFAULT false;
ALTER TABLE subscriptions ADD COLUMN ends_at timestamptz;
ALTER TABLE subscriptions ADD COLUMN canceled_at timestamptz;
ALTER TABLE subscriptions ADD CONSTRAINT subscriptions_trial_after_anchor CHECK (trial_end IS NULL OR trial_end > anchor);
CREATE INDEX subscriptions_by_customer ON subscriptions (tenant_id, customer_id);

CREATE TABLE subscription_phases (
    tenant_id        text NOT NULL,
    subscription_id  text NOT NULL,
    effective_at     timestamptz NOT NULL,
    plan_id          text NOT NULL,
    plan_version     integer NOT NULL,
    quantities       jsonb NOT NULL,          -- {"add_ons": {code: n}, "licenses": {code: seats}}
    overrides        jsonb NOT NULL DEFAULT '{}',  -- {code: {"amount": "9.00"} | {"price": {...}}}
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, subscription_id, effective_at),
    FOREIGN KEY (tenant_id, subscription_id) REFERENCES subscriptions (tenant_id, subscription_id),
    FOREIGN KEY (tenant_id, plan_id, plan_version) REFERENCES plan_versions (tenant_id, plan_id, version)
);
INSERT INTO subscription_phases (tenant_id, subscription_id, effective_at, plan_id, plan_version, quantities)
SELECT tenant_id, subscription_id, anchor, plan_id, 1, quantities FROM subscriptions;

-- One live invoice per subscription and period (a customer may have several subscriptions).
DROP INDEX invoices_one_per_period;
CREATE UNIQUE INDEX invoices_one_per_subscription_period ON invoices (tenant_id, subscription_id, period_start)
    WHERE status <> 'VOIDED';
CREATE INDEX invoices_by_customer_period ON invoices (tenant_id, customer_id, period_start);
