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
    # An ISO 4217 currency keeps its ISO scale (the one catalog of money); a built-in usage unit its own.
    ("DefineUnit", pb.DefineUnitRequest(idempotency_key="u", code="USD", scale=3), INVALID, "scale"),
    ("DefineUnit", pb.DefineUnitRequest(idempotency_key="u", code="KRW", scale=2), INVALID, "scale"),
    ("DefineUnit", pb.DefineUnitRequest(idempotency_key="u", code="token", scale=3), grpc.StatusCode.ALREADY_EXISTS,
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
    ("ReverseHold", pb.ReverseHoldRequest(idempotency_key="v", hold_key="h1",
                                          expired_lot_policy=pb.REINSTATE_WITH_GRACE), INVALID, "grace_s"),
    ("ReverseHold", pb.ReverseHoldRequest(idempotency_key="v", hold_key="h1", expired_lot_policy=7), INVALID,
     "expired_lot_policy"),
    ("ReverseHold", pb.ReverseHoldRequest(idempotency_key="v", hold_key="nope"), grpc.StatusCode.NOT_FOUND,
     "hold_key"),
]

# Caller-chosen ids are exactly what the proto documents, [A-Za-z0-9._:-]{1,64}: 65-128 characters
# and / @ # (which the ledger once accepted) are INVALID_ARGUMENT naming the field.
LONG_ID = "a" * 65
ID_CASES = [
    *[("CreateAccount", pb.CreateAccountRequest(idempotency_key="a", account_id=bad), INVALID, "account_id")
      for bad in (LONG_ID, "x" * 128, "a/b", "a@b", "a#b", "a b")],
    ("CreateAccount", pb.CreateAccountRequest(idempotency_key="a", account_id="kid", parent_account_id="acme/x"),
     INVALID, "parent_account_id"),
    ("GetAccount", pb.GetAccountRequest(account_id=LONG_ID), INVALID, "account_id"),
    ("GrantCredits", grant(account_id="acme@x"), INVALID, "account_id"),
    ("GrantCredits", grant(unit="US/D"), INVALID, "unit"),
    ("GrantCredits", grant(scope=pb.Scope(kinds=[pb.USAGE], names=["gpt#4"])), INVALID, "scope.names"),
    ("GetLot", pb.GetLotRequest(lot_id="lot/1"), INVALID, "lot_id"),
    ("ListLots", pb.ListLotsRequest(account_id=LONG_ID), INVALID, "account_id"),
    ("ListEntries", pb.ListEntriesRequest(lot_id="lot@1"), INVALID, "lot_id"),
    ("ReserveCredits", pb.ReserveCreditsRequest(idempotency_key="r", hold_key="h", account_id="acme#1", unit="USD",
                                                charges=[charge("1")]), INVALID, "account_id"),
    ("DebitCredits", pb.DebitCreditsRequest(idempotency_key="d", account_id="acme", unit="USD",
                                            charges=[charge("1", name="gpt/4")]), INVALID, "charges[0].name"),
    ("ReleaseHold", pb.ReleaseHoldRequest(idempotency_key="rl", hold_key="never-came", account_id="acme/x"),
     INVALID, "account_id"),
    ("TransferCredits", pb.TransferCreditsRequest(idempotency_key="t", from_account_id=LONG_ID, to_account_id="acme",
                                                  unit="USD", amount="1"), INVALID, "from_account_id"),
    ("TransferCredits", pb.TransferCreditsRequest(idempotency_key="t", from_account_id="acme", to_account_id="b@c",
                                                  unit="USD", amount="1"), INVALID, "to_account_id"),
    ("ReverseTransfer", pb.ReverseTransferRequest(idempotency_key="rt", transfer_id="xfer/1"), INVALID,
     "transfer_id"),
    ("SetTransferLimit", pb.SetTransferLimitRequest(idempotency_key="l", account_id=LONG_ID, unit="USD"), INVALID,
     "account_id"),
    ("GetGrantRequest", pb.GetGrantRequestRequest(request_id="gr#1"), INVALID, "request_id"),
    ("SetConsumptionPolicy", pb.SetConsumptionPolicyRequest(idempotency_key="p", account_id="a/b", sort_keys=[1]),
     INVALID, "account_id"),
    # Keys are 1-200 printable ASCII characters without spaces.
    ("GrantCredits", grant(idempotency_key="with space"), INVALID, "idempotency_key"),
    ("GrantCredits", grant(idempotency_key="k" * 201), INVALID, "idempotency_key"),
    ("ReserveCredits", pb.ReserveCreditsRequest(idempotency_key="r", hold_key="h" * 201, account_id="acme",
                                                unit="USD", charges=[charge("1")]), INVALID, "hold_key"),
    ("DebitCredits", pb.DebitCreditsRequest(idempotency_key="d", account_id="acme", unit="USD", reference="a b",
                                            charges=[charge("1")]), INVALID, "reference"),
]
CASES += ID_CASES


@pytest.mark.parametrize(("method", "request_msg", "code", "field"), CASES,
                         ids=[f"{c[0]}-{c[3]}-{i}" for i, c in enumerate(CASES)])
async def test_bad_input_is_rejected_and_writes_nothing(ledger: Ledger, method: str, request_msg: object,
                                                        code: grpc.StatusCode, field: str) -> None:
    await ledger.account("acme")
    await ledger.grant("acme", "5.00")
    before = await table_counts(ledger.dsn)
    await rejected(getattr(ledger.stub, method)(request_msg, metadata=ledger.md), code, field)
    assert await table_counts(ledger.dsn) == before


async def test_64_character_ids_and_keys_with_slashes_are_accepted(ledger: Ledger) -> None:
    """The other side of the rules: the longest id, and keys that are paths (hold keys, references,
    charge ids like the invoice service's `L001#1`)."""
    longest = "a" * 64
    await ledger.account(longest)
    await ledger.grant(longest, "5.00")
    hold_key = "inv/INV-1/run@1#2"
    hold = await ledger.stub.ReserveCredits(pb.ReserveCreditsRequest(
        idempotency_key="inv/INV-1/run@1#2/reserve", hold_key=hold_key, account_id=longest, unit="USD",
        reference="inv/INV-1", charges=[charge("2.00", charge_id="L001#1")]), metadata=ledger.md)
    assert (hold.hold_key, hold.reference, hold.allocations[0].charge_id) == (hold_key, "inv/INV-1", "L001#1")
    done = await ledger.stub.CommitHold(pb.CommitHoldRequest(idempotency_key="k" * 200, hold_key=hold_key),
                                        metadata=ledger.md)
    assert done.status == pb.COMMITTED
    # A debit's hold key is "debit:" + its idempotency key, so it may be longer than any key a caller sends.
    debit = await ledger.stub.DebitCredits(pb.DebitCreditsRequest(idempotency_key="d" * 200, account_id=longest,
                                                                  unit="USD", charges=[charge("1.00")]),
                                           metadata=ledger.md)
    got = await ledger.stub.GetHold(pb.GetHoldRequest(hold_key=debit.hold_key), metadata=ledger.md)
    assert got.hold_key == "debit:" + "d" * 200 and got.status == pb.COMMITTED
