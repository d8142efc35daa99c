"""Bad input gets a clear status naming the field, and writes nothing."""

import grpc
import pytest
from credits.ledger.v1 import ledger_pb2 as pb

from tests.ledger.conftest import Ledger
from tests.ledger.requests_and_checks import at, charge, rejected, table_counts

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def grant(**kw: object) -> pb.GrantCreditsRequest:
    base: dict[str, object] = dict(idempotency_key="g", account_id="acme", type=pb.PURCHASED, unit="USD",
                                   amount="10.00")
    base.update(kw)
    return pb.GrantCreditsRequest(**base)  # type: ignore[arg-type]


CASES = [
    ("GrantCredits", grant(amount="0"), INVALID, "amount"),
    ("GrantCredits", grant(amount="-1.00"), INVALID, "amount"),
    ("GrantCredits", grant(amount="1.001"), INVALID, "amount"),
    ("GrantCredits", grant(amount="1e5"), INVALID, "amount"),
    ("GrantCredits", grant(amount="NaN"), INVALID, "amount"),
    ("GrantCredits", grant(unit="DOGE"), INVALID, "unit"),
    ("GrantCredits", grant(priority=101), INVALID, "priority"),
    ("GrantCredits", grant(priority=-3), INVALID, "priority"),
    ("GrantCredits", grant(effective_at=at("2025-08-02"), expires_at=at("2025-08-01")), INVALID, "expires_at"),
    ("GrantCredits", grant(idempotency_key=""), INVALID, "idempotency_key"),
    ("GrantCredits", grant(account_id="no spaces allowed"), INVALID, "account_id"),
    ("GrantCredits", grant(account_id="x" * 200), INVALID, "account_id"),
    ("GrantCredits", grant(reason_code="r" * 1000), INVALID, "reason_code"),
    ("GrantCredits", grant(type=0), INVALID, "type"),
    ("GrantCredits", grant(type=99), INVALID, "type"),
    ("GrantCredits", grant(type=pb.COMPENSATORY), INVALID, "incident_id"),
    ("GrantCredits", grant(scope=pb.Scope(names=["gpt"])), INVALID, "scope.names"),
    ("GrantCredits", grant(cost_basis="-1"), INVALID, "cost_basis"),
    ("GrantCredits", grant(account_id="ghost"), grpc.StatusCode.NOT_FOUND, "account_id"),
    ("ReserveCredits", pb.ReserveCreditsRequest(idempotency_key="r", hold_key="h", account_id="acme", unit="USD"),
     INVALID, "charges"),
    ("ReserveCredits", pb.ReserveCreditsRequest(idempotency_key="r", hold_key="", account_id="acme", unit="USD",
                                                charges=[charge("1")]), INVALID, "hold_key"),
    ("ReserveCredits", pb.ReserveCreditsRequest(idempotency_key="r", hold_key="h", account_id="acme", unit="USD",
                                                charges=[charge("1", start="2025-08-02", end="2025-08-01")]),
     INVALID, "charges[0].service_end"),
    ("ReserveCredits", pb.ReserveCreditsRequest(idempotency_key="r", hold_key="h", account_id="acme", unit="USD",
                                                charges=[charge("1", start="2099-01-01")]),
     INVALID, "charges[0].service_start"),
    ("ReserveCredits", pb.ReserveCreditsRequest(idempotency_key="r", hold_key="h", account_id="acme", unit="USD",
                                                charges=[charge("1", charge_id="a"), charge("1", charge_id="a")]),
     INVALID, "charges[1].charge_id"),
    ("ReserveCredits", pb.ReserveCreditsRequest(idempotency_key="r", hold_key="h", account_id="acme", unit="USD",
                                                charges=[pb.Charge(amount="1", kind=42)]), INVALID, "charges[0].kind"),
    ("CommitHold", pb.CommitHoldRequest(idempotency_key="c", hold_key="nope"), grpc.StatusCode.NOT_FOUND, "hold_key"),
    ("DebitCredits", pb.DebitCreditsRequest(idempotency_key="d", account_id="acme", unit="USD",
                                            charges=[charge("0.001")]), INVALID, "charges[0].amount"),
    ("DefineUnit", pb.DefineUnitRequest(idempotency_key="u", code="gpu_hour", scale=12), INVALID, "scale"),
    ("DefineUnit", pb.DefineUnitRequest(idempotency_key="u", code="bad unit", scale=2), INVALID, "code"),
    ("DefineUnit", pb.DefineUnitRequest(idempotency_key="u", code="USD", scale=3), grpc.StatusCode.ALREADY_EXISTS,
     "code"),
    ("CreateAccount", pb.CreateAccountRequest(idempotency_key="a", account_id="acme"),
     grpc.StatusCode.ALREADY_EXISTS, "account_id"),
    ("CreateAccount", pb.CreateAccountRequest(idempotency_key="a2", account_id="kid", parent_account_id="ghost"),
     grpc.StatusCode.NOT_FOUND, "parent_account_id"),
    ("SetConsumptionPolicy", pb.SetConsumptionPolicyRequest(idempotency_key="p", sort_keys=[1, 1]), INVALID,
     "sort_keys"),
    ("SetConsumptionPolicy", pb.SetConsumptionPolicyRequest(idempotency_key="p", sort_keys=[77]), INVALID,
     "sort_keys"),
    ("ListEntries", pb.ListEntriesRequest(page_token="abc"), INVALID, "page_token"),
    ("GetBalance", pb.GetBalanceRequest(account_id="ghost"), grpc.StatusCode.NOT_FOUND, "account_id"),
    ("GetLotBoundaries", pb.GetLotBoundariesRequest(account_id="acme", period_start=at("2025-09-01"),
                                                    period_end=at("2025-08-01")), INVALID, "period_end"),
    ("ReverseReference", pb.ReverseReferenceRequest(idempotency_key="v", hold_key="h1",
                                                    expired_lot_policy=pb.REINSTATE_WITH_GRACE), INVALID, "grace_s"),
]


@pytest.mark.parametrize(("method", "request_msg", "code", "field"), CASES,
                         ids=[f"{c[0]}-{c[3]}-{i}" for i, c in enumerate(CASES)])
async def test_bad_input_is_rejected_and_writes_nothing(ledger: Ledger, method: str, request_msg: object,
                                                        code: grpc.StatusCode, field: str) -> None:
    await ledger.account("acme")
    await ledger.grant("acme", "5.00")
    before = await table_counts(ledger.dsn)
    await rejected(getattr(ledger.stub, method)(request_msg, metadata=ledger.md), code, field)
    assert await table_counts(ledger.dsn) == before
