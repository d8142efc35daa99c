"""Smoke test of `creditctl bench ledger`: every phase runs briefly and the books balance."""

from __future__ import annotations

import json

from harness.benches.ledger import JSON_KEYS, BenchOptions, format_report, run_bench


def test_bench_ledger_smoke() -> None:
    report = run_bench(BenchOptions(seconds=1.0, warmup_s=0.2, concurrency=16, batch_size=200,
                                    batch_concurrency=2, verify_journal=True,
                                    as_of_entries=20_000, as_of_small=2_000, as_of_calls=20))
    figures = json.loads(json.dumps(report.figures()))
    assert list(figures) == list(JSON_KEYS)
    for key, value in figures.items():
        assert isinstance(value, int | float) and value > 0, (key, value)
    assert report.errors == 0, format_report(report)
    # Every debit the service acknowledged was consumed exactly once, and nothing else was.
    assert report.ledger_acknowledged > 0
    assert report.ledger_consumed == report.ledger_acknowledged
    assert report.baseline_consumed == report.baseline_acknowledged > 0
    assert report.journal_ok is True
    assert report.consistent
    text = format_report(report)
    assert "DebitCredits" in text
    # the latency bar of #17 is shown with its target: the debit's p99 against the echo's, same run
    assert f"echo {figures['echo_p99_ms']:.2f} ms = {figures['p99_vs_echo_p99']:.2f}x" in text
