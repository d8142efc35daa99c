"""`creditctl statements` against a real ledger, run as a process: the statement table, the raw
journal, and exports to stdout and to a file (CSV and JSON lines) that reconcile with GetStatement."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sys
from pathlib import Path

from credits.ledger.v1 import ledger_pb2 as pb

from tests.ledger.conftest import Ledger
from tests.ledger.requests_and_checks import charge

ROOT = Path(__file__).resolve().parents[2]


async def _cli(ledger: Ledger, *args: str) -> tuple[int, str, str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")},
           "CREDITS_LEDGER_ADDR": f"127.0.0.1:{ledger.port}", "CREDITS_API_KEY": ledger.key}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "creditctl", *args, cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert "Traceback" not in err.decode(), err.decode()
    return proc.returncode or 0, out.decode(), err.decode()


async def _history(ledger: Ledger) -> None:
    await ledger.account("john")
    await ledger.grant("john", "50.00", type=pb.PROMOTIONAL, key="g1")
    for i in range(5):
        await ledger.stub.DebitCredits(pb.DebitCreditsRequest(
            idempotency_key=f"d{i}", account_id="john", unit="USD", reference=f"req-{i}",
            charges=[charge("1.25", charge_id=f"c{i}", name="gpt")]), metadata=ledger.md)


async def test_statement_table_entries_and_exports(ledger: Ledger, tmp_path: Path) -> None:
    await _history(ledger)
    code, out, _ = await _cli(ledger, "statements", "john")
    assert code == 0
    assert "opening balance" in out and "43.75" in out and "CONSUMPTION" in out and "PROMOTIONAL" in out
    code, out, _ = await _cli(ledger, "statements", "john", "--entries", "--csv")
    assert code == 0 and out.startswith("entry_id,")
    code, out, _ = await _cli(ledger, "statements", "john", "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["movement"] for r in rows] == ["GRANT"] + ["CONSUMPTION"] * 5 + [""]
    assert rows[-1]["row"] == "SUMMARY" and rows[-1]["balance"] == "43.75"
    target = tmp_path / "john.jsonl"
    code, out, err = await _cli(ledger, "statements", "john", "--json", "--output", str(target))
    assert code == 0 and out == "" and f"to {target}" in err
    lines = [json.loads(x) for x in target.read_text().splitlines()]
    assert lines[-1]["balance"] == "43.75" and lines[2]["items"] == "c1(gpt)=1.25"
    code, _, err = await _cli(ledger, "statements", "nobody")
    assert code != 0 and "NOT_FOUND" in err and "account_id" in err


async def test_watch_prints_the_snapshot_and_changes(ledger: Ledger) -> None:
    await _history(ledger)
    task = asyncio.ensure_future(_cli(ledger, "watch", "john", "--count", "2", "--json"))
    await asyncio.sleep(3)  # the process starts and receives its snapshot
    await ledger.stub.DebitCredits(pb.DebitCreditsRequest(
        idempotency_key="live", account_id="john", unit="USD", charges=[charge("0.75")]), metadata=ledger.md)
    code, out, _ = await asyncio.wait_for(task, 30)
    first, second = (json.loads(x) for x in out.splitlines())
    assert code == 0 and first["type"] == "SNAPSHOT" and first["balances"]["USD"]["available"] == "43.75"
    assert second["type"] == "UPDATE" and second["sequence"] == first["sequence"] + 1
    assert second["balances"]["USD"]["available"] == "43.00"
    code, out, _ = await _cli(ledger, "watch", "john", "--after", "1", "--count", "1")
    assert code == 0 and out.startswith("#2 ") and "available 48.75" in out
