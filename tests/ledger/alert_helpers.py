"""Helpers of the alert and webhook tests: the AlertsService stub on a running ledger, and small calls."""

from __future__ import annotations

import itertools

from credits.alerts.v1 import alerts_pb2 as apb
from credits.alerts.v1 import alerts_pb2_grpc
from credits.ledger.v1 import ledger_pb2 as pb

from tests.ledger.conftest import Ledger

_keys = itertools.count()


def alerts_stub(ledger: Ledger) -> alerts_pb2_grpc.AlertsServiceStub:
    return alerts_pb2_grpc.AlertsServiceStub(ledger.channel)


async def create_rule(ledger: Ledger, key: str = "", **fields: object) -> apb.AlertRule:
    rule = apb.AlertRule(**fields)  # type: ignore[arg-type]
    request = apb.CreateAlertRuleRequest(idempotency_key=key or f"rule-{next(_keys)}", rule=rule)
    return await alerts_stub(ledger).CreateAlertRule(request, metadata=ledger.md)


async def events(ledger: Ledger, account_id: str = "", rule_id: str = "") -> list[apb.AlertEvent]:
    found: list[apb.AlertEvent] = []
    token = ""
    while True:
        page = await alerts_stub(ledger).ListAlertEvents(
            apb.ListAlertEventsRequest(account_id=account_id, rule_id=rule_id, page_token=token, page_size=500),
            metadata=ledger.md)
        found.extend(page.events)
        token = page.next_page_token
        if not token:
            return found


async def debit(ledger: Ledger, account_id: str, amount: str, key: str, unit: str = "USD") -> pb.Hold:
    return await ledger.stub.DebitCredits(pb.DebitCreditsRequest(
        idempotency_key=key, account_id=account_id, unit=unit, charges=[pb.Charge(amount=amount, kind=pb.USAGE)]),
        metadata=ledger.md)
