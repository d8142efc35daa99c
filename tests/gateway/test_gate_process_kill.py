"""A gate process SIGKILLed mid-lease: the account never overspends, and it loses at most the usage
of one report interval (the lease the gate had not reported yet, given back by its TTL)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from credits.ledger.v1 import ledger_pb2 as pb

from service_runtime.proto_time import to_timestamp
from tests.ledger.conftest import Ledger

ROOT = Path(__file__).resolve().parents[2]
GRANT = 10**9
REPORT_INTERVAL_S = 0.5


async def test_a_killed_gate_process_overspends_nothing_and_loses_at_most_one_interval(ledger: Ledger) -> None:
    await ledger.account("hot")
    await ledger.grant("hot", str(GRANT), unit="token")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "harness.benches.gate", "run", "--addr", f"127.0.0.1:{ledger.port}", "--key", ledger.key,
        "--account", "hot", "--mode", "forever", "--report-interval", str(REPORT_INTERVAL_S), cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    started, last = time.monotonic(), ""
    while time.monotonic() - started < 3.0:  # a few report intervals of steady authorizations
        last = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip() or last
    proc.send_signal(signal.SIGKILL)  # mid-lease: no report, no close
    await proc.wait()
    tail = (await proc.stdout.read()).decode().split()
    if len(tail) >= 4:
        last = " ".join(tail[-4:])
    _, authorized, _, committed = last.split()
    seen_authorized, seen_committed = int(authorized), int(committed)
    rate = seen_authorized / (time.monotonic() - started)
    assert seen_committed > 0 and rate > 0

    before = await _balance(ledger)
    assert int(before.consumed) >= seen_committed  # what the gate reported is posted for good
    await ledger.stub.ReleaseExpiredHolds(pb.ReleaseExpiredHoldsRequest(
        idempotency_key="ttl", as_of=to_timestamp(datetime.now(UTC) + timedelta(seconds=31))), metadata=ledger.md)
    after = await _balance(ledger)
    assert after.held == "0"  # the lease came back on TTL
    assert int(after.consumed) + int(after.available) == GRANT  # nothing overspent or invented
    # Everything authorized was either posted or lost with the unreported lease; the loss is at most
    # one report interval of authorizations (plus the 20 ms between progress lines).
    lost = seen_authorized - int(after.consumed)
    assert int(after.consumed) <= seen_authorized + rate * 0.05
    assert lost <= rate * (REPORT_INTERVAL_S + 0.25), (lost, rate)


async def _balance(ledger: Ledger) -> pb.BalanceBucket:
    bal = await ledger.stub.GetBalance(pb.GetBalanceRequest(account_id="hot"), metadata=ledger.md)
    return next(b for b in bal.totals if b.unit == "token")
