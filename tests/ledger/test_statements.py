"""GetStatement and ExportStatement against a real server: every movement with its running balance,
totals by type, the expiry timeline, depletion, paging, exports; and a seeded random check that every
statement reconciles (opening + lines = closing = the ledger) however the period is cut."""

from __future__ import annotations

import csv
import io
import json
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import grpc
import pytest
from credits.ledger.v1 import ledger_pb2 as pb

from tests.ledger.conftest import Ledger
from tests.ledger.requests_and_checks import charge, rejected, ts


def _statement(**kw: object) -> pb.GetStatementRequest:
    start = kw.pop("start", None)
    req = pb.GetStatementRequest(**kw)  # type: ignore[arg-type]
    if start is not None:
        getattr(req, "from").CopyFrom(ts(start))  # type: ignore[arg-type]
    return req


async def _all_lines(ledger: Ledger, **kw: object) -> tuple[pb.Statement, list[pb.StatementLine]]:
    lines: list[pb.StatementLine] = []
    token = ""
    while True:
        page = await ledger.stub.GetStatement(_statement(page_token=token, **kw), metadata=ledger.md)
        lines.extend(page.lines)
        token = page.next_page_token
        if not token:
            return page, lines


async def _scenario(ledger: Ledger) -> dict[str, str]:
    now = datetime.now(UTC)
    await ledger.account("john")
    promo = await ledger.grant("john", "30.00", type=pb.PROMOTIONAL, expires_at=ts(now + timedelta(days=10)),
                               key="g-promo")
    paid = await ledger.grant("john", "100.00", type=pb.PURCHASED, key="g-paid")
    await ledger.stub.DebitCredits(pb.DebitCreditsRequest(
        idempotency_key="d1", account_id="john", unit="USD", reference="req-1",
        charges=[charge("12.00", charge_id="c1", name="gpt")]), metadata=ledger.md)
    await ledger.stub.ReserveCredits(pb.ReserveCreditsRequest(
        idempotency_key="r1", hold_key="inv/INV-1/run", account_id="john", unit="USD", reference="INV-1",
        charges=[charge("20.00", charge_id="L1", name="tokens"), charge("5.00", charge_id="L2", name="seats")]),
        metadata=ledger.md)
    await ledger.stub.CommitHold(pb.CommitHoldRequest(idempotency_key="c1", hold_key="inv/INV-1/run",
                                                      amount="25.00"), metadata=ledger.md)
    await ledger.stub.ReserveCredits(pb.ReserveCreditsRequest(
        idempotency_key="r2", hold_key="h2", account_id="john", unit="USD", charges=[charge("7.00")]),
        metadata=ledger.md)
    await ledger.stub.ReleaseHold(pb.ReleaseHoldRequest(idempotency_key="x2", hold_key="h2"), metadata=ledger.md)
    await ledger.stub.VoidGrant(pb.VoidGrantRequest(idempotency_key="v1", lot_id=paid.lot_id, reason="refund"),
                                metadata=ledger.md)
    late = await ledger.grant("john", "5.00", type=pb.PROMOTIONAL, expires_at=ts(now + timedelta(days=5)),
                              key="g-late")
    return {"promo": promo.lot_id, "paid": paid.lot_id, "late": late.lot_id}


async def test_statement_lists_every_movement_with_running_balance(ledger: Ledger) -> None:
    lots = await _scenario(ledger)
    st, lines = await _all_lines(ledger, account_id="john")
    assert st.unit == "USD" and st.opening_balance == "0.00"
    types = [pb.MovementType.Name(ln.type) for ln in lines]
    assert types == ["MOVEMENT_GRANT", "MOVEMENT_GRANT", "MOVEMENT_CONSUMPTION", "MOVEMENT_HOLD_PLACED",
                     "MOVEMENT_CONSUMPTION", "MOVEMENT_HOLD_PLACED", "MOVEMENT_HOLD_RELEASED", "MOVEMENT_VOID",
                     "MOVEMENT_GRANT"]
    assert [ln.balance for ln in lines] == ["30.00", "130.00", "118.00", "118.00", "93.00", "93.00", "93.00",
                                            "0.00", "5.00"]
    assert [ln.available for ln in lines] == ["30.00", "130.00", "118.00", "93.00", "93.00", "86.00", "93.00",
                                              "0.00", "5.00"]
    grant = lines[0]
    assert grant.lots[0].lot_id == lots["promo"] and grant.lots[0].type == pb.PROMOTIONAL
    assert grant.lots[0].HasField("expires_at")
    invoice = next(ln for ln in lines if ln.reference == "INV-1" and ln.type == pb.MOVEMENT_CONSUMPTION)
    assert {(i.charge_id, i.name, i.amount) for i in invoice.items} == {("L1", "tokens", "20.00"),
                                                                        ("L2", "seats", "5.00")}
    assert invoice.amount == "-25.00"
    debit = next(ln for ln in lines if ln.reference == "req-1")
    assert [(i.charge_id, i.amount) for i in debit.items] == [("c1", "12.00")]
    # running balance: opening + every line's change, and it ends on the closing balance
    running = Decimal(st.opening_balance)
    for ln in lines:
        running += Decimal(ln.amount)
        assert Decimal(ln.balance) == running
    assert running == Decimal(st.closing_balance)
    balance = await ledger.stub.GetBalance(pb.GetBalanceRequest(account_id="john"), metadata=ledger.md)
    usd = balance.totals[0]
    assert Decimal(st.closing_available) == Decimal(usd.available) + Decimal(usd.pending_expiry)
    assert Decimal(st.closing_balance) == Decimal(st.closing_available) + Decimal(usd.held)
    assert st.credits_in == "135.00" and Decimal(st.credits_out) == Decimal("135.00") - Decimal(st.closing_balance)
    by_type = {t.type: t for t in st.by_type}
    assert by_type[pb.PURCHASED].closing_balance == "0.00" and by_type[pb.PURCHASED].credits_in == "100.00"
    assert [(p.lot_id, p.amount) for p in st.expiry_timeline] == [(lots["late"], "5.00")]
    assert st.trailing_consumption == "37.00" and st.days_until_depletion
    assert Decimal(st.days_until_depletion) == (Decimal(st.closing_available) * 30 / Decimal("37")).quantize(
        Decimal("0.1"))


async def test_pages_and_periods_chain(ledger: Ledger) -> None:
    await _scenario(ledger)
    whole, lines = await _all_lines(ledger, account_id="john")
    paged, paged_lines = await _all_lines(ledger, account_id="john", page_size=2)
    assert [ln.SerializeToString() for ln in paged_lines] == [ln.SerializeToString() for ln in lines]
    assert paged.closing_balance == whole.closing_balance
    # a period starting mid-way opens on the running balance where it starts
    cut = lines[3].recorded_at.ToDatetime(tzinfo=UTC)
    later, _ = await _all_lines(ledger, account_id="john", start=cut)
    before = [ln for ln in lines if ln.recorded_at.ToDatetime(tzinfo=UTC) < cut]
    assert later.opening_balance == (before[-1].balance if before else "0.00")
    assert later.closing_balance == whole.closing_balance


async def test_bad_statement_requests(ledger: Ledger) -> None:
    await _scenario(ledger)
    await rejected(ledger.stub.GetStatement(_statement(account_id="nobody"), metadata=ledger.md),
                   grpc.StatusCode.NOT_FOUND, "account_id")
    await rejected(ledger.stub.GetStatement(_statement(account_id="john", trailing_days=-1), metadata=ledger.md),
                   grpc.StatusCode.INVALID_ARGUMENT, "trailing_days")
    page = await ledger.stub.GetStatement(_statement(account_id="john", page_size=2), metadata=ledger.md)
    from service_runtime.pages import decode_token, encode_token
    after, balance, available = decode_token(page.next_page_token, 3) or ("", "", "")
    forged = encode_token(after, int(balance) + 1, available)
    await rejected(ledger.stub.GetStatement(_statement(account_id="john", page_token=forged), metadata=ledger.md),
                   grpc.StatusCode.INVALID_ARGUMENT, "page_token")


async def test_a_statement_that_does_not_reconcile_is_internal(ledger: Ledger) -> None:
    """A projection that disagrees with the journal (written behind the ledger's back) is a bug: the
    statement refuses to show it."""
    lots = await _scenario(ledger)
    conn = await asyncpg.connect(ledger.dsn)
    try:
        await conn.execute("UPDATE lot_balances SET available = available - 1, consumed = consumed + 1 "
                           "WHERE lot_id = $1", lots["late"])
    finally:
        await conn.close()
    await rejected(ledger.stub.GetStatement(_statement(account_id="john"), metadata=ledger.md),
                   grpc.StatusCode.INTERNAL, "does not reconcile")


async def _export(ledger: Ledger, fmt: int, kind: int = pb.EXPORT_STATEMENT) -> tuple[str, list[pb.ExportChunk]]:
    chunks = [c async for c in ledger.stub.ExportStatement(
        pb.ExportStatementRequest(account_id="john", format=fmt, kind=kind), metadata=ledger.md)]
    return b"".join(c.data for c in chunks).decode(), chunks


async def test_exports_csv_and_json(ledger: Ledger) -> None:
    await _scenario(ledger)
    st, lines = await _all_lines(ledger, account_id="john")
    text, chunks = await _export(ledger, pb.EXPORT_CSV)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["balance"] for r in rows[:-1]] == [ln.balance for ln in lines]
    assert rows[-1]["row"] == "SUMMARY" and rows[-1]["balance"] == st.closing_balance
    assert chunks[-1].entries_done == chunks[-1].entries_total == st.entries
    text, _ = await _export(ledger, pb.EXPORT_JSON, pb.EXPORT_ENTRIES)
    entries = [json.loads(x) for x in text.splitlines()]
    assert len(entries) == st.entries and entries[0]["kind"] == "GRANT"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _export(ledger, pb.EXPORT_FORMAT_UNSPECIFIED)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "format" in (info.value.details() or "")


async def test_streams_need_a_key(ledger: Ledger) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in ledger.stub.ExportStatement(pb.ExportStatementRequest(account_id="john", format=pb.EXPORT_CSV),
                                                   metadata=[("x-api-key", "ck_nope.nope")]):
            pass
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("seed", [11, 12])
async def test_random_histories_always_reconcile(ledger: Ledger, seed: int) -> None:
    """Seeded random operations; after each burst, statements of random periods chain exactly:
    opening of [t_i, t_j) = running balance at t_i, lines sum to closing, pages = one page, and the
    'now' statement closes on GetBalance."""
    rng = random.Random(seed)
    await ledger.account("root")
    await ledger.account("john", parent="root")
    now = datetime.now(UTC)
    lots: list[str] = []
    holds: list[str] = []
    committed: list[str] = []
    cuts: list[datetime] = []
    for step in range(60):
        op = rng.choice(["grant", "grant", "debit", "debit", "reserve", "commit", "release", "void", "reverse",
                         "transfer", "expire"])
        key = f"s{seed}-{step}"
        try:
            if op == "grant":
                exp = ts(now + timedelta(seconds=rng.choice([2, 3600, 86400])))
                lot = await ledger.grant("john", f"{rng.randint(1, 50)}.{rng.randint(0, 99):02d}", key=key,
                                         type=rng.choice([pb.PURCHASED, pb.PROMOTIONAL]), expires_at=exp)
                lots.append(lot.lot_id)
            elif op == "debit":
                await ledger.stub.DebitCredits(pb.DebitCreditsRequest(
                    idempotency_key=key, account_id="john", unit="USD", reference=f"use-{step}",
                    charges=[charge(f"{rng.randint(1, 9)}.{rng.randint(0, 99):02d}", charge_id=f"c{step}")],
                    up_to=rng.random() < 0.5), metadata=ledger.md)
            elif op == "reserve":
                await ledger.stub.ReserveCredits(pb.ReserveCreditsRequest(
                    idempotency_key=key, hold_key=f"h{step}", account_id="john", unit="USD",
                    charges=[charge(f"{rng.randint(1, 9)}.00", charge_id="L1", name="m")]), metadata=ledger.md)
                holds.append(f"h{step}")
            elif op in ("commit", "release") and holds:
                hk = holds.pop(rng.randrange(len(holds)))
                if op == "commit":
                    await ledger.stub.CommitHold(pb.CommitHoldRequest(idempotency_key=key, hold_key=hk),
                                                 metadata=ledger.md)
                    committed.append(hk)
                else:
                    await ledger.stub.ReleaseHold(pb.ReleaseHoldRequest(idempotency_key=key, hold_key=hk),
                                                  metadata=ledger.md)
            elif op == "void" and lots:
                await ledger.stub.VoidGrant(pb.VoidGrantRequest(idempotency_key=key, lot_id=rng.choice(lots),
                                                                reason="r"), metadata=ledger.md)
            elif op == "reverse" and committed:
                await ledger.stub.ReverseHold(pb.ReverseHoldRequest(
                    idempotency_key=key, hold_key=committed.pop(), reason="refund"), metadata=ledger.md)
            elif op == "transfer":
                await ledger.stub.TransferCredits(pb.TransferCreditsRequest(
                    idempotency_key=key, from_account_id="john", to_account_id="root", unit="USD",
                    amount=f"{rng.randint(1, 5)}.00"), metadata=ledger.md)
            elif op == "expire":
                await ledger.stub.ExpireLots(pb.ExpireLotsRequest(idempotency_key=key, account_id="john"),
                                             metadata=ledger.md)
        except grpc.aio.AioRpcError as err:
            assert err.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND), err.details()
        if rng.random() < 0.15:
            cuts.append(datetime.now(UTC))
    whole, lines = await _all_lines(ledger, account_id="john", page_size=rng.randint(1, 7))
    _, one_lines = await _all_lines(ledger, account_id="john", page_size=1000)
    assert [ln.SerializeToString() for ln in lines] == [ln.SerializeToString() for ln in one_lines]
    running = Decimal("0")
    for ln in lines:
        running += Decimal(ln.amount)
        assert Decimal(ln.balance) == running
    assert running == Decimal(whole.closing_balance)
    for cut in cuts:
        st, _ = await _all_lines(ledger, account_id="john", start=cut, page_size=rng.randint(1, 9))
        before = [ln for ln in lines if ln.recorded_at.ToDatetime(tzinfo=UTC) < cut]
        assert st.opening_balance == (before[-1].balance if before else "0.00")
        assert st.closing_balance == whole.closing_balance
