"""`creditctl finance ...` as a person runs it (a process each) against a real ledger server: tables, --json,
--csv (a journal an accounting system imports: balanced per entry), rules from a file, one-line refusals."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from credits.ledger.v1 import ledger_pb2 as pb

from service_runtime import portal_sessions
from tests.finance.test_projector import _debit
from tests.ledger.conftest import Ledger

ROOT = Path(__file__).resolve().parents[2]


async def creditctl(ledger: Ledger, *args: str) -> tuple[int, str, str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")},
           "CREDITS_LEDGER_ADDR": f"127.0.0.1:{ledger.port}", "CREDITS_API_KEY": ledger.key}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "creditctl", "finance", *args, cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert "Traceback" not in err.decode(), err.decode()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_finance_commands(ledger: Ledger, tmp_path: Path) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text('{"free_treatment": {"PROMOTIONAL": "CONTRA_REVENUE"}, "chart": {"REVENUE": "4010"}}')
    code, out, _ = await creditctl(ledger, "rules", "set", str(rules))
    assert code == 0 and "version" in out
    await ledger.account("acme")
    await ledger.grant("acme", "100.00", cost_basis="0.5", key="g1")
    await ledger.grant("acme", "10.00", type=pb.PROMOTIONAL, campaign_id="spring", key="g2")
    await _debit(ledger, "d1", "acme", "30.00", "inv-1")
    month = datetime.now(UTC).strftime("%Y-%m")

    code, out, _ = await creditctl(ledger, "revenue", month, "--json")
    rows = {r["lot_type"]: r for r in json.loads(out)}
    assert rows["PURCHASED"]["recognized"] == "10.00" and rows["PROMOTIONAL"]["contra_revenue"] == "10.00"
    code, out, _ = await creditctl(ledger, "journal", month, "--csv")
    lines = list(csv.DictReader(io.StringIO(out)))
    assert {x["gl_code"] for x in lines} >= {"1100", "2400", "4010", "4900"}
    per_entry: dict[str, Decimal] = {}
    for x in lines:
        per_entry[x["entry_id"]] = per_entry.get(x["entry_id"], Decimal(0)) + Decimal(x["debit"]) - Decimal(x["credit"])
    assert set(per_entry.values()) == {Decimal(0)}
    assert any(x["reference"] == "inv-1" and x["hold_key"] == "debit:d1" for x in lines)
    code, out, _ = await creditctl(ledger, "rollforward", month)
    assert code == 0 and "yes" in out  # balanced
    code, out, _ = await creditctl(ledger, "liability", "--by-customer", "--csv")
    assert code == 0 and "acme" in out
    code, out, _ = await creditctl(ledger, "program", month, "--json")
    assert {r["campaign_id"] for r in json.loads(out)} == {"", "spring"}
    code, out, _ = await creditctl(ledger, "status", "--json")
    assert json.loads(out)["entries_behind"] in ("0", 0)

    code, _, err = await creditctl(ledger, "revenue", "2026-13")
    assert code != 0 and err.strip().count("\n") == 0 and "from_period" in err
    code, _, err = await creditctl(ledger, "close", month)
    assert code != 0 and "FAILED_PRECONDITION" in err and "has not ended" in err


async def test_finance_link(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """`creditctl finance link` prints a finance session's URL; without a portal secret, one clear line."""
    code, _, err = await creditctl(ledger, "link")
    assert code != 0 and "CREDITS_PORTAL_SECRET" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv(portal_sessions.SECRET_ENV, "s" * 40)
    monkeypatch.setenv("CREDITS_PORTAL_URL", "https://books.example.com")
    code, out, _ = await creditctl(ledger, "link", "--ttl", "8h", "-q")
    assert code == 0 and out.startswith("https://books.example.com/s/")
    session = portal_sessions.verify(out.strip().rsplit("/s/", 1)[1], "s" * 40)
    assert session.kind == portal_sessions.FINANCE and session.customer_id == ""
    assert abs(session.expires_at - datetime.now(UTC).timestamp() - 8 * 3600) < 60
    code, _, err = await creditctl(ledger, "link", "--ttl", "soon")
    assert code != 0 and "--ttl" in err
    code, _, err = await creditctl(ledger, "link", "--ttl", "90d")
    assert code != 0 and "ttl_s" in err
