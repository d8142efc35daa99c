"""One module per top-level creditctl command (or command group); each exposes it as `command`."""
