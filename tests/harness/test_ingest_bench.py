"""The ingest benchmark runs end to end (tiny sizes) and reports every figure the CLI promises."""

from __future__ import annotations

from harness.benches import ingest as bench


async def test_bench_reports_all_figures() -> None:
    result = await bench.run(events=2000, baseline_events=200, draft_events=20_000, concurrency=2)
    figures = bench.as_dict(result)
    for key in ("events_per_s", "baseline_events_per_s", "ratio_vs_baseline", "draft_1m_events_s"):
        assert figures[key] > 0
    assert "events/s" in bench.describe(result)
