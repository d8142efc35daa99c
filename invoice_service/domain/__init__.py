"""Invoice domain: pricing, periods, splitting and apportioning, the invoice state machine. No I/O."""
