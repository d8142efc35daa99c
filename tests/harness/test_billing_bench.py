"""Smoke test of `creditctl bench billing`: a small and a large BillingCycle on the multi-process
stack with Temporal on its database file, the bare baseline, the reconciler; every figure reported."""

from __future__ import annotations

from harness.benches.billing import JSON_KEYS, run_bench


async def test_bench_billing_smoke() -> None:
    result = await run_bench(6, 4, small=2)
    assert all(key in result for key in JSON_KEYS)
    assert (result["finalized"], result["failed"], result["reconcile_violations"]) == (8, 0, 0)
    for key in ("invoices_per_s", "ms_per_invoice_small", "ms_per_invoice_large", "bare_invoices_per_s",
                "ratio_vs_bare"):
        assert result[key] > 0, (key, result)
    # Inline sagas: every event is the cycle's (markers, the hold commit's three events, shared workflow
    # tasks): 9-10 per invoice at 16 in flight, a few more here with 4 and 6 invoices.
    assert result["saga_workflow_events"] == 0 and result["sagas"] == "inline", result
    assert 6 <= result["temporal_events_per_saga"] <= 16, result
    assert result["runs"] == 1 and result["pages"] >= 1
    # CPU per saga measured per part of the stack; the Temporal server and the worker did work.
    assert {"temporal", "worker", "ledger", "invoice", "postgres"} <= set(result["cpu_ms_per_saga"]), result
    assert result["temporal_cpu_ms_per_saga"] == result["cpu_ms_per_saga"]["temporal"] > 0, result
    assert result["cpu_ms_per_saga"]["worker"] > 0, result
