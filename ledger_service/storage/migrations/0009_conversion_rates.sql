-- Published conversion rates (issue #18, SPEC §8): per tenant, credit unit and currency, versions
-- 1, 2, ... each effective from an instant. Append-only: a correction is a new version.
CREATE TABLE conversion_rates (
    tenant_id     text NOT NULL,
    unit          text NOT NULL,
    currency      text NOT NULL,
    version       integer NOT NULL CHECK (version > 0),
    rate          numeric NOT NULL CHECK (rate > 0),
    effective_at  timestamptz NOT NULL,
    published_by  text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, unit, currency, version)
);
CREATE TRIGGER conversion_rates_immutable BEFORE UPDATE OR DELETE OR TRUNCATE ON conversion_rates
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_rewrite();
