"""Auto top-up: the saga's starter and worker (`saga`), its steps (`steps`) and the payment adapters."""
