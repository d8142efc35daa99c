"""A gate process SIGKILLed mid-lease: the account never overspends, and it loses at most what the
gate had not reported yet — about one report interval of usage (its unreported lease, which the TTL
gives back)."""

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
    lines: list[tuple[int, int, float]] = []  # (authorized, committed, the gate's clock)
    started = time.monotonic()
    while time.monotonic() - started < 3.0 or not lines or lines[-1][1] == 0:  # steady, and reported at least once
        fields = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().split()
        lines.append((int(fields[1]), int(fields[3]), float(fields[5])))
    proc.send_signal(signal.SIGKILL)  # mid-lease: no report, no close
    await proc.wait()
    for line in (await proc.stdout.read()).decode().splitlines():  # lines written before the kill landed
        fields = line.split()
        if len(fields) == 6:
            lines.append((int(fields[1]), int(fields[3]), float(fields[5])))
    seen_authorized, seen_committed, at = lines[-1]
    recent = next(x for x in reversed(lines) if at - x[2] >= 1.0 or x is lines[0])
    rate = (seen_authorized - recent[0]) / max(1e-3, at - recent[2])  # authorizations/s over the last second
    assert seen_committed > 0 and rate > 0

    before = await _balance(ledger)
    assert int(before.consumed) >= seen_committed  # what the gate reported is posted for good
    await ledger.stub.ReleaseExpiredHolds(pb.ReleaseExpiredHoldsRequest(
        idempotency_key="ttl", as_of=to_timestamp(datetime.now(UTC) + timedelta(seconds=31))), metadata=ledger.md)
    after = await _balance(ledger)
    assert after.held == "0"  # the lease came back on TTL
    assert int(after.consumed) + int(after.available) == GRANT  # nothing overspent or invented
    # Everything authorized was either posted or lost with what the gate had not reported yet (its
    # current lease, and the previous one if that commit was still on the wire at the kill) ...
    lost, unreported = seen_authorized - int(after.consumed), seen_authorized - seen_committed
    assert int(after.consumed) <= seen_authorized + rate * 0.05
    assert lost <= unreported + rate * 0.05, (lost, unreported)
    # ... and the reports kept up: about one interval of usage was unreported (slack for a slipped tick
    # on a busy machine: the current lease, the previous one's commit in flight, one late tick).
    assert unreported <= rate * 3 * REPORT_INTERVAL_S, (unreported, rate)


async def _balance(ledger: Ledger) -> pb.BalanceBucket:
    bal = await ledger.stub.GetBalance(pb.GetBalanceRequest(account_id="hot"), metadata=ledger.md)
    return next(b for b in bal.totals if b.unit == "token")
