-- Refused calls that authenticated nobody (no key, a malformed key, an unknown key or secret) are
-- counted, not each stored: one row per time window, source address and reason, with a count
-- (service_runtime.refusal_counts). A flood of such calls adds at most one row per window and
-- (source, reason), however many calls it sends. Calls by a real key that are refused (revoked,
-- expired, wrong role, bad input, rate limited) keep their individual records in audit_log.
-- Not append-only: the count grows while its window is open; owners may delete old windows.
CREATE TABLE refused_call_windows (
    window_start  timestamptz NOT NULL,
    window_s      integer NOT NULL,
    source        text NOT NULL,           -- the caller's address without its port ("ipv4:10.0.0.7")
    reason        text NOT NULL,           -- "missing API key", "malformed API key", "unknown API key"
    calls         bigint NOT NULL,
    first_at      timestamptz NOT NULL,
    last_at       timestamptz NOT NULL,
    PRIMARY KEY (window_start, window_s, source, reason)
);
