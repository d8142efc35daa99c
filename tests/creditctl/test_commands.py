"""The product's commands against real ledger and invoice servers, run as a person runs them (a process
each): what the README tour does not reach — hierarchies and transfers, holds by hand, the consumption
policy, units and rates, the two-person rule, lots, a usage file with rejections, settlements — and the
output forms (--json, --csv, -q) and one-line refusals."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

from tests.coordinator.conftest import TENANT, Stack
from tests.tenancy import add_tenant_key

ROOT = Path(__file__).resolve().parents[2]


class Cli:
    def __init__(self, stack: Stack, key: str = "") -> None:
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")},
                    "CREDITS_LEDGER_ADDR": stack.ledger_addr, "CREDITS_INVOICE_ADDR": stack.invoice_addr,
                    "CREDITS_API_KEY": key or stack.services.key}

    async def run(self, *args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "creditctl", *args, cwd=ROOT, env=self.env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert "Traceback" not in err.decode(), err.decode()
        return proc.returncode or 0, out.decode(), err.decode()

    async def ok(self, *args: str) -> str:
        code, out, err = await self.run(*args)
        assert code == 0, f"{args}: {err}"
        assert "\x1b[" not in out  # not a terminal: plain text, no colour codes
        return out

    async def json(self, *args: str) -> Any:
        return json.loads(await self.ok(*args, "--json"))

    async def refused(self, *args: str) -> str:
        code, out, err = await self.run(*args)
        lines = err.strip().splitlines()
        assert code != 0 and out == "" and len(lines) == 1, (code, out, err)
        return lines[0]


async def test_hierarchy_transfers_and_limits(stack: Stack) -> None:
    cli = Cli(stack)
    assert (await cli.ok("accounts", "create", "org", "--name", "Org", "-q")).strip() == "org"
    child = await cli.json("accounts", "create", "team", "--parent", "org")
    assert child["parent_account_id"] == "org"
    assert (await cli.json("accounts", "show", "team"))["name"] == "team"
    assert (await cli.ok("accounts", "children", "org", "-q")).split() == ["team"]
    assert "team" in (await cli.ok("accounts", "children", "org")) and "org" in await cli.ok("accounts", "list")
    assert [r["account_id"] for r in csv.DictReader(io.StringIO(await cli.ok("accounts", "list", "--csv")))] == [
        "org", "team"]
    await cli.ok("grants", "create", "org", "--amount", "100.00", "--type", "purchased", "--cost-basis", "1")
    moved = await cli.json("transfers", "create", "org", "team", "--amount", "30.00")
    [leg] = moved["legs"]
    assert leg["amount"] == "30.00"
    team_lots = await cli.json("lots", "list", "team")
    assert [(lot["lot_id"], lot["origin_lot_id"], lot["balance"]["available"]) for lot in team_lots] == [
        (leg["destination_lot_id"], leg["source_lot_id"], "30.00")]
    assert (await cli.json("transfers", "reverse", moved["transfer_id"]))["reversed"] is True
    await cli.ok("transfers", "limits", "org", "--max-per-transfer", "10.00")
    line = await cli.refused("transfers", "create", "org", "team", "--amount", "20.00")
    assert line.startswith("FAILED_PRECONDITION: amount: ") and "per-transfer limit" in line
    assert (await cli.refused("accounts", "show", "nobody")).startswith("NOT_FOUND: ")


async def test_holds_by_hand_explain_and_policy(stack: Stack) -> None:
    cli = Cli(stack)
    await cli.ok("accounts", "create", "rt")
    lot = await cli.json("grants", "create", "rt", "--amount", "20.00", "--type", "purchased")
    await cli.ok("grants", "create", "rt", "--amount", "5.00", "--type", "promotional", "--expires-at", "+7d")
    policy = await cli.json("policy", "set", "EXPIRY_SOONEST", "PRIORITY_ASC", "--account", "rt")
    assert policy["sort_keys"] == ["EXPIRY_SOONEST", "PRIORITY_ASC"] and policy["account_id"] == "rt"
    assert (await cli.json("policy", "get", "rt"))["version"] == policy["version"]
    held = await cli.json("holds", "reserve", "h-1", "--account", "rt", "--amount", "8.00")
    assert (held["status"], held["reserved"]) == ("PENDING", "8.00")
    listed = list(csv.DictReader(io.StringIO(await cli.ok("holds", "list", "--account", "rt", "--csv"))))
    assert [(r["hold_key"], r["status"]) for r in listed] == [("h-1", "PENDING")]
    committed = await cli.json("holds", "commit", "h-1", "--amount", "6.00")
    assert (committed["status"], committed["posted"], committed["released"]) == ("COMMITTED", "6.00", "2.00")
    explained = await cli.json("explain", "h-1")
    first = explained["charges"][0]["lots"][0]
    assert first["lot_type"] == "PROMOTIONAL" and first["allocated"] == "5.00"  # soonest expiry first
    assert "eligible" in await cli.ok("explain", "h-1")
    reversed_ = await cli.json("holds", "reverse", "h-1")
    assert sum(float(a["amount"]) for a in reversed_["reinstated"]) == 6.0
    await cli.ok("holds", "reserve", "h-2", "--account", "rt", "--amount", "1.00")
    assert (await cli.json("holds", "release", "h-2"))["status"] == "RELEASED"
    debit = await cli.json("holds", "debit", "--account", "rt", "--amount", "1.00")
    assert debit["status"] == "COMMITTED"
    assert (await cli.json("holds", "show", "h-2"))["released"] == "1.00"
    assert (await cli.json("lots", "show", lot["lot_id"]))["balance"]["consumed"] == "1.00"
    voided = await cli.json("lots", "void", lot["lot_id"], "--reason", "test")
    assert voided["voided_amount"] == "20.00"  # its 1.00 of h-1 came back; the debit took the promotion
    timeline = await cli.ok("lots", "list", "rt")
    assert "expiry timeline" in timeline and "in 7d" in timeline and "never" not in timeline.split("timeline")[1]
    assert await cli.json("lots", "boundaries", "rt", "--from", "-1d", "--to", "+30d") != []
    assert (await cli.json("ledger", "verify", "--api"))["(tenant of CREDITS_API_KEY)"]["ok"] is True
    assert "0 lot(s) expired" in await cli.ok("lots", "expire", "--account", "rt")
    assert (await cli.json("holds", "release-expired")) == []


async def test_units_rates_and_the_two_person_rule(stack: Stack) -> None:
    cli = Cli(stack)
    await cli.ok("units", "define", "credit3", "--scale", "3")
    assert "credit3" in (await cli.ok("units", "list", "-q")).split()
    await cli.ok("rates", "publish", "credit3", "USD", "0.01", "--effective-at", "-1d")
    [rate] = list(csv.DictReader(io.StringIO(await cli.ok("rates", "list", "--unit", "credit3", "--csv"))))
    assert (rate["rate"], rate["version"]) == ("0.01", "1")
    await cli.ok("accounts", "create", "big")
    await cli.ok("grants", "set-limits", "USD", "--max-per-grant", "100", "--max-per-day", "500",
                 "--approval-threshold", "10")
    assert (await cli.json("grants", "limits", "USD"))["approval_threshold"] == "10.00"
    asked = await cli.json("grants", "create", "big", "--amount", "20.00", "--type", "purchased")
    assert asked["status"] == "PENDING_APPROVAL" and asked["limit_exceeded"] == "approval_threshold"
    request_id = asked["grant_request_id"]
    assert request_id in (await cli.ok("grants", "requests", "--status", "PENDING_APPROVAL", "-q")).split()
    line = await cli.refused("grants", "approve", request_id)
    assert line.startswith("PERMISSION_DENIED: ")
    other = Cli(stack, await add_tenant_key([stack.ledger_dsn, stack.invoice_dsn], TENANT, "finance", "bob@x"))
    approved = await other.json("grants", "approve", request_id, "--reason", "ok")
    assert approved["status"] == "APPROVED" and approved["lot_id"]
    again = await cli.json("grants", "create", "big", "--amount", "30.00", "--type", "purchased")
    rejected = await other.json("grants", "reject", again["grant_request_id"], "--reason", "no")
    assert (rejected["status"], rejected["account_id"]) == ("REJECTED", "big")
    assert (await cli.json("grants", "requests", request_id))["status"] == "APPROVED"


async def test_catalog_usage_file_drafts_and_settlements(stack: Stack, tmp_path: Path) -> None:
    cli = Cli(stack)
    await cli.ok("accounts", "create", "acct-u")
    await cli.ok("customers", "create", "cu", "--account", "acct-u", "--name", "C U")
    assert (await cli.json("customers", "show", "cu"))["ledger_account_id"] == "acct-u"
    await cli.ok("meters", "create", "seats", "--aggregation", "max")
    assert (await cli.json("meters", "show", "seats"))["aggregation"] == "MAX"
    plan = await cli.ok("plans", "create", "tiered", "--usage", "seats=graduated:10@1.00,@0.50", "--fee",
                        "base=5.00", "--interval", "monthly")
    assert "graduated:10@1,@0.5" in plan and "5 per period" in plan  # as the service keeps them
    assert (await cli.json("plans", "show", "tiered"))["usage_charges"][0]["price"]["model"] == "GRADUATED"
    line = await cli.refused("plans", "create", "bad", "--usage", "seats=0.5")
    assert "--usage" in line and "per_unit:" in line
    await cli.ok("subscriptions", "create", "su", "--customer", "cu", "--plan", "tiered", "--anchor", "-1d")
    assert (await cli.json("subscriptions", "show", "su"))["plan_id"] == "tiered"
    events = tmp_path / "usage.jsonl"
    events.write_text("\n".join([
        json.dumps({"event_id": "u1", "customer_id": "cu", "meter_code": "seats", "quantity": "12",
                    "timestamp": "-2h"}),
        json.dumps({"event_id": "u1", "customer_id": "cu", "meter_code": "seats", "quantity": "12",
                    "timestamp": "-2h"}),
        json.dumps({"event_id": "u2", "customer_id": "cu", "meter_code": "nope", "quantity": "1",
                    "timestamp": "-1h"}),
        "{not json",
        json.dumps({"event_id": "u3", "meter_code": "seats"}),
        json.dumps({"event_id": "u4", "customer_id": "cu", "meter_code": "seats", "quantity": "3",
                    "timestamp": "-1h", "properties": {"region": "eu"}}),
        json.dumps({"event_id": "u7", "customer_id": "cu", "meter_code": "seats", "quantity": "3"}),
    ]) + "\n")
    code, out, err = await cli.run("usage", "ingest-events", str(events), "--batch-size", "10", "--json")
    summary = json.loads(out)
    assert code == 1, err
    assert (summary["read"], summary["accepted"], summary["duplicates"]) == (7, 2, 1)
    reasons = {r["line"]: r["reason"] for r in summary["rejected"]}
    assert set(reasons) == {3, 4, 5, 7}
    assert reasons[7] == "INVALID_ARGUMENT: timestamp: is required"  # the line, not its place in a batch
    assert reasons[3] == "NOT_FOUND: meter_code: no meter 'nope'"
    assert "not JSON" in reasons[4] and "customer_id" in reasons[5]
    one = await cli.json("usage", "ingest-event", "--event-id", "u5", "--customer", "cu", "--meter", "seats",
                         "--quantity", "1", "--property", "region=us")
    assert one["status"] == "ACCEPTED"
    bad = await cli.refused("usage", "ingest-event", "--event-id", "u6", "--customer", "cu", "--meter", "seats",
                            "--quantity", "many")
    assert bad.startswith("INVALID_ARGUMENT: ") and "quantity" in bad
    draft = await cli.json("drafts", "create", "su", "--containing", "now")
    assert (draft["status"], draft["subtotal"]) == ("DRAFT", "16.00")  # 10 x 1.00 + 2 x 0.50 + 5.00 fee
    again = (await cli.ok("drafts", "create", "su", "--containing", "-1h", "-q")).strip()
    assert again == draft["invoice_id"]  # the same period, the same draft
    line = await cli.refused("drafts", "create", "su", "--period-start", "now")
    assert "--period-start" in line and "not a period start" in line
    shown = await cli.json("invoices", "show", draft["invoice_id"])
    assert shown["line_items"][0]["quantity"] == "12"
    rendered = json.loads(await cli.ok("invoices", "render", draft["invoice_id"], "--format", "json"))
    assert rendered
    assert draft["invoice_id"] in (await cli.ok("invoices", "list", "--status", "DRAFT", "-q")).split()
    assert (await cli.json("subscriptions", "due")) == []
    settlements = list(csv.DictReader(io.StringIO(await cli.ok("settlements", "list", "--csv"))))
    assert "acct-u" in {s["ledger_account_id"] for s in settlements}
    assert (await cli.json("settlements", "show", "acct-u"))["account_id"] == "acct-u"
