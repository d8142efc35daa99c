-- Past balances in constant time (issue #20).
--
-- 1. `journal_by_lot_time`: an as-of read walks each lot of the account by (lot, recorded_at), so it
--    reads only that account's entries recorded since the lot's last checkpoint — never the
--    journal of other accounts or tenants. Built by 0020, CONCURRENTLY (amended: this migration
--    built it in its transaction, which holds off every journal insert while a big journal is read).
-- 2. `lot_balances.entries`: how many journal entries the lot has (the projection counts them, like
--    its buckets; VerifyJournal checks the count against the journal). It only decides when the
--    next checkpoint is due.
-- 3. `lot_checkpoints`: insert-only snapshots of one lot's buckets. Written by the ledger's flush
--    (ledger_service/storage/effects.py) in the same statement as the entries, under the account
--    lock, whenever a lot's entry count crosses a multiple of CHECKPOINT_EVERY. A checkpoint holds
--    the replay of every entry of the lot with entry_id <= through_entry_id, and `at` is the
--    recorded_at of that transaction: every entry up to it was recorded at or before `at`, every
--    later one at or after (writers of an account are serialised and stamp entries after taking
--    the lock). So the balance as of T >= at is the checkpoint plus the lot's entries with
--    entry_id > through_entry_id and recorded_at in [at, T]. VerifyJournal proves both facts.

ALTER TABLE lot_balances ADD COLUMN entries bigint NOT NULL DEFAULT 0 CHECK (entries >= 0);
UPDATE lot_balances b SET entries = j.n
FROM (SELECT tenant_id, lot_id, count(*) AS n FROM journal GROUP BY tenant_id, lot_id) j
WHERE j.tenant_id = b.tenant_id AND j.lot_id = b.lot_id;

CREATE TABLE lot_checkpoints (
    tenant_id         text NOT NULL,
    lot_id            text NOT NULL,
    account_id        text NOT NULL,
    through_entry_id  bigint NOT NULL,
    at                timestamptz NOT NULL,
    entries           bigint NOT NULL,
    granted           bigint NOT NULL,
    reinstated        bigint NOT NULL,
    available         bigint NOT NULL,
    held              bigint NOT NULL,
    consumed          bigint NOT NULL,
    expired           bigint NOT NULL,
    voided            bigint NOT NULL,
    transferred_out   bigint NOT NULL,
    PRIMARY KEY (tenant_id, lot_id, through_entry_id),
    FOREIGN KEY (tenant_id, lot_id) REFERENCES lots (tenant_id, lot_id),
    CHECK (granted + reinstated = available + held + consumed + expired + voided + transferred_out)
);
CREATE INDEX lot_checkpoints_by_instant ON lot_checkpoints (tenant_id, lot_id, at, through_entry_id);

CREATE TRIGGER lot_checkpoints_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON lot_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_rewrite();
