-- Published conversion rates (issue #18): a lot in a credit unit that paid a currency charge at a
-- published rate records the rate and its version; the invoice keeps the coordinator's notes on
-- credit that could not pay (e.g. "no rate from credit to USD"), so nothing is left unsaid.
ALTER TABLE credit_applications ADD COLUMN rate numeric CHECK (rate > 0);
ALTER TABLE credit_applications ADD COLUMN rate_version integer NOT NULL DEFAULT 0 CHECK (rate_version >= 0);
ALTER TABLE credit_applications ADD CONSTRAINT credit_applications_rate_versioned
    CHECK ((rate_version = 0) = (rate IS NULL));
ALTER TABLE invoices ADD COLUMN credit_notes text[] NOT NULL DEFAULT '{}';
