-- Finance books (issue #12): the posting-time indexes of the projector's two append-only tables become
-- BRIN (block ranges: a few summaries per thousand rows) instead of B-trees (an entry per row).
--
-- Why: every projected ledger entry writes one finance_entries row and a finance_lines row per journal
-- line, and the B-trees on (tenant_id, posting_at) cost the database as much per entry as the rows' own
-- primary keys (finance/storage/projector.py; `creditctl bench finance`). What reads by posting time
-- is small and range-shaped: the part of one day before an as-of instant (finance/storage/reads.py
-- GL_AS_OF, LOTS_REMAINING) and a period's journal export, paged on the primary key (JOURNAL_PAGE).
-- Both tables are appended in ledger entry order, and posting_at follows it (the recording instant,
-- or the start of the first open period), so block ranges are narrow in time; the tenant is then a
-- filter on the rows of those ranges. Ranges not yet summarized are read whole (correct, slower)
-- until autovacuum summarizes them (autosummarize).
DROP INDEX IF EXISTS finance_lines_by_posting;
CREATE INDEX finance_lines_by_posting ON finance_lines USING brin (posting_at)
    WITH (pages_per_range = 32, autosummarize = on);
DROP INDEX IF EXISTS finance_entries_by_posting;
CREATE INDEX finance_entries_by_posting ON finance_entries USING brin (posting_at)
    WITH (pages_per_range = 32, autosummarize = on);
