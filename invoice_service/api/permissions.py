"""Which roles may call which InvoiceService method (checked by the shared auth interceptor).

The table and the role model live in `service_runtime.permissions` (all services in one place);
an RPC missing there is refused for everyone.
"""

from __future__ import annotations

from service_runtime.permissions import INVOICE, INVOICE_SERVICE

SERVICE_NAME = INVOICE_SERVICE
PERMISSIONS: dict[str, frozenset[str]] = INVOICE
