"""Invoice gRPC API: proto <-> domain mapping, permissions, and the thin servicer."""
