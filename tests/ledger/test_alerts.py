"""Alert rules over gRPC: CRUD and refusals, and each kind firing once per crossing on a real ledger."""

from __future__ import annotations

import json

import grpc
import pytest
from credits.alerts.v1 import alerts_pb2 as apb
from credits.ledger.v1 import ledger_pb2 as pb

from tests.ledger.alert_helpers import alerts_stub, create_rule, debit, events
from tests.ledger.conftest import Ledger
from tests.tenancy import add_tenant_key


async def test_rule_crud_and_idempotency(ledger: Ledger) -> None:
    await ledger.account("acme")
    rule = await create_rule(ledger, "k1", rule_id="low", account_id="acme", unit="USD", kind=apb.LOW_BALANCE,
                             thresholds=["10.00", "2.5"], percent_thresholds=[20])
    assert rule.thresholds == ["10.00", "2.50"] and rule.enabled and rule.created_by
    again = await create_rule(ledger, "k1", rule_id="low", account_id="acme", unit="USD", kind=apb.LOW_BALANCE,
                              thresholds=["10.00", "2.5"], percent_thresholds=[20])
    assert again == rule
    with pytest.raises(grpc.aio.AioRpcError) as dup:
        await create_rule(ledger, "k2", rule_id="low", unit="USD", kind=apb.DEPLETED)
    assert dup.value.code() == grpc.StatusCode.ALREADY_EXISTS and "rule.rule_id" in (dup.value.details() or "")
    stub = alerts_stub(ledger)
    listed = await stub.ListAlertRules(apb.ListAlertRulesRequest(account_id="acme"), metadata=ledger.md)
    assert [r.rule_id for r in listed.rules] == ["low"]
    off = await stub.DisableAlertRule(apb.DisableAlertRuleRequest(idempotency_key="d1", rule_id="low"),
                                      metadata=ledger.md)
    assert not off.enabled


@pytest.mark.parametrize(("fields", "field"), [
    ({"kind": apb.LOW_BALANCE}, "rule.thresholds"),
    ({"kind": apb.LOW_BALANCE, "thresholds": ["1.001"]}, "rule.thresholds[0]"),
    ({"kind": apb.LOW_BALANCE, "percent_thresholds": [100]}, "rule.percent_thresholds"),
    ({"kind": apb.ALERT_KIND_UNSPECIFIED}, "rule.kind"),
    ({"kind": apb.EXPIRING, "amount": "5", "within_days": 0}, "rule.within_days"),
    ({"kind": apb.USAGE_SPIKE, "window_s": 3600, "trailing_windows": 3, "factor": "abc"}, "rule.factor"),
    ({"kind": apb.USAGE_SPIKE, "window_s": 3600, "trailing_windows": 3, "factor": "1"}, "rule.factor"),
    ({"kind": apb.COMPENSATORY_BURST, "window_s": 3600, "count": 3, "account_id": "acme"}, "rule.account_id"),
    ({"kind": apb.DEPLETED, "unit": "NOPE"}, "rule.unit"),
    ({"kind": apb.DEPLETED, "account_id": "ghost"}, "account_id"),
])
async def test_bad_rules_are_refused_naming_the_field(ledger: Ledger, fields: dict[str, object], field: str) -> None:
    await ledger.account("acme")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create_rule(ledger, **{"rule_id": "r", "unit": "USD", **fields})
    assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    assert field in (err.value.details() or ""), err.value.details()
    listed = await alerts_stub(ledger).ListAlertRules(apb.ListAlertRulesRequest(), metadata=ledger.md)
    assert not listed.rules


async def test_readonly_may_list_but_not_create(ledger: Ledger) -> None:
    readonly = await add_tenant_key(ledger.dsn, "tenant-a", "readonly")
    md = [("x-api-key", readonly)]
    await alerts_stub(ledger).ListAlertRules(apb.ListAlertRulesRequest(), metadata=md)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await alerts_stub(ledger).CreateAlertRule(apb.CreateAlertRuleRequest(
            idempotency_key="x", rule=apb.AlertRule(rule_id="r", unit="USD", kind=apb.DEPLETED)), metadata=md)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_low_balance_fires_once_per_crossing_and_recovery_rearms(ledger: Ledger) -> None:
    await ledger.account("acme")
    await create_rule(ledger, rule_id="low", account_id="acme", unit="USD", kind=apb.LOW_BALANCE,
                      thresholds=["10.00"])
    await ledger.grant("acme", "30.00", key="g1")
    await debit(ledger, "acme", "15.00", "d1")     # 15 left: above
    await debit(ledger, "acme", "6.00", "d2")      # 9: crossing 1
    await debit(ledger, "acme", "6.00", "d2")      # a replay: nothing new
    await debit(ledger, "acme", "1.00", "d3")      # 8: still firing, no event
    assert [(e.event_type, e.crossing) for e in await events(ledger)] == [("balance.low", 1)]
    await ledger.grant("acme", "5.00", key="g2")   # 13: recovered, re-armed
    await debit(ledger, "acme", "4.00", "d4")      # 9: crossing 2
    found = await events(ledger, account_id="acme")
    assert [(e.event_type, e.crossing) for e in found] == [
        ("balance.low", 1), ("balance.recovered", 1), ("balance.low", 2)]
    assert [e.event_id for e in found] == ["low/acme/below:1000/1", "low/acme/below:1000/1/recovered",
                                           "low/acme/below:1000/2"]
    body = json.loads(found[0].payload_json)
    assert body["data"] == {"available": "9.00", "threshold": "10.00"}
    assert body["id"] == found[0].event_id and body["type"] == "balance.low"


async def test_tenant_default_percent_and_depleted(ledger: Ledger) -> None:
    await ledger.account("a1")
    await ledger.account("a2")
    await create_rule(ledger, rule_id="pct", unit="USD", kind=apb.LOW_BALANCE, percent_thresholds=[50, 10])
    await create_rule(ledger, rule_id="zero", unit="USD", kind=apb.DEPLETED)
    await create_rule(ledger, rule_id="own", account_id="a2", unit="USD", kind=apb.DEPLETED)
    await ledger.grant("a1", "10.00", key="g1")
    await ledger.grant("a2", "10.00", key="g2")
    await debit(ledger, "a1", "6.00", "d1")   # 40%: below 50
    await debit(ledger, "a1", "4.00", "d2")   # 0: below 10, depleted
    await debit(ledger, "a2", "10.00", "d3")  # a2 has its own DEPLETED rule: the tenant's does not apply
    got = sorted((e.rule_id, e.account_id, e.subject, e.event_type) for e in await events(ledger))
    assert got == [("own", "a2", "depleted", "balance.depleted"),
                   ("pct", "a1", "below:10%", "balance.low"), ("pct", "a1", "below:50%", "balance.low"),
                   ("pct", "a2", "below:10%", "balance.low"), ("pct", "a2", "below:50%", "balance.low"),
                   ("zero", "a1", "depleted", "balance.depleted")]


async def test_large_adjustments_and_compensatory_burst(ledger: Ledger) -> None:
    for a in ("a1", "a2", "a3"):
        await ledger.account(a)
    await create_rule(ledger, rule_id="big", unit="USD", kind=apb.LARGE_ADJUSTMENT, amount="100.00")
    await create_rule(ledger, rule_id="burst", unit="USD", kind=apb.COMPENSATORY_BURST, window_s=3600, count=3)
    big = await ledger.grant("a1", "500.00", key="g-big")
    await ledger.grant("a1", "50.00", key="g-small")
    await ledger.stub.VoidGrant(pb.VoidGrantRequest(idempotency_key="v1", lot_id=big.lot_id, reason="mistake"),
                                metadata=ledger.md)
    for i, a in enumerate(("a1", "a2", "a3")):
        await ledger.grant(a, "1.00", key=f"c{i}", type=pb.COMPENSATORY, reason_code="outage", incident_id="inc-1")
    got = [(e.rule_id, e.event_type, e.subject.split(":")[0]) for e in await events(ledger)]
    assert got == [("big", "adjustment.large", "grant"), ("big", "adjustment.large", "void"),
                   ("burst", "adjustment.compensatory_burst", "key")]


async def test_usage_spike(ledger: Ledger) -> None:
    """Windows are aligned to the epoch; the test writes the rule's history directly through debits
    in the current window only, so it checks the no-baseline case, then a baseline seeded in the
    watch (as earlier windows would have left it)."""
    await ledger.account("acme")
    await create_rule(ledger, rule_id="spike", account_id="acme", unit="USD", kind=apb.USAGE_SPIKE,
                      window_s=86400, trailing_windows=7, factor="10")
    await ledger.grant("acme", "1000.00", key="g")
    await debit(ledger, "acme", "1.00", "d0")
    assert await events(ledger) == []  # no trailing history: no spike
    import asyncpg
    conn = await asyncpg.connect(ledger.dsn)
    try:
        data = json.loads(await conn.fetchval("SELECT data FROM alert_watches WHERE rule_id = 'spike'"))
        (current,) = data["windows"]
        data["windows"] = {str(int(current) - d): 100 for d in range(1, 8)} | {current: 100}
        await conn.execute("UPDATE alert_watches SET data = $1::jsonb WHERE rule_id = 'spike'", json.dumps(data))
    finally:
        await conn.close()
    await debit(ledger, "acme", "8.00", "d1")   # 900 minor in the window vs average 100: not > 10x
    assert await events(ledger) == []
    await debit(ledger, "acme", "2.00", "d2")   # 1100 > 1000
    (e,) = await events(ledger)
    assert e.event_type == "usage.spike" and json.loads(e.payload_json)["data"]["window_consumed"] == "11.00"


async def test_expiring_credit(ledger: Ledger) -> None:
    from datetime import UTC, datetime, timedelta

    from google.protobuf.timestamp_pb2 import Timestamp

    await ledger.account("acme")
    await create_rule(ledger, rule_id="exp", account_id="acme", unit="USD", kind=apb.EXPIRING, amount="5.00",
                      within_days=7)
    soon, later = Timestamp(), Timestamp()
    soon.FromDatetime(datetime.now(UTC) + timedelta(days=3))
    later.FromDatetime(datetime.now(UTC) + timedelta(days=30))
    await ledger.grant("acme", "20.00", key="g-late", expires_at=later)  # not within 7 days
    assert await events(ledger) == []
    await ledger.grant("acme", "8.00", key="g-soon", expires_at=soon, priority=1)  # 8.00 within 7 days > 5.00
    (fired,) = await events(ledger)
    assert fired.event_type == "credits.expiring" and json.loads(fired.payload_json)["data"]["expiring"] == "8.00"
    await debit(ledger, "acme", "4.00", "d1")   # the soon lot pays first (priority 1): 4.00 left, not above 5
    await debit(ledger, "acme", "1.00", "d2")
    await ledger.grant("acme", "3.00", key="g-soon2", expires_at=soon)  # 6.00 again: a second crossing
    assert [e.crossing for e in await events(ledger)] == [1, 2]
