"""Proof-harness fixtures: the coordinator tests' real Temporal server and per-test service stack."""

from tests.coordinator.conftest import stack, temporal_client, temporal_server  # noqa: F401
