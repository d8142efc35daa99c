"""python -m portal: the customer portal on CREDITS_PORTAL_ADDR, calling CREDITS_LEDGER_ADDR and
CREDITS_INVOICE_ADDR (sessions signed with CREDITS_PORTAL_SECRET)."""

from __future__ import annotations

import uvicorn

from portal.app import create_app
from service_runtime.settings import Settings


def main() -> None:
    settings = Settings.from_env()
    host, _, port = settings.portal_addr.rpartition(":")
    uvicorn.run(create_app(settings), host=host or "127.0.0.1", port=int(port), log_level="warning")


if __name__ == "__main__":
    main()
