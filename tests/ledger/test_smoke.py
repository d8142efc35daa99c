from credits.ledger.v1 import ledger_pb2 as pb

from tests.ledger.conftest import Ledger


async def test_grant_debit_balance(ledger: Ledger) -> None:
    await ledger.account("acme")
    lot = await ledger.grant("acme", "10.00")
    assert lot.balance.available == "10.00"
    hold = await ledger.stub.DebitCredits(pb.DebitCreditsRequest(
        idempotency_key="d1", account_id="acme", unit="USD", charges=[pb.Charge(amount="2.50", kind=pb.USAGE)]),
        metadata=ledger.md)
    assert hold.status == pb.COMMITTED and hold.posted == "2.50"
    bal = await ledger.stub.GetBalance(pb.GetBalanceRequest(account_id="acme"), metadata=ledger.md)
    assert bal.totals[0].available == "7.50" and bal.totals[0].consumed == "2.50"
    v = await ledger.stub.VerifyJournal(pb.VerifyJournalRequest(), metadata=ledger.md)
    assert v.ok, v.violations
