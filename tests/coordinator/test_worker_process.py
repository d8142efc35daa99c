"""The worker as its own OS process (the harness worker: the coordinator's, plus a fault plan from the
environment), SIGKILLed while an activity is blocked mid-saga."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from credits.ledger.v1 import ledger_pb2 as lpb

from coordinator.messages import FinalizeInvoiceResult, SagaTimeouts
from stack.scenario import seed_customer
from tests.coordinator.conftest import TENANT, Stack, eventually

ROOT = Path(__file__).resolve().parents[2]
# A killed worker never reports its activity: the server retries it after start-to-close.
KILL_TIMEOUTS = SagaTimeouts(step_start_to_close_s=2, prepare_phase_step_limit_s=60, retry_initial_s=0.05,
                             retry_max_s=0.5)


@contextmanager
def worker_process(stack: Stack, log: Path, faults: str = "", fault_dir: Path | None = None) -> Iterator[
        subprocess.Popen[bytes]]:
    env = {**os.environ, "CREDITS_TEMPORAL_ADDR": stack.client.service_client.config.target_host,
           "CREDITS_LEDGER_ADDR": stack.ledger_addr, "CREDITS_INVOICE_ADDR": stack.invoice_addr,
           "CREDITS_TASK_QUEUE": stack.task_queue,
           "CREDITS_COORDINATOR_KEYS": json.dumps({TENANT: stack.coordinator_key}),
           "CREDITS_FAULTS": faults, "CREDITS_FAULT_DIR": str(fault_dir or "")}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "harness.worker"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


async def _exists(path: Path) -> bool:
    return await asyncio.to_thread(path.exists)


async def test_worker_process_sigkilled_mid_saga_resumes_on_a_new_process(stack: Stack, tmp_path: Path) -> None:
    invoice_id = await seed_customer(stack.services)
    signals = tmp_path / "signals"
    signals.mkdir()
    log = tmp_path / "workers.log"
    # The ledger reserves the credits, then the activity blocks before the coordinator hears back.
    with worker_process(stack, log, "reserve_credits:after:block", signals) as first:
        handle = await stack.start_finalize(invoice_id, KILL_TIMEOUTS)
        await eventually(lambda: _exists(signals / "reached"), bool, timeout_s=60)
        assert f"pid={first.pid}" in (signals / "reached").read_text()
        [hold] = await stack.holds(invoice_id)
        assert hold.status == lpb.PENDING  # reserved on the ledger; the saga has not heard yet
        os.kill(first.pid, signal.SIGKILL)
        assert await asyncio.to_thread(first.wait, 10) == -signal.SIGKILL
    with worker_process(stack, log):  # no faults: a fresh process picks the saga up
        result = await asyncio.wait_for(handle.result(), 90)
    assert isinstance(result, FinalizeInvoiceResult)
    assert (result.outcome, result.credits_applied, result.amount_due) == ("finalized", "50.00", "50.00")
    assert not (signals / "release").exists()  # nobody released the killed activity: it died with its process
    assert await stack.assert_both_or_neither(invoice_id, "acct-john-wick") == "finalized"
    assert len(await stack.holds(invoice_id)) == 1  # the retried reservation found the same hold
    history = await handle.fetch_history()
    retried = [e for e in history.events if e.HasField("activity_task_started_event_attributes")
               and e.activity_task_started_event_attributes.attempt > 1]
    assert retried, "the reservation should have been retried after the kill"
