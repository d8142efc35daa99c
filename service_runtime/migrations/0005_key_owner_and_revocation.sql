-- Every key belongs to a person or a system (`owner`, e.g. "alice@example.com" or
-- "system:coordinator"); the two-person rule compares owners, not key ids. Keys made before this
-- migration keep an empty owner, which counts as a distinct owner per key.
ALTER TABLE api_keys ADD COLUMN owner text NOT NULL DEFAULT '';

-- Revocation reaches every server at once: any change to a key (revoked, expiry moved, deleted)
-- notifies `credits_api_keys` with its key id, and each server drops that key from its cache
-- (service_runtime.api_keys.KeyResolver).
CREATE FUNCTION api_keys_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('credits_api_keys', OLD.key_id);
    RETURN NULL;
END
$$;
CREATE TRIGGER api_keys_changed AFTER UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION api_keys_notify_change();
