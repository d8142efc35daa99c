"""creditctl grants create|void, balances, statements against a real ledger server (run as a CLI)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from credits.ledger.v1 import ledger_pb2 as lpb

from tests.coordinator.conftest import Stack

ROOT = Path(__file__).resolve().parents[2]


async def creditctl(stack: Stack, *args: str, key: str | None = None) -> tuple[int, str, str]:
    env = {**os.environ, "CREDITS_LEDGER_ADDR": stack.ledger_addr,
           "CREDITS_API_KEY": stack.services.key if key is None else key}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "creditctl.main", *args, cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def json_of(stack: Stack, *args: str) -> Any:
    code, out, err = await creditctl(stack, *args, "--json")
    assert code == 0, err
    return json.loads(out)


async def test_grants_balances_and_statements(stack: Stack) -> None:
    await stack.services.ledger.CreateAccount(lpb.CreateAccountRequest(
        idempotency_key="cli-acct", account_id="acct-cli", name="CLI"), metadata=stack.md)
    lot = await json_of(stack, "grants", "create", "acct-cli", "--amount", "30.00", "--type", "promotional",
                        "--reason", "welcome", "--idempotency-key", "cli-grant-1")
    assert (lot["type"], lot["amount"], lot["account_id"]) == ("PROMOTIONAL", "30.00", "acct-cli")
    # The same key again: the same lot, not a second grant.
    again = await json_of(stack, "grants", "create", "acct-cli", "--amount", "30.00", "--type", "promotional",
                          "--reason", "welcome", "--idempotency-key", "cli-grant-1")
    assert again["lot_id"] == lot["lot_id"]
    second = await json_of(stack, "grants", "create", "acct-cli", "--amount", "5.00", "--type", "PURCHASED")
    voided = await json_of(stack, "grants", "void", second["lot_id"], "--reason", "mistake")
    assert voided["voided_amount"] == "5.00"
    bal = await json_of(stack, "balances", "acct-cli")
    [usd] = bal["totals"]
    assert (usd["unit"], usd["available"], usd["granted"], usd["voided"]) == ("USD", "30.00", "35.00", "5.00")
    assert {b["type"] for b in bal["by_type"]} == {"PROMOTIONAL", "PURCHASED"}
    code, out, _ = await creditctl(stack, "statements", "acct-cli", "--entries", "--json")  # JSON lines
    assert code == 0
    assert [(e["kind"], e["amount"]) for e in map(json.loads, out.splitlines())] == [
        ("GRANT", "30.00"), ("GRANT", "5.00"), ("VOID", "5.00")]
    code, out, _ = await creditctl(stack, "statements", "acct-cli", "--json")  # the statement's lines, then SUMMARY
    assert [(r["movement"], r["amount"], r["balance"]) for r in map(json.loads, out.splitlines())] == [
        ("GRANT", "30.00", "30.00"), ("GRANT", "5.00", "35.00"), ("VOID", "-5.00", "30.00"), ("", "30.00", "30.00")]
    # Tables for people.
    code, out, _ = await creditctl(stack, "balances", "acct-cli")
    assert code == 0 and "available" in out and "30.00" in out and "PROMOTIONAL" in out
    code, out, _ = await creditctl(stack, "statements", "acct-cli")
    assert code == 0 and "3 movements of 3 entries" in out and "GRANT" in out and "VOID" in out
    # Errors: a clear status on stderr and a non-zero exit.
    code, _, err = await creditctl(stack, "grants", "create", "acct-cli", "--amount", "-1")
    assert code == 2 and "INVALID_ARGUMENT" in err and "amount" in err
    code, _, err = await creditctl(stack, "balances", "acct-cli", key="wrong")
    assert code == 2 and "UNAUTHENTICATED" in err
