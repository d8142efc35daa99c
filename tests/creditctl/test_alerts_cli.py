"""creditctl alerts … and webhooks … against a real ledger server, each command a process as a person runs it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from tests.ledger.alert_helpers import debit
from tests.ledger.conftest import Ledger

ROOT = Path(__file__).resolve().parents[2]


async def _run(ledger: Ledger, *args: str) -> tuple[int, str, str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")},
           "CREDITS_LEDGER_ADDR": f"127.0.0.1:{ledger.port}", "CREDITS_API_KEY": ledger.key}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "creditctl", *args, cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert "Traceback" not in err.decode(), err.decode()
    return proc.returncode or 0, out.decode(), err.decode()


async def _ok(ledger: Ledger, *args: str) -> str:
    code, out, err = await _run(ledger, *args)
    assert code == 0, f"{args}: {err}"
    return out


async def test_alerts_and_webhooks_commands(ledger: Ledger) -> None:
    await ledger.account("acme")
    made = json.loads(await _ok(ledger, "alerts", "create", "low", "--kind", "low-balance", "--unit", "USD",
                                "--account", "acme", "--threshold", "10", "--threshold", "5", "--json"))
    assert made["thresholds"] == ["10.00", "5.00"] and made["kind"] == "LOW_BALANCE"
    assert (await _ok(ledger, "alerts", "list", "-q")).split() == ["low"]
    code, _, err = await _run(ledger, "alerts", "create", "bad", "--kind", "usage-spike", "--unit", "USD",
                              "--window", "soon")
    assert code == 2 and "--window" in err and len(err.strip().splitlines()) == 1
    code, _, err = await _run(ledger, "alerts", "create", "bad", "--kind", "low-balance", "--unit", "USD")
    assert code != 0 and "INVALID_ARGUMENT" in err and "rule.thresholds" in err
    await ledger.grant("acme", "20.00", key="g1")
    await debit(ledger, "acme", "12.00", "d1")
    events = json.loads(await _ok(ledger, "alerts", "events", "--account", "acme", "--json"))
    assert [e["event_id"] for e in events] == ["low/acme/below:1000/1"]
    hook = json.loads(await _ok(ledger, "webhooks", "create", "hook", "http://127.0.0.1:9/hooks",
                                "--allow-private-targets", "--event-type", "balance.low", "--json"))
    assert hook["secret"].startswith("whsec_")
    code, _, err = await _run(ledger, "webhooks", "create", "evil", "http://169.254.169.254/latest")
    assert code != 0 and "INVALID_ARGUMENT" in err and "url" in err
    listed = await _ok(ledger, "webhooks", "list", "--csv")
    assert "hook" in listed and "whsec_" not in listed
    rotated = json.loads(await _ok(ledger, "webhooks", "rotate", "hook", "--overlap", "1h", "--json"))
    assert rotated["active_secrets"] == 2 and rotated["secret"] != hook["secret"]
    await debit(ledger, "acme", "4.00", "d2")  # below 5: a second event, delivered to the hook's log
    deliveries = json.loads(await _ok(ledger, "webhooks", "deliveries", "hook", "--json"))
    assert [d["status"] for d in deliveries] == ["PENDING"]  # no delivery loop runs here
    code, _, err = await _run(ledger, "webhooks", "redeliver", deliveries[0]["delivery_id"])
    assert code != 0 and "FAILED_PRECONDITION" in err  # still pending: retried on its own
    assert json.loads(await _ok(ledger, "webhooks", "attempts", "hook", "--json")) == []  # no POST made yet
    code, _, err = await _run(ledger, "webhooks", "attempts", "hook", "--delivery", "e1@other")
    assert code != 0 and "INVALID_ARGUMENT" in err and "delivery_id" in err and "Traceback" not in err
    await _ok(ledger, "alerts", "disable", "low")
    assert json.loads(await _ok(ledger, "alerts", "list", "--json"))[0]["enabled"] is False


async def test_topups_commands(ledger: Ledger) -> None:
    await ledger.account("acme")
    made = json.loads(await _ok(ledger, "topups", "set", "acme", "--unit", "USD", "--threshold", "10",
                                "--amount", "50", "--payment-method", "pm_x", "--max-daily", "100", "--json"))
    assert made["threshold"] == "10.00" and made["enabled"] is True and made["max_daily"] == "100.00"
    shown = json.loads(await _ok(ledger, "topups", "show", "acme", "--unit", "USD", "--json"))
    assert shown["payment_method"] == "pm_x"
    await ledger.grant("acme", "20.00", key="g1")
    await debit(ledger, "acme", "15.00", "d1")  # a crossing: requested (no top-up saga runs here)
    listed = json.loads(await _ok(ledger, "topups", "list", "acme", "--json"))
    assert [(t["topup_id"], t["status"], t["amount"]) for t in listed] == [("topup/acme/USD/1", "REQUESTED", "50.00")]
    code, _, err = await _run(ledger, "topups", "set", "acme", "--unit", "USD", "--threshold", "10",
                              "--payment-method", "pm_x")
    assert code != 0 and "INVALID_ARGUMENT" in err and "policy.amount" in err
