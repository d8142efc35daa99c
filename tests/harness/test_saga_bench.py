"""Smoke test of `creditctl bench saga`: the real saga and the bare baseline (registered only by the
harness worker) both run on the multi-process stack, and every figure is reported."""

from __future__ import annotations

from coordinator.workflows import SAGA_ACTIVITIES, WORKFLOWS
from harness.bare import BareWorkflow
from harness.benches.saga import run_bench


async def test_bench_saga_smoke() -> None:
    result = await run_bench(8, 4, rounds=1)
    assert (result["invoices"], result["concurrency"], result["rounds"]) == (8, 4, 1)
    assert result["activities_per_workflow"] == SAGA_ACTIVITIES
    for key in ("invoices_per_s", "p50_ms", "p99_ms", "bare_workflows_per_s", "bare_p50_ms", "ratio_vs_bare"):
        assert result[key] > 0, (key, result)
    assert len(result["round_ratios"]) == 1


def test_the_bare_workflow_is_not_a_production_workflow() -> None:
    assert BareWorkflow not in WORKFLOWS
    assert "BenchBare" not in {getattr(w, "__temporal_workflow_definition").name for w in WORKFLOWS}
