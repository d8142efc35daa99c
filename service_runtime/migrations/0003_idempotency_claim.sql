-- Claim-first idempotency without UPDATE or DELETE on idempotency records: a caller takes a
-- transaction-scoped advisory lock on (tenant, key), then reads the record with a fresh snapshot
-- (a volatile function's statements each take their own), so a concurrent request with the same
-- key waits for the first to commit and then sees its answer. The record itself is inserted once,
-- complete, when the change commits (service_runtime.idempotency.Guard). Call it as the first
-- statement of a READ COMMITTED transaction.
CREATE FUNCTION idempotency_claim(p_tenant text, p_key text)
RETURNS TABLE (method text, request_hash bytea, response bytea)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_tenant || chr(31) || p_key, 1601));
    RETURN QUERY SELECT k.method, k.request_hash, k.response FROM idempotency_keys k
                 WHERE k.tenant_id = p_tenant AND k.key = p_key;
END
$$;
