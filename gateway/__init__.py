"""The gateway client library: real-time spend control from local leases of ledger holds.

Import `Gate`, `GateConfig` and the decision types from `gateway.gate`; see its docstring."""
