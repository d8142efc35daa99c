"""Which roles may call each LedgerService RPC. An RPC missing here is refused for everyone."""

from __future__ import annotations

ALL = frozenset({"admin", "operator", "finance", "support", "service", "readonly"})
WRITERS = frozenset({"admin", "operator", "finance", "service"})
FINANCE = frozenset({"admin", "finance"})

_S = "/credits.ledger.v1.LedgerService/"

PERMISSIONS: dict[str, frozenset[str]] = {
    _S + "CreateAccount": WRITERS,
    _S + "GetAccount": ALL,
    _S + "DefineUnit": FINANCE | {"operator"},
    _S + "ListUnits": ALL,
    _S + "GrantCredits": WRITERS | {"support"},
    _S + "GetLot": ALL,
    _S + "ListLots": ALL,
    _S + "VoidGrant": FINANCE | {"operator"},
    _S + "GetBalance": ALL,
    _S + "ListEntries": ALL,
    _S + "GetLotBoundaries": ALL,
    _S + "ExplainAllocation": ALL,
    _S + "VerifyJournal": FINANCE | {"operator"},
    _S + "SetConsumptionPolicy": FINANCE,
    _S + "GetConsumptionPolicy": ALL,
    _S + "ReserveCredits": WRITERS,
    _S + "CommitHold": WRITERS,
    _S + "ReleaseHold": WRITERS,
    _S + "GetHold": ALL,
    _S + "ListHolds": ALL,
    _S + "DebitCredits": WRITERS,
    _S + "BatchDebitCredits": WRITERS,
    _S + "ExpireLots": FINANCE | {"operator"},
    _S + "ReleaseExpiredHolds": FINANCE | {"operator"},
    _S + "ReverseReference": WRITERS,
    _S + "TransferCredits": WRITERS,
    _S + "ReverseTransfer": WRITERS,
    _S + "SetTransferLimit": FINANCE,
}
