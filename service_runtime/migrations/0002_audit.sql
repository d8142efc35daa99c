-- The audit trail: every mutation and every refused attempt (bad key, wrong role, bad input),
-- with who (key id, role), what (method, subject ids), why (reason) and the request id.
-- Append-only, like the ledger's journal.
CREATE TABLE audit_log (
    audit_id    bigserial PRIMARY KEY,
    tenant_id   text NOT NULL,           -- '' when the caller could not be authenticated
    key_id      text NOT NULL,
    role        text NOT NULL,
    method      text NOT NULL,
    code        text NOT NULL,           -- gRPC status name of the outcome
    detail      text NOT NULL DEFAULT '',
    reason      text NOT NULL DEFAULT '',
    subjects    text[] NOT NULL DEFAULT '{}',   -- "account_id=acme", "invoice_id=inv_1", ...
    request_id  text NOT NULL DEFAULT '',
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_by_tenant_time ON audit_log (tenant_id, at);
CREATE INDEX audit_by_subject ON audit_log USING gin (subjects);

CREATE FUNCTION audit_refuse_rewrite() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_rewrite();
