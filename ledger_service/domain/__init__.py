"""Pure ledger domain: lots, charges, consumption policy, allocation, journal rules. No I/O."""
