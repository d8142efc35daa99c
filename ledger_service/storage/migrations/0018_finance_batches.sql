-- Each projected batch of the finance books (issue #12; finance/storage/projector.py), for the record:
-- the entry ids it covered (after_entry_id, upto_entry_id], the rules version it derived them under
-- (0: the documented defaults) and the end of the closed periods it posted against. With these the
-- books can be re-derived from the ledger journal from scratch and compared with what was projected
-- (finance/storage/rederive.py, `creditctl finance verify`, `creditctl reconcile`). Insert-only.
CREATE TABLE finance_batches (
    tenant_id       text NOT NULL,
    after_entry_id  bigint NOT NULL,
    upto_entry_id   bigint NOT NULL CHECK (upto_entry_id > after_entry_id),
    rules_version   integer NOT NULL CHECK (rules_version >= 0),
    closed_through  timestamptz,
    entries         integer NOT NULL CHECK (entries > 0),
    projected_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, upto_entry_id)
);

CREATE TRIGGER finance_batches_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON finance_batches
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_rewrite();
