"""CLI tests talk to a real ledger server on port 0 (the ledger fixture)."""

from tests.ledger.conftest import ledger  # noqa: F401 - re-exported fixture
