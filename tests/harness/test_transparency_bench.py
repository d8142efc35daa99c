"""Smoke test of `creditctl bench watch` and `bench statement`: each runs briefly on its own embedded
Postgres and ledger process and reports the keys the issue names, with no gap and no duplicate."""

from __future__ import annotations

from harness.benches.transparency import bench_statement, bench_watch


async def test_bench_watch_smoke() -> None:
    figures = await bench_watch(watchers=20, seconds=1.0, concurrency=4, say=lambda _: None)
    assert {"watchers", "watch_p99_ms", "gaps", "duplicates"} <= set(figures)
    assert figures["watchers"] == 20 and figures["changes"] > 0 and 0 < figures["messages"] <= figures["changes"]
    assert figures["gaps"] == 0 and figures["duplicates"] == 0


async def test_bench_statement_smoke() -> None:
    figures = await bench_statement(entries=3_000, export_entries=4_000, say=lambda _: None)
    assert {"statement_ms", "export_entries", "export_rss_mb", "rss_before_export_mb",
            "rss_after_fill_mb"} <= set(figures)
    assert figures["entries"] == 3_000 and figures["export_entries"] == 4_000
    assert figures["statement_ms"] > 0 and figures["export_rss_mb"] > 0
