"""Finance fixtures: the ledger's (a fresh database and a real ledger server on port 0 per test)."""

from __future__ import annotations

from tests.ledger.conftest import ledger

__all__ = ["ledger"]
