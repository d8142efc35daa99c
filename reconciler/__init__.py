"""Cross-service reconciliation (SPEC §10, §11), run by operators as `creditctl reconcile`: read both
databases and Temporal once the system is quiet and report every place where the ledger, the
invoice service and the coordinator disagree. A product tool: it reads, never writes.

Checks, per tenant (`reconciler.report.Check`):

- `invoice-finalized`: a FINALIZED invoice has exactly one COMMITTED saga hold, owned by the run
  that prepared it, not reversed, whose postings per (charge, lot) equal the credit applications
  on the invoice (and their sum the invoice's credits applied). Ledger amounts are read at the
  unit's scale in the ledger's unit catalog, invoice amounts at the currency's scale in the invoice
  service (`reconciler.scales`); `scale` when either side has none.
- `invoice-voided`: a VOIDED invoice's committed hold was reversed (hold_reversals) and the journal
  gave every posted amount back to the original lot (REINSTATE entries).
- `invoice-draft`: a DRAFT or ABANDONED invoice has no committed hold and no credit applications.
- `in-doubt`: no invoice left PREPARED or VOID_PENDING, no saga hold left PENDING.
- `orphan-hold`: a committed (or reversed) saga hold whose invoice is not FINALIZED / VOIDED.
- `spent-twice`: more than one committed hold for one invoice; a lot whose consumed bucket is not
  the sum of the postings and debits recorded against it; journal entries of a hold that do not
  match its allocations, postings, resolution and reversal.
- `negative-lot`, `journal`: no negative bucket; the ledger's own verify (replay == projection,
  conservation, held == pending allocations).
- `idempotency`: every stored response of a hold/invoice mutation agrees with the durable state
  it names (a key never maps to two outcomes).
- `decision` (with a Temporal client): a finalized/voided invoice's owning run recorded the commit
  decision; `quiet`: no saga workflow still running.

Modules: `run` (reconcile), `ledger_checks`, `invoice_checks`, `idempotency_checks`,
`temporal_checks`, `scales`, `report`.
"""
