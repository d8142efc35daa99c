"""The ingest benchmark runs end to end (tiny sizes), stores every event it counts, and reports every figure
the CLI promises."""

from __future__ import annotations

from harness.benches import ingest as bench


async def test_bench_reports_all_figures_from_stored_events() -> None:
    result = await bench.run(events=2000, draft_events=20_000, concurrency=2)
    figures = bench.as_dict(result)
    for key in ("events_per_s", "baseline_events_per_s", "ratio_vs_baseline", "draft_1m_events_s"):
        assert figures[key] > 0
    assert figures["events_stored"] == figures["events"] == 2000
    assert figures["baseline_events_stored"] == figures["baseline_events"] == 2000  # as many as the service
    assert "events/s" in bench.describe(result) and "2,000 of 2,000 events stored" in bench.describe(result)
