"""`creditctl bench saga | ledger | ingest`: each measured against a baseline in the same run."""
