"""The two-phase participant over real gRPC: split pieces, prepare/commit/abort, void, numbering."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal

import grpc
from credits.invoice.v1 import invoice_pb2 as pb

from tests.invoice.conftest import InvoiceEnv, event, seed_catalog, ts, when
from tests.invoice.test_catalog_api import expect_error

PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


def full_plan() -> pb.CreatePlanRequest:
    tiers = [pb.Tier(up_to="1000000", unit_amount="0.00002"), pb.Tier(unit_amount="0.00001", flat_amount="1")]
    return pb.CreatePlanRequest(
        idempotency_key="p-full", plan_id="full", currency="USD",
        usage_charges=[pb.UsageCharge(meter_code="input_tokens", price=pb.Price(model=pb.GRADUATED, tiers=tiers)),
                       pb.UsageCharge(meter_code="output_tokens", price=pb.Price(model=pb.VOLUME, tiers=tiers))],
        fixed_fees=[pb.FixedFee(code="platform", name="Platform fee", amount="20")],
        add_ons=[pb.AddOn(code="sso", name="SSO", unit_amount="7.77")],
        licenses=[pb.License(code="seat", name="Seats", unit_amount="9.99")])


async def seeded_draft(env: InvoiceEnv) -> pb.Invoice:
    for code in ("input_tokens", "output_tokens"):
        await env.call("CreateMeter", pb.CreateMeterRequest(idempotency_key=f"m-{code}", meter_code=code,
                                                            aggregation=pb.SUM))
    await env.call("CreatePlan", full_plan())
    await seed_catalog(env, plan=full_plan(), add_ons=[pb.Quantity(code="sso", quantity=1)],
                       licenses=[pb.Quantity(code="seat", quantity=3)])
    events = [event(f"i{n}", "input_tokens", "33333.333", when(1) + timedelta(hours=7 * n)) for n in range(60)]
    events += [event(f"o{n}", "output_tokens", "12345", when(2) + timedelta(hours=11 * n)) for n in range(60)]
    await env.call("IngestEvents", pb.IngestEventsRequest(events=events))
    return await env.call("CreateDraft", pb.CreateDraftRequest(idempotency_key="draft", customer_id="john-wick",
                                                               period_start=ts(when(1))))


async def test_split_pieces_sum_exactly_and_carry_service_intervals(env: InvoiceEnv) -> None:
    draft = await seeded_draft(env)
    assert [(i.kind, i.code, i.amount) for i in draft.line_items] == [
        (pb.USAGE, "input_tokens", "31.00"),   # graduated on 1,999,999.98: 20 + 9.9999998 + 1 flat
        (pb.USAGE, "output_tokens", "14.81"),  # volume on 740,700 (first tier): 14.814 rounded half-up
        (pb.FIXED_FEE, "platform", "20.00"), (pb.ADD_ON, "sso", "7.77"), (pb.LICENSE, "seat", "29.97")]
    cuts = [when(5, 13), when(17), when(17, 1), when(30, 23)]
    split = await env.call("SplitDraft", pb.SplitDraftRequest(invoice_id=draft.invoice_id,
                                                              split_at=[ts(c) for c in reversed(cuts)]))
    assert list(split.invoice.split_at) == [ts(c) for c in cuts]
    for item in split.invoice.line_items:
        pieces = [c for c in split.charges if c.line_item_id == item.line_item_id]
        assert sum(Decimal(c.amount) for c in pieces) == Decimal(item.amount)
        assert all(c.charge_id.startswith(item.line_item_id + "#") and c.kind == item.kind for c in pieces)
    fee = [c for c in split.charges if c.name == "platform"]
    assert [c.service_start for c in fee] == [ts(when(1)), *(ts(c) for c in cuts)]
    assert fee[-1].service_end == ts(when(1, month=9))
    # The frozen invoice keeps exactly the pieces the coordinator was shown.
    prepared = await env.call("PrepareFinalize", pb.PrepareFinalizeRequest(
        idempotency_key="prep", invoice_id=draft.invoice_id, split_at=[ts(c) for c in cuts],
        draft_digest=split.draft_digest))
    assert list(prepared.charges) == list(split.charges)
    assert prepared.draft_digest == split.draft_digest


async def test_prepare_refuses_a_draft_that_changed_since_it_was_split(env: InvoiceEnv) -> None:
    draft = await seeded_draft(env)
    split = await env.call("SplitDraft", pb.SplitDraftRequest(invoice_id=draft.invoice_id))
    await env.call("IngestEvent", pb.IngestEventRequest(event=event("new", "output_tokens", "1", when(9))))
    await expect_error(env, "PrepareFinalize", pb.PrepareFinalizeRequest(
        idempotency_key="prep", invoice_id=draft.invoice_id, draft_digest=split.draft_digest), PRECONDITION,
        "draft_digest")
    assert (await env.call("GetInvoice", pb.GetInvoiceRequest(invoice_id=draft.invoice_id))).status == pb.DRAFT


async def test_applications_are_checked_against_the_pieces(env: InvoiceEnv) -> None:
    draft = await seeded_draft(env)
    bad = grpc.StatusCode.INVALID_ARGUMENT

    def prepare(*apps: pb.CreditApplication, split: list[object] | None = None) -> pb.PrepareFinalizeRequest:
        return pb.PrepareFinalizeRequest(idempotency_key="prep", invoice_id=draft.invoice_id, applications=apps,
                                         split_at=split or [])

    def app(charge: str, amount: str, lot: str = "lot-1") -> pb.CreditApplication:
        return pb.CreditApplication(charge_id=charge, lot_id=lot, lot_type="PROMOTIONAL", amount=amount)

    await expect_error(env, "PrepareFinalize", prepare(app("L001#1", "31"), app("L001#1", "0.01", "lot-2")),
                       bad, "applications[1].amount")
    await expect_error(env, "PrepareFinalize", prepare(app("L001#2", "1")), bad, "applications[0].charge_id")
    await expect_error(env, "PrepareFinalize", prepare(app("L001#1", "0.001")), bad, "applications[0].amount")
    await expect_error(env, "PrepareFinalize", prepare(app("L001#1", "-1")), bad, "applications[0].amount")
    await expect_error(env, "PrepareFinalize", prepare(app("L001#1", "1", lot="bad lot")), bad,
                       "applications[0].lot_id")
    await expect_error(env, "PrepareFinalize", prepare(split=[ts(when(1, month=9))]), bad, "split_at[0]")
    await expect_error(env, "PrepareFinalize", pb.PrepareFinalizeRequest(idempotency_key="p", invoice_id="inv_nope"),
                       grpc.StatusCode.NOT_FOUND, "invoice_id")
    assert await env.count("credit_applications") == 0 and await env.count("invoice_charges") == 0
    ok = await env.call("PrepareFinalize", prepare(app("L001#1", "31"), app("L003#1", "5", "lot-2")))
    assert (ok.credits_applied, ok.amount_due) == ("36.00", str(Decimal(ok.subtotal) - Decimal("36.00")))


async def test_every_transition_of_the_participant(env: InvoiceEnv) -> None:
    draft = await seeded_draft(env)
    inv = draft.invoice_id

    async def verb(name: str, key: str, **kw: str) -> pb.Invoice:
        request = getattr(pb, f"{name}Request")(idempotency_key=key, invoice_id=inv, **kw)
        return await env.call(name, request)

    async def refused(name: str, key: str, **kw: str) -> None:
        request = getattr(pb, f"{name}Request")(idempotency_key=key, invoice_id=inv, **kw)
        await expect_error(env, name, request, PRECONDITION, "status")

    # DRAFT: commit and every void verb are refused; an abort is a harmless no-op.
    for name in ("CommitFinalize", "PrepareVoid", "CommitVoid", "AbortVoid"):
        await refused(name, f"draft-{name}")
    assert (await verb("AbortFinalize", "null-abort")).status == pb.DRAFT
    prepared = await verb("PrepareFinalize", "prep-1")
    assert prepared.status == pb.PREPARED and prepared.prepare_key == "prep-1"
    # PREPARED: a second prepare (other key) and the void verbs are refused; the same key replays.
    assert await verb("PrepareFinalize", "prep-1") == prepared
    for name in ("PrepareFinalize", "PrepareVoid", "CommitVoid", "AbortVoid"):
        await refused(name, f"prepared-{name}")
    await expect_error(env, "CommitFinalize", pb.CommitFinalizeRequest(
        idempotency_key="c-other", invoice_id=inv, prepare_key="someone-else"), PRECONDITION, "prepare_key")
    # Another run's compensation (its prepare never froze the invoice): a null compensation, prep-1 stands.
    assert await verb("AbortFinalize", "abort-other", prepare_key="someone-else") == prepared
    aborted = await verb("AbortFinalize", "abort-1", prepare_key="prep-1")
    assert aborted.status == pb.DRAFT and not aborted.applications and not aborted.charges
    # A commit for an aborted invoice is refused, never a silent success.
    await refused("CommitFinalize", "commit-after-abort", prepare_key="prep-1")
    await verb("PrepareFinalize", "prep-2")
    final = await verb("CommitFinalize", "commit-2", prepare_key="prep-2")
    assert final.status == pb.FINALIZED and final.number == "INV-000001"
    assert await verb("CommitFinalize", "commit-2", prepare_key="prep-2") == final  # replay
    assert (await verb("CommitFinalize", "commit-3")).number == "INV-000001"       # already committed
    # FINALIZED: an abort after commit is refused; so are prepare and commit-void.
    for name in ("AbortFinalize", "PrepareFinalize", "CommitVoid"):
        await refused(name, f"final-{name}")
    await refused("AbortFinalize", "final-abort-own", prepare_key="prep-2")
    # ... but a run that never froze it (it lost the race to prep-2) compensates with a null abort (its key
    # burnt, as on a DRAFT): the invoice stays as committed.
    assert await verb("AbortFinalize", "final-abort-lost", prepare_key="prep-1") == final
    assert await verb("AbortFinalize", "final-abort-late", prepare_key="prep-late") == final
    assert (await verb("AbortVoid", "null-abort-void")).status == pb.FINALIZED
    assert (await verb("PrepareVoid", "void-1", reason="duplicate charge")).status == pb.VOID_PENDING
    for name in ("PrepareFinalize", "AbortFinalize", "CommitFinalize", "PrepareVoid"):
        await refused(name, f"pending-{name}")
    assert (await verb("AbortVoid", "abort-void-1")).status == pb.FINALIZED
    await refused("CommitVoid", "commit-void-after-abort")
    await verb("PrepareVoid", "void-2")
    voided = await verb("CommitVoid", "commit-void-2")
    assert voided.status == pb.VOIDED and voided.number == "INV-000001"
    assert (await verb("CommitVoid", "commit-void-3")).status == pb.VOIDED
    for name in ("AbortVoid", "PrepareVoid", "PrepareFinalize", "AbortFinalize", "CommitFinalize"):
        await refused(name, f"voided-{name}")
    # Same key, different payload: a conflict naming the key.
    await expect_error(env, "CommitVoid", pb.CommitVoidRequest(idempotency_key="void-2", invoice_id=inv),
                       grpc.StatusCode.ALREADY_EXISTS, "idempotency_key")
    # A voided period can be billed again by a new draft.
    again = await env.call("CreateDraft", pb.CreateDraftRequest(idempotency_key="draft-again", customer_id="john-wick",
                                                                period_start=ts(when(1))))
    assert again.invoice_id != inv and again.status == pb.DRAFT


async def test_an_abort_that_arrives_before_its_prepare_burns_the_prepare(env: InvoiceEnv) -> None:
    draft = await seeded_draft(env)
    await env.call("AbortFinalize", pb.AbortFinalizeRequest(idempotency_key="abort", invoice_id=draft.invoice_id,
                                                            prepare_key="late-prep"))
    await expect_error(env, "PrepareFinalize", pb.PrepareFinalizeRequest(
        idempotency_key="late-prep", invoice_id=draft.invoice_id), PRECONDITION, "idempotency_key")
    assert (await env.call("GetInvoice", pb.GetInvoiceRequest(invoice_id=draft.invoice_id))).status == pb.DRAFT


async def test_finalized_invoices_are_immutable_in_the_database(env: InvoiceEnv) -> None:
    draft = await seeded_draft(env)
    await env.call("PrepareFinalize", pb.PrepareFinalizeRequest(idempotency_key="p", invoice_id=draft.invoice_id))
    await env.call("CommitFinalize", pb.CommitFinalizeRequest(idempotency_key="c", invoice_id=draft.invoice_id))
    for statement in ("UPDATE invoices SET subtotal_minor = 1", "UPDATE invoice_line_items SET amount_minor = 1",
                      "DELETE FROM invoice_charges"):
        try:
            await env.owner.execute(statement)
        except Exception as exc:  # the trigger's exception
            assert "immutable" in str(exc)
        else:
            raise AssertionError(f"{statement} was allowed on a finalized invoice")
    # a recompute of a finalized invoice returns it unchanged
    same = await env.call("CreateDraft", pb.CreateDraftRequest(idempotency_key="draft-2", customer_id="john-wick",
                                                               period_start=ts(when(1))))
    assert same.status == pb.FINALIZED and same.invoice_id == draft.invoice_id


async def test_numbers_are_gapless_under_concurrent_commits(env: InvoiceEnv) -> None:
    await seed_catalog(env, anchor=when(1, month=1))
    ids = []
    for month in range(1, 9):
        d = await env.call("CreateDraft", pb.CreateDraftRequest(idempotency_key=f"d{month}", customer_id="john-wick",
                                                                period_start=ts(when(1, month=month))))
        await env.call("PrepareFinalize", pb.PrepareFinalizeRequest(idempotency_key=f"p{month}",
                                                                    invoice_id=d.invoice_id))
        ids.append(d.invoice_id)
    # one commit fails (its invoice gets aborted first), the others race
    await env.call("AbortFinalize", pb.AbortFinalizeRequest(idempotency_key="a", invoice_id=ids[3]))
    results = await asyncio.gather(*(env.call("CommitFinalize", pb.CommitFinalizeRequest(
        idempotency_key=f"c{n}", invoice_id=i)) for n, i in enumerate(ids)), return_exceptions=True)
    numbers = sorted(r.number for r in results if isinstance(r, pb.Invoice))
    assert numbers == [f"INV-{n:06d}" for n in range(1, 8)]
    assert isinstance(results[3], grpc.aio.AioRpcError) and results[3].code() == PRECONDITION


async def test_list_invoices_filters_and_pages(env: InvoiceEnv) -> None:
    await seed_catalog(env, anchor=when(1, month=3))
    for month in range(3, 8):
        d = await env.call("CreateDraft", pb.CreateDraftRequest(idempotency_key=f"d{month}", customer_id="john-wick",
                                                                period_start=ts(when(1, month=month))))
        if month % 2:
            await env.call("PrepareFinalize", pb.PrepareFinalizeRequest(idempotency_key=f"p{month}",
                                                                        invoice_id=d.invoice_id))
    prepared = await env.call("ListInvoices", pb.ListInvoicesRequest(statuses=[pb.PREPARED]))
    assert len(prepared.invoices) == 3 and not prepared.invoices[0].line_items
    in_doubt = await env.call("ListInvoices", pb.ListInvoicesRequest(prepared_before=ts(when(1, year=2020))))
    assert list(in_doubt.invoices) == []
    stale = await env.call("ListInvoices", pb.ListInvoicesRequest(prepared_before=ts(when(1, year=2100))))
    assert len(stale.invoices) == 3
    page1 = await env.call("ListInvoices", pb.ListInvoicesRequest(customer_id="john-wick", page_size=2))
    page2 = await env.call("ListInvoices", pb.ListInvoicesRequest(customer_id="john-wick", page_size=2,
                                                                  page_token=page1.next_page_token))
    page3 = await env.call("ListInvoices", pb.ListInvoicesRequest(customer_id="john-wick", page_size=2,
                                                                  page_token=page2.next_page_token))
    seen = [i.invoice_id for p in (page1, page2, page3) for i in p.invoices]
    assert len(seen) == len(set(seen)) == 5
    one = await env.call("ListInvoices", pb.ListInvoicesRequest(period_start=ts(when(1, month=4))))
    assert [i.period_start for i in one.invoices] == [ts(when(1, month=4))]
    await expect_error(env, "ListInvoices", pb.ListInvoicesRequest(page_token="garbage!"),
                       grpc.StatusCode.INVALID_ARGUMENT, "page_token")


async def test_draft_input_is_checked(env: InvoiceEnv) -> None:
    await seed_catalog(env)
    bad = grpc.StatusCode.INVALID_ARGUMENT
    await expect_error(env, "CreateDraft", pb.CreateDraftRequest(idempotency_key="d", customer_id="john-wick",
                                                                 period_start=ts(when(2))), bad, "period_start")
    await expect_error(env, "CreateDraft", pb.CreateDraftRequest(idempotency_key="d", customer_id="john-wick"),
                       bad, "period_start")
    await expect_error(env, "CreateDraft", pb.CreateDraftRequest(idempotency_key="d", customer_id="ghost",
                                                                 period_start=ts(when(1))),
                       grpc.StatusCode.NOT_FOUND, "customer_id")
    await expect_error(env, "CreateDraft", pb.CreateDraftRequest(idempotency_key="d", customer_id="john-wick",
                                                                 period_start=ts(when(1, year=2100))),
                       bad, "period_start")
    assert await env.count("invoices") == 0
