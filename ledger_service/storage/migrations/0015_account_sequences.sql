-- WatchBalance (ledger_service/storage/balance_feed.py): a per-account change sequence.
--
-- Every transaction that journals entries for an account takes the next number of that account's
-- head (INSERT ... ON CONFLICT DO UPDATE seq = seq + 1, in the same statement as the entries, see
-- storage/effects.py) and stamps it on those entries. The head row stays locked until COMMIT, so a
-- later transaction for the account gets the next number only after this one committed: per
-- account, sequence order is commit order, with no gap. (entry_id, a bigserial, is not: ids are
-- taken before commit and concurrent transactions commit out of order.)
-- Entries written before this migration have no account_seq: they are part of every snapshot.
CREATE TABLE account_heads (
    tenant_id   text NOT NULL,
    account_id  text NOT NULL,
    seq         bigint NOT NULL CHECK (seq > 0),
    PRIMARY KEY (tenant_id, account_id)
);
ALTER TABLE journal ADD COLUMN account_seq bigint;
CREATE INDEX journal_by_account_seq ON journal (tenant_id, account_id, account_seq) WHERE account_seq IS NOT NULL;
