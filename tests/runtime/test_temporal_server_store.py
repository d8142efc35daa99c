"""The Temporal dev server's database file, as `creditctl up` and the benches run it: WAL, synced at
every commit (durable across a power loss as with the server's default rollback journal)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from service_runtime.temporal_server import SQLITE_PRAGMAS, TemporalDevServer


def test_the_database_file_is_in_wal_mode_synced_at_every_commit(tmp_path: Path) -> None:
    server = TemporalDevServer(db_file=tmp_path / "temporal.db", headless=True)
    command = server.command()
    pragmas = [command[i + 1] for i, arg in enumerate(command) if arg == "--sqlite-pragma"]
    assert pragmas == list(SQLITE_PRAGMAS) == ["journal_mode=wal", "synchronous=full"]
    server.start()
    try:
        header = (tmp_path / "temporal.db").read_bytes()[:100]
        assert (header[18], header[19]) == (2, 2)  # file format versions 2: write-ahead log
        assert (tmp_path / "temporal.db-wal").exists()
        with sqlite3.connect(tmp_path / "temporal.db") as db:
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        server.stop()
    in_memory = TemporalDevServer(headless=True).command()
    assert "--sqlite-pragma" not in in_memory and "--db-filename" not in in_memory
