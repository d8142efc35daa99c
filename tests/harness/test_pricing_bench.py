"""The pricing draft benchmark runs end to end (tiny sizes); each draft adds up to the events loaded, and it
reports every figure the CLI promises."""

from __future__ import annotations

from harness.benches import pricing_draft as bench


async def test_bench_reports_all_figures() -> None:
    figures = await bench.run(events=3000, rounds=1)
    assert set(figures) == set(bench.JSON_KEYS) and figures["events"] == 3000
    assert all(figures[k] > 0 for k in bench.JSON_KEYS)
    assert "peak/off-peak" in bench.describe(figures)
