"""Invoice storage: SQL in, domain objects out; numbered migrations in migrations/."""

from pathlib import Path

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
