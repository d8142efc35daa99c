"""Coordinator: Temporal sagas that keep the ledger and the invoice service in step."""
