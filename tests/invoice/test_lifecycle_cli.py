"""creditctl for subscriptions that change, against the real server: plans version, subscriptions
create --trial-end/--calendar/--price, update, migrate, cancel, and drafts create on the schedule."""

from __future__ import annotations

import asyncio
import json

import pytest

from creditctl.main import main
from tests.invoice.conftest import InvoiceEnv


async def _run(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert await asyncio.to_thread(main, list(args)) == 0
    return capsys.readouterr().out


async def test_lifecycle_commands(env: InvoiceEnv, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CREDITS_INVOICE_ADDR", f"127.0.0.1:{env.port}")
    monkeypatch.setenv("CREDITS_API_KEY", env.key)
    await _run(capsys, "customers", "create", "ann", "--account", "acct-ann")
    await _run(capsys, "plans", "create", "team", "--fee", "platform=30.00", "--license", "seat=10.00")
    shown = json.loads(await _run(capsys, "plans", "version", "team", "--fee", "platform=60.00",
                                  "--license", "seat=10.00", "--json"))
    assert shown["version"] == 2
    v1 = json.loads(await _run(capsys, "plans", "show", "team", "--version", "1", "--json"))
    assert v1["fixed_fees"][0]["amount"] == "30"
    # on v2 (the latest) from a 2-day trial, calendar-aligned, with this customer's seat price 8.00
    sub = json.loads(await _run(capsys, "subscriptions", "create", "sub-ann", "--customer", "ann", "--plan", "team",
                                "--anchor", "2026-09-01", "--trial-end", "2026-09-03", "--calendar",
                                "--license", "seat=3", "--price", "seat=8.00", "--json"))
    assert (sub["plan_version"], sub["calendar_aligned"]) == (2, True)
    await _run(capsys, "subscriptions", "update", "sub-ann", "--at", "2026-09-16", "--license", "seat=6")
    cancelled = json.loads(await _run(capsys, "subscriptions", "cancel", "sub-ann", "--at", "2026-09-20",
                                      "--at-period-end", "--json"))
    assert cancelled["ends_at"].startswith("2026-10-01")
    draft = json.loads(await _run(capsys, "drafts", "create", "sub-ann", "--containing", "2026-09-10", "--json"))
    # Sep 3 to Oct 1 (28 of 30 days), cut at Sep 16: fee 60 x 13/30 = 26.00, then C = 60 x 28/30 = 56.00
    # -> 30.00; seats 3 x 8 x 13/30 = 10.40, then C = 10.40 + 6 x 8 x 15/30 = 34.40 -> 24.00
    assert draft["period_start"].startswith("2026-09-03")
    assert [(i["code"], i["amount"]) for i in draft["line_items"]] == [("platform", "26.00"), ("seat", "10.40"),
                                                                       ("platform", "30.00"), ("seat", "24.00")]
    migrated = json.loads(await _run(capsys, "subscriptions", "migrate", "sub-ann", "--at", "2026-09-25",
                                     "--version", "1", "--json"))
    assert migrated["plan_version"] == 1
    with pytest.raises(SystemExit, match="FAILED_PRECONDITION: effective_at"):
        await asyncio.to_thread(main, ["subscriptions", "update", "sub-ann", "--at", "2026-10-05", "--plan", "team"])


async def test_read_commands_list_show_phases_and_plan_versions(env: InvoiceEnv, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CREDITS_INVOICE_ADDR", f"127.0.0.1:{env.port}")
    monkeypatch.setenv("CREDITS_API_KEY", env.key)
    await _run(capsys, "customers", "create", "ann", "--account", "acct-ann")
    await _run(capsys, "customers", "create", "bob", "--account", "acct-bob")
    await _run(capsys, "plans", "create", "team", "--fee", "platform=30.00", "--license", "seat=10.00")
    await _run(capsys, "plans", "version", "team", "--fee", "platform=60.00", "--license", "seat=12.00")
    table = await _run(capsys, "plans", "versions", "team")
    assert "platform 30 per period" in table and "seat 12 per seat per period" in table
    assert await _run(capsys, "plans", "versions", "team", "-q") == "1\n2\n"
    for sub, customer in (("sub-b", "ann"), ("sub-a", "ann"), ("sub-c", "bob")):
        await _run(capsys, "subscriptions", "create", sub, "--customer", customer, "--plan", "team",
                   "--anchor", "2026-09-01", "--license", "seat=2")
    assert await _run(capsys, "subscriptions", "list", "-q") == "sub-a\nsub-b\nsub-c\n"
    assert await _run(capsys, "subscriptions", "list", "--customer", "ann", "--limit", "1", "-q") == "sub-a\n"
    await _run(capsys, "subscriptions", "update", "sub-a", "--at", "2026-09-16", "--license", "seat=5",
               "--price", "seat=9.00")
    shown = await _run(capsys, "subscriptions", "show", "sub-a")
    assert "team v2" in shown and "seat=2" in shown and "seat=5" in shown and "seat=9" in shown
    phases = json.loads(await _run(capsys, "subscriptions", "show", "sub-a", "--json"))["phases"]
    assert [(p["effective_at"][:10], p["licenses"][0]["quantity"]) for p in phases] == [
        ("2026-09-01", "2"), ("2026-09-16", "5")]
    with pytest.raises(SystemExit, match="NOT_FOUND: plan_id"):
        await asyncio.to_thread(main, ["plans", "versions", "nope"])
