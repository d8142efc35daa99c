-- Every grant above a tenant-set threshold (per unit, any role, any lot type) needs a second
-- person's approval; NULL: no threshold. Support and operator keys' grants also keep their
-- per-grant and per-day limits (service_runtime/permissions.py).
ALTER TABLE support_grant_limits ADD COLUMN approval_threshold bigint CHECK (approval_threshold >= 0);

-- The two-person rule compares people, not keys: the principal (the key's owner, or "key:<id>"
-- for a key without one) of whoever asked and decided. '' on rows made before: their key id counts.
ALTER TABLE grant_requests ADD COLUMN requested_by_owner text NOT NULL DEFAULT '';
ALTER TABLE grant_request_decisions ADD COLUMN decided_by_owner text NOT NULL DEFAULT '';
