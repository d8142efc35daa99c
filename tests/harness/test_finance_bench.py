"""Smoke test of `creditctl bench finance`: every phase runs on a small ledger and the books are exact."""

from __future__ import annotations

import json

from harness.benches.finance import Options, describe, run


def test_bench_finance_smoke() -> None:
    report = run(Options(entries=3_000, customers=10, batch_size=500, batch_concurrency=2, lag_seconds=1.5,
                         lag_concurrency=4))
    figures = json.loads(json.dumps(report.figures()))
    for key in ("report_s", "baseline_report_s", "projection_entries_per_s", "projection_lag_p99_s",
                "baseline_projection_entries_per_s", "prefix_projection_entries_per_s",
                "prefix_service_projection_entries_per_s"):
        assert figures[key] > 0, (key, figures)
    assert figures["entries"] >= 3_000
    assert figures["mismatch_minor"] == 0 and figures["violations"] == [], describe(report)
    assert figures["lag_debits"] > 0
    # [this process, postgres] per entry
    for key in ("baseline_projection_cpu_us", "prefix_projection_cpu_us", "prefix_service_projection_cpu_us"):
        assert len(figures[key]) == 2 and all(x > 0 for x in figures[key]), (key, figures)
    assert "projection" in describe(report)
