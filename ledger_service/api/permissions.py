"""Which roles may call each LedgerService RPC: the ledger's rows of the one shared table.

The table and the role model live in `service_runtime.permissions` (all services in one place);
an RPC missing there is refused for everyone. Request-dependent rules (support grant limits, the
two-person rule) are in `ledger_service.domain.grants`.
"""

from __future__ import annotations

from service_runtime.permissions import ALERTS, LEDGER, LEDGER_SERVICE

SERVICE_NAME = LEDGER_SERVICE
PERMISSIONS: dict[str, frozenset[str]] = LEDGER
ALERT_PERMISSIONS: dict[str, frozenset[str]] = ALERTS  # credits.alerts.v1, served by the ledger server
