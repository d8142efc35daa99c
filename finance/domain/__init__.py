"""Pure finance rules: recognition rules as data, journal derivation, report arithmetic."""
