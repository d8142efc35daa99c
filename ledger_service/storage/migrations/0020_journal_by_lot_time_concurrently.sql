-- migration: outside a transaction
-- The as-of read's index (see 0014), built without blocking the ledger's writers: a concurrent build
-- reads the journal while inserts go on. A database that applied 0014 before its amendment has it
-- already (IF NOT EXISTS); a build that failed half-way left it INVALID, and the runner drops such an
-- index before building it again (service_runtime/postgres.py).

CREATE INDEX CONCURRENTLY IF NOT EXISTS journal_by_lot_time ON journal (tenant_id, lot_id, recorded_at);
