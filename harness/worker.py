"""The harness worker: the coordinator's worker (`coordinator.worker`, built by the same function)
plus the harness's bare benchmark workflow and, when a fault plan is given, the fault interceptor on
its channels to the ledger and the invoice service.

`python -m harness.worker` takes the environment of `python -m coordinator.worker`, plus
  CREDITS_FAULTS      a fault plan "step:phase:kind[:times],..." (harness.faults.plans)
  CREDITS_FAULT_DIR   where a blocked call creates `reached` and waits for `release`
The saga benchmark, the chaos campaign and the kill-the-worker test run this worker.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

from temporalio.client import Client
from temporalio.worker import Worker

from coordinator import worker as coordinator_worker
from coordinator.keys import KeyStore
from coordinator.worker import WorkerConfig, WorkerExtensions
from harness.bare import BareWorkflow, BenchActivities
from harness.faults import FaultInterceptor, FaultPlan


def extensions(faults: FaultPlan | None = None) -> WorkerExtensions:
    """The bare workflow and its activity, and the fault interceptor if there is a plan."""
    interceptors = [FaultInterceptor(faults)] if faults is not None else []
    return WorkerExtensions(channel_interceptors=interceptors, workflows=[BareWorkflow],
                            activities=[BenchActivities().noop])


def running_harness_worker(client: Client, config: WorkerConfig, keys: KeyStore,
                           faults: FaultPlan | None = None) -> AbstractAsyncContextManager[Worker]:
    """`coordinator.worker.running_worker` with the harness's extensions."""
    return coordinator_worker.running_worker(client, config, keys, extensions(faults))


def main() -> None:
    plan = FaultPlan.from_env()
    coordinator_worker.main(extensions(plan if plan.faults else None))  # no plan: no interceptor to pay for


if __name__ == "__main__":
    main()
