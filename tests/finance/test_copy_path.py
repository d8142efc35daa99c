"""The projector's COPY path (the owner's session: the ledger server's background projector) writes the
same books as its JSON statements (where row security refuses COPY), row for row, on a seeded random
history projected in small batches; and COPY's text format reads every value back unchanged."""

from __future__ import annotations

from typing import Any

import asyncpg

from finance.storage import projector
from tests.finance.conftest import Books
from tests.finance.test_random_books import random_history

TENANT = "proportional"
TABLES = {
    "finance_lines": "entry_id, line_no",
    "finance_entries": "entry_id",
    "finance_lots": "lot_id",
    "finance_transfer_legs": "reference, from_lot_id",
    "finance_day_sums": "day, account_id, lot_type, currency, gl_account, entry_kind, transfer, memo, breakage_method",
    "finance_money_sums": "day, account_id, lot_type, currency, paid",
    "finance_cursors": "tenant_id",
}


async def _books(conn: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    out = {t: [tuple(r) for r in await conn.fetch(f"SELECT * FROM {t} WHERE tenant_id = $1 ORDER BY {order}", TENANT)]
           for t, order in TABLES.items()}
    out["finance_cursors"] = [r[:4] for r in out["finance_cursors"]]  # not updated_at
    out["finance_batches"] = [tuple(r) for r in await conn.fetch(
        "SELECT after_entry_id, upto_entry_id, rules_version, closed_through, entries FROM finance_batches "
        "WHERE tenant_id = $1 ORDER BY upto_entry_id", TENANT)]
    return out


async def _project(conn: asyncpg.Connection, mark: int, *, copy: bool) -> dict[str, list[tuple[Any, ...]]]:
    """Projects everything up to `mark` in batches of 7 entry ids, reads the books, rolls it all back."""
    tx = conn.transaction()
    await tx.start()
    try:
        done = False
        while not done:
            _, done = await projector.project_batch(conn, TENANT, mark, window=7, copy=copy)
        return await _books(conn)
    finally:
        await tx.rollback()


async def test_copy_and_json_statements_write_the_same_books(books: Books) -> None:
    rules = '{"breakage": {"method": "PROPORTIONAL", "expected_rate": "0.3"}}'
    from credits.finance.v1 import finance_pb2 as fpb

    await books.finance.SetFinanceRules(fpb.SetFinanceRulesRequest(idempotency_key="r", rules_json=rules),
                                        metadata=books.md(TENANT))
    await random_history(books, TENANT, 17, 80)
    conn = await asyncpg.connect(books.dsn)  # the owner, as the ledger server's background projector
    try:
        assert await conn.fetchval("SELECT row_security_active('finance_lines')") is False  # so COPY is allowed
        mark = await projector.safe_mark(conn)
        assert mark is not None
        by_json = await _project(conn, mark, copy=False)
        by_copy = await _project(conn, mark, copy=True)
    finally:
        await conn.close()
    assert len(by_json["finance_lines"]) > 50 and len(by_json["finance_entries"]) > 50
    assert {r[2] for r in by_json["finance_entries"]} >= {"GRANT", "DEBIT", "POST", "REINSTATE", "TRANSFER_OUT"}
    for table, rows in by_json.items():
        assert by_copy[table] == rows, table


async def test_copy_text_reads_back_unchanged(books: Books) -> None:
    values = ["plain", "", "tab\there", "new\nline", "cr\rhere", "back\\slash", "\\N", "\\t literally", "é ü ✓"]
    conn = await asyncpg.connect(books.dsn)
    try:
        await conn.execute("CREATE TEMP TABLE t (n integer, v text NOT NULL)")
        text = "".join(f"{n}\t{projector.copy_text(v)}\n" for n, v in enumerate(values))
        await conn.copy_to_table("t", source=projector._bytes(text.encode()), format="text")
        assert [r["v"] for r in await conn.fetch("SELECT v FROM t ORDER BY n")] == values
    finally:
        await conn.close()


async def test_a_failed_derivation_leaves_nothing_and_an_idle_connection(books: Books, monkeypatch: Any) -> None:
    """A chunk is in flight when the next chunk's derivation fails: the error surfaces, the batch writes
    nothing, and the connection is usable at once (the in-flight rows ended before the rollback)."""
    await random_history(books, TENANT, 5, 30)
    monkeypatch.setattr(projector, "CHUNK", 3)
    real = projector.Books.postings
    calls = 0

    def failing(self: projector.Books, entry: Any, grant: Any = None) -> Any:
        nonlocal calls
        calls += 1
        if calls == 5:  # the second chunk's second entry: the first chunk is in flight
            raise RuntimeError("derivation failed")
        return real(self, entry, grant)

    monkeypatch.setattr(projector.Books, "postings", failing)
    conn = await asyncpg.connect(books.dsn)
    try:
        mark = await projector.safe_mark(conn)
        assert mark is not None
        for copy in (True, False):
            calls = 0
            try:
                await projector.project_batch(conn, TENANT, mark, copy=copy)
            except RuntimeError as e:
                assert str(e) == "derivation failed"
            else:
                raise AssertionError("the failure did not surface")
            assert await conn.fetchval("SELECT count(*) FROM finance_lines WHERE tenant_id = $1", TENANT) == 0
            assert await conn.fetchval("SELECT count(*) FROM finance_entries WHERE tenant_id = $1", TENANT) == 0
    finally:
        await conn.close()
