"""CLI tests talk to a real ledger server on port 0 (the ledger fixture)."""

from tests.coordinator.conftest import stack, temporal_client, temporal_server  # noqa: F401 - re-exported
from tests.ledger.conftest import ledger  # noqa: F401 - re-exported fixture
