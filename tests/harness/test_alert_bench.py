"""The alerts benchmark runs end to end (a few accounts): every model event received once, nothing extra."""

from __future__ import annotations

from harness.benches import alerts as bench


async def test_alert_bench_is_exact_on_a_small_run() -> None:
    result = await bench.run(accounts=10, concurrency=8)
    figures = result.figures()
    assert figures["crossings"] == figures["events"] == 40
    assert figures["duplicates"] == figures["missed"] == 0
    assert figures["alert_p99_ms"] > 0 and figures["debits_per_s"] > 0 and figures["baseline_debits_per_s"] > 0
    assert "0 duplicates, 0 missed" in bench.describe(result)
