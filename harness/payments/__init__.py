"""A local payment provider for tests and the chaos harness (`server`)."""
