"""The ledger's application layer: one module per family of verbs, each function named as its RPC.

An operation takes what the API layer unpacked (ids, keys and text already checked, amounts still
text until their unit's scale is known), applies the domain rules, and writes through storage:
through the AccountWriter for everything that changes one account's lots and holds, in one
idempotent transaction (`run_idempotent`) for the rest. Idempotency and the claiming of the
call's audit record happen here, never in `api/`.

- `accounts_and_units`: CreateAccount, GetAccount, ListAccounts, DefineUnit, ListUnits
- `grants`: GrantCredits (support grants, limits and approvals through the SupportGate), VoidGrant,
  Set/GetSupportGrantLimits, Get/ListGrantRequests, Approve/RejectGrantRequest
- `lots_and_balances`: GetLot, ListLots, GetBalance, ListEntries, GetLotBoundaries, VerifyJournal
- `holds`: ReserveCredits, CommitHold, ReleaseHold, DebitCredits, BatchDebitCredits, GetHold,
  ListHolds, ExplainAllocation
- `sweeps`: ExpireLots, ReleaseExpiredHolds
- `reversals_and_transfers`: ReverseHold, TransferCredits, ReverseTransfer, SetTransferLimit
- `policy`: SetConsumptionPolicy, GetConsumptionPolicy
- `rates`: PublishRate, ListRates
"""
