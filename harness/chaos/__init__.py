"""Fault injection on the real stack run as separate OS processes, and seeded campaigns (SPEC §11)."""
