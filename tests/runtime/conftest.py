"""Runtime tests reuse the ledger fixture (a real ledger server on port 0)."""

from tests.ledger.conftest import ledger  # noqa: F401 - re-exported fixture
