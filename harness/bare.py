"""The bare-workflow baseline of the saga benchmark: as many sequential no-op activities as a saga runs.

Registered only by the harness worker (`harness.worker`), never by the production worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio import activity, workflow


@dataclass
class BenchInput:
    activities: int = 6


class BenchActivities:
    """The no-op activity of the bare-workflow baseline of `creditctl bench saga`."""

    @activity.defn(name="bench.noop")
    async def noop(self, step: int) -> int:
        return step


@workflow.defn(name="BenchBare")
class BareWorkflow:
    """The baseline of `creditctl bench saga`: the same number of sequential no-op activities."""

    @workflow.run
    async def run(self, inp: BenchInput) -> int:
        total = 0
        for step in range(inp.activities):
            total += await workflow.execute_activity_method(
                BenchActivities.noop, step, start_to_close_timeout=timedelta(seconds=10))
        return total
