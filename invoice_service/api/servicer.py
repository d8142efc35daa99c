"""InvoiceService servicer: unpack -> call one operation -> pack. No SQL, no status codes here."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeAlias, TypeVar

import grpc
from credits.invoice.v1 import invoice_pb2 as pb
from credits.invoice.v1 import invoice_pb2_grpc as pb_grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from invoice_service.api import exports, pack, unpack
from invoice_service.config import InvoiceConfig
from invoice_service.domain import render
from invoice_service.domain.money import currency_scale, to_text
from invoice_service.domain.usage_costs import BucketCost, bucket_costs
from invoice_service.storage.catalog import CatalogOperations
from invoice_service.storage.invoices import InvoiceOperations, ListFilter
from invoice_service.storage.pricing_rules import PricingRuleOperations
from invoice_service.storage.subscription_changes import SubscriptionChanges
from invoice_service.storage.usage import UsageOperations
from service_runtime import portal_sessions
from service_runtime.call_context import current_caller
from service_runtime.export_rows import render as render_rows
from service_runtime.free_text import check_text
from service_runtime.idempotency import Guard, Replayed
from service_runtime.identifiers import check_id, check_key, check_optional_id
from service_runtime.pages import decode_int_token, decode_token, encode_token, page_size
from service_runtime.proto_time import from_timestamp
from service_runtime.rejections import Reason, Rejection, invalid
from service_runtime.settings import Settings

M = TypeVar("M", bound=Message)
EXPORT_PAGE = 1000  # invoices per page of ExportInvoices (one page in memory at once)
_Ctx: TypeAlias = grpc.aio.ServicerContext  # type: ignore[type-arg]


def _due_cursor(token: str) -> tuple[str, str, datetime] | None:
    """ListDueSubscriptions' cursor: the (customer, subscription, period start) of the last period listed."""
    decoded = decode_token(token, 3)
    if decoded is None:
        return None
    try:
        start = datetime.fromisoformat(decoded[2])
    except ValueError as exc:
        raise invalid("page_token", "is not a page token this service issued") from exc
    if start.tzinfo is None:
        raise invalid("page_token", "is not a page token this service issued")
    return decoded[0], decoded[1], start


def _tenant() -> str:
    return current_caller().tenant_id


def _guard(method: str, request: Any, encode: Callable[[Any], Message], *, key_required: bool = True) -> Guard:
    return Guard.of(_tenant(), method, request, encode, key_required=key_required)


async def _mutate(guard: Guard, response_type: type[M], run: Awaitable[Any]) -> M:
    """Runs the operation; a replayed key answers with the stored first response."""
    try:
        await run
    except Replayed as replay:
        return response_type.FromString(replay.response)
    result: M = guard.response
    return result


def _stamp(at: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(at)
    return out


def _exact(value: str) -> str:
    """A numeric aggregate as plain decimal text without trailing zeros ("12.500" -> "12.5")."""
    text = format(Decimal(value).normalize(), "f")
    return text if text != "-0" else "0"


class InvoiceServicer(pb_grpc.InvoiceServiceServicer):
    def __init__(self, catalog: CatalogOperations, usage: UsageOperations, invoices: InvoiceOperations,
                 config: InvoiceConfig, changes: SubscriptionChanges, rules: PricingRuleOperations) -> None:
        self._catalog = catalog
        self._usage = usage
        self._invoices = invoices
        self._config = config
        self._changes = changes
        self._rules = rules

    # ---- catalog ------------------------------------------------------------------------------

    async def CreateCustomer(self, request: pb.CreateCustomerRequest, context: _Ctx) -> pb.Customer:
        guard = _guard("CreateCustomer", request, pack.customer)
        return await _mutate(guard, pb.Customer, self._catalog.create_customer(guard, unpack.customer(request)))

    async def GetCustomer(self, request: pb.GetCustomerRequest, context: _Ctx) -> pb.Customer:
        customer_id = check_id(request.customer_id, "customer_id")
        return pack.customer(await self._catalog.get_customer(_tenant(), customer_id))

    async def CreateMeter(self, request: pb.CreateMeterRequest, context: _Ctx) -> pb.Meter:
        guard = _guard("CreateMeter", request, pack.meter)
        return await _mutate(guard, pb.Meter, self._catalog.create_meter(guard, unpack.meter(request)))

    async def GetMeter(self, request: pb.GetMeterRequest, context: _Ctx) -> pb.Meter:
        meter_code = check_id(request.meter_code, "meter_code")
        return pack.meter(await self._catalog.get_meter(_tenant(), meter_code))

    async def CreatePlan(self, request: pb.CreatePlanRequest, context: _Ctx) -> pb.Plan:
        guard = _guard("CreatePlan", request, pack.plan)
        return await _mutate(guard, pb.Plan, self._catalog.create_plan(guard, unpack.plan(request)))

    async def GetPlan(self, request: pb.GetPlanRequest, context: _Ctx) -> pb.Plan:
        plan_id = check_id(request.plan_id, "plan_id")
        if request.version < 0:
            raise invalid("version", "must be 0 (the latest) or a version number")
        if request.version:
            return pack.plan(await self._changes.get_plan_version(_tenant(), plan_id, request.version))
        return pack.plan(await self._catalog.get_plan(_tenant(), plan_id))

    # ---- subscriptions that change (domain/lifecycle.py) -------------------------------------------

    async def CreatePlanVersion(self, request: pb.CreatePlanRequest, context: _Ctx) -> pb.Plan:
        guard = _guard("CreatePlanVersion", request, pack.plan)
        # A version of which plan comes first: an unknown (or another tenant's) plan is NOT_FOUND.
        await self._catalog.get_plan(_tenant(), check_id(request.plan_id, "plan_id"))
        return await _mutate(guard, pb.Plan, self._changes.create_plan_version(guard, unpack.plan(request)))

    async def UpdateSubscription(self, request: pb.UpdateSubscriptionRequest, context: _Ctx) -> pb.Subscription:
        guard = _guard("UpdateSubscription", request, pack.subscription)
        subscription_id = check_id(request.subscription_id, "subscription_id")
        change = unpack.subscription_change(request)
        return await _mutate(guard, pb.Subscription, self._changes.update(guard, subscription_id, change))

    async def CancelSubscription(self, request: pb.CancelSubscriptionRequest, context: _Ctx) -> pb.Subscription:
        guard = _guard("CancelSubscription", request, pack.subscription)
        subscription_id = check_id(request.subscription_id, "subscription_id")
        at = unpack.timestamp(request.at, True, "at") if request.HasField("at") else None
        return await _mutate(guard, pb.Subscription,
                             self._changes.cancel(guard, subscription_id, at, request.at_period_end))

    async def MigrateSubscription(self, request: pb.MigrateSubscriptionRequest, context: _Ctx) -> pb.Subscription:
        guard = _guard("MigrateSubscription", request, pack.subscription)
        subscription_id = check_id(request.subscription_id, "subscription_id")
        if request.version < 0:
            raise invalid("version", "must be 0 (the latest) or a version number")
        at = (unpack.timestamp(request.effective_at, True, "effective_at") if request.HasField("effective_at")
              else datetime.now(UTC))
        return await _mutate(guard, pb.Subscription,
                             self._changes.migrate(guard, subscription_id, at, request.version))

    async def CreateSubscription(self, request: pb.CreateSubscriptionRequest, context: _Ctx) -> pb.Subscription:
        guard = _guard("CreateSubscription", request, pack.subscription)
        sub = unpack.subscription(request)
        return await _mutate(guard, pb.Subscription, self._catalog.create_subscription(guard, sub))

    async def GetSubscription(self, request: pb.GetSubscriptionRequest, context: _Ctx) -> pb.Subscription:
        subscription_id = check_id(request.subscription_id, "subscription_id")
        return pack.subscription(await self._catalog.get_subscription(_tenant(), subscription_id))

    async def ListSubscriptions(self, request: pb.ListSubscriptionsRequest,
                                context: _Ctx) -> pb.ListSubscriptionsResponse:
        customer_id = check_optional_id(request.customer_id, "customer_id")
        limit = page_size(request.page_size)
        cursor = decode_token(request.page_token, 2)
        subs = await self._catalog.list_subscriptions(_tenant(), customer_id,
                                                      (cursor[0], cursor[1]) if cursor else None, limit)
        token = encode_token(subs[-1].customer_id, subs[-1].subscription_id) if len(subs) == limit else ""
        return pb.ListSubscriptionsResponse(subscriptions=[pack.subscription(s) for s in subs],
                                            next_page_token=token)

    async def ListPlanVersions(self, request: pb.ListPlanVersionsRequest,
                               context: _Ctx) -> pb.ListPlanVersionsResponse:
        plan_id = check_id(request.plan_id, "plan_id")
        limit = page_size(request.page_size)
        versions = await self._catalog.list_plan_versions(_tenant(), plan_id, decode_int_token(request.page_token),
                                                          limit)
        token = encode_token(versions[-1].version) if len(versions) == limit else ""
        return pb.ListPlanVersionsResponse(versions=[pack.plan(v) for v in versions], next_page_token=token)

    async def ListDueSubscriptions(self, request: pb.ListDueSubscriptionsRequest,
                                   context: _Ctx) -> pb.ListDueSubscriptionsResponse:
        as_of = (unpack.timestamp(request.as_of, True, "as_of") if request.HasField("as_of")
                 else datetime.now(UTC))
        due, more = await self._catalog.list_due(_tenant(), as_of, self._config.usage_grace_s,
                                                 page_size(request.page_size), _due_cursor(request.page_token))
        last = due[-1] if due else None
        return pb.ListDueSubscriptionsResponse(periods=[
            pb.DuePeriod(customer_id=c, subscription_id=s, period_start=pack.ts(p.start), period_end=pack.ts(p.end),
                         invoice_id=inv, status=pb.InvoiceStatus.Value(status) if status else 0)
            for c, s, p, inv, status in due],
            next_page_token=encode_token(last[0], last[1], last[2].start.isoformat()) if more and last else "")

    async def ListSettlements(self, request: pb.ListSettlementsRequest,
                              context: _Ctx) -> pb.ListSettlementsResponse:
        cursor = decode_token(request.page_token, 1)
        limit = page_size(request.page_size)
        found = await self._catalog.list_settlements(_tenant(), cursor[0] if cursor else "", limit)
        return pb.ListSettlementsResponse(
            settlements=[pb.AccountSettlement(ledger_account_id=a, invoiced_through=pack.ts(t)) for a, t in found],
            next_page_token=encode_token(found[-1][0]) if len(found) == limit else "")

    # ---- usage --------------------------------------------------------------------------------

    async def IngestEvent(self, request: pb.IngestEventRequest, context: _Ctx) -> pb.IngestEventResponse:
        event = unpack.events([request.event], self._config.clock_skew_s, field="event")[0]

        def encode(accepted: list[bool]) -> pb.IngestEventResponse:
            return pb.IngestEventResponse(result=pb.EventResult(
                event_id=event.event_id, status=pb.ACCEPTED if accepted[0] else pb.DUPLICATE))

        guard = _guard("IngestEvent", request, encode, key_required=False)
        return await _mutate(guard, pb.IngestEventResponse, self._usage.ingest(guard, [event], "event"))

    async def IngestEvents(self, request: pb.IngestEventsRequest, context: _Ctx) -> pb.IngestEventsResponse:
        events = unpack.events(request.events, self._config.clock_skew_s)

        def encode(accepted: list[bool]) -> pb.IngestEventsResponse:
            n = sum(accepted)
            return pb.IngestEventsResponse(
                results=[pb.EventResult(event_id=e.event_id, status=pb.ACCEPTED if ok else pb.DUPLICATE)
                         for e, ok in zip(events, accepted, strict=True)],
                accepted=n, duplicates=len(accepted) - n)

        guard = _guard("IngestEvents", request, encode, key_required=False)
        return await _mutate(guard, pb.IngestEventsResponse, self._usage.ingest(guard, events))

    # ---- drafts -------------------------------------------------------------------------------

    async def CreateDraft(self, request: pb.CreateDraftRequest, context: _Ctx) -> pb.Invoice:
        guard = _guard("CreateDraft", request, pack.invoice)
        customer_id = check_id(request.customer_id, "customer_id")
        start = unpack.timestamp(request.period_start, request.HasField("period_start"), "period_start")
        subscription_id = check_id(request.subscription_id, "subscription_id") if request.subscription_id else ""
        return await _mutate(guard, pb.Invoice, self._invoices.create_draft(guard, customer_id, start,
                                                                            subscription_id))

    async def SplitDraft(self, request: pb.SplitDraftRequest, context: _Ctx) -> pb.SplitDraftResponse:
        invoice_id = check_id(request.invoice_id, "invoice_id")
        instants = unpack.timestamps(request.split_at, "split_at")
        covers = unpack.applications(request.unit_applications, "unit_applications")
        if any(not a.unit for a in covers):
            n = next(i for i, a in enumerate(covers) if not a.unit)
            raise invalid(f"unit_applications[{n}].unit", "is required: what a usage-unit lot covered")
        split = await self._invoices.split_draft(_tenant(), invoice_id, instants, covers)
        return pb.SplitDraftResponse(invoice=pack.invoice(split.view), charges=pack.pieces(split.charges, split.view),
                                     draft_digest=split.digest,
                                     unit_charges=pack.unit_pieces(split.unit_charges, split.view))

    # ---- two-phase ----------------------------------------------------------------------------

    async def PrepareFinalize(self, request: pb.PrepareFinalizeRequest, context: _Ctx) -> pb.Invoice:
        guard = _guard("PrepareFinalize", request, pack.invoice)
        run = self._invoices.prepare_finalize(
            guard, check_id(request.invoice_id, "invoice_id"), unpack.timestamps(request.split_at, "split_at"),
            unpack.applications(request.applications), check_text(request.draft_digest, "draft_digest", 64),
            unpack.credit_notes(request.credit_notes))
        return await _mutate(guard, pb.Invoice, run)

    async def CommitFinalize(self, request: pb.CommitFinalizeRequest, context: _Ctx) -> pb.Invoice:
        guard = _guard("CommitFinalize", request, pack.invoice)
        prepare_key = check_key(request.prepare_key, "prepare_key", required=False)
        run = self._invoices.commit_finalize(guard, check_id(request.invoice_id, "invoice_id"), prepare_key)
        return await _mutate(guard, pb.Invoice, run)

    async def AbortFinalize(self, request: pb.AbortFinalizeRequest, context: _Ctx) -> pb.Invoice:
        guard = _guard("AbortFinalize", request, pack.invoice)
        prepare_key = check_key(request.prepare_key, "prepare_key", required=False)
        check_text(request.reason, "reason")
        run = self._invoices.abort_finalize(guard, check_id(request.invoice_id, "invoice_id"), prepare_key)
        return await _mutate(guard, pb.Invoice, run)

    async def PrepareVoid(self, request: pb.PrepareVoidRequest, context: _Ctx) -> pb.Invoice:
        guard = _guard("PrepareVoid", request, pack.invoice)
        run = self._invoices.prepare_void(guard, check_id(request.invoice_id, "invoice_id"),
                                          check_text(request.reason, "reason"))
        return await _mutate(guard, pb.Invoice, run)

    async def CommitVoid(self, request: pb.CommitVoidRequest, context: _Ctx) -> pb.Invoice:
        guard = _guard("CommitVoid", request, pack.invoice)
        run = self._invoices.commit_void(guard, check_id(request.invoice_id, "invoice_id"))
        return await _mutate(guard, pb.Invoice, run)

    async def AbortVoid(self, request: pb.AbortVoidRequest, context: _Ctx) -> pb.Invoice:
        guard = _guard("AbortVoid", request, pack.invoice)
        run = self._invoices.abort_void(guard, check_id(request.invoice_id, "invoice_id"))
        return await _mutate(guard, pb.Invoice, run)

    async def AbandonInvoice(self, request: pb.AbandonInvoiceRequest, context: _Ctx) -> pb.Invoice:
        guard = _guard("AbandonInvoice", request, pack.invoice)
        run = self._invoices.abandon(guard, check_id(request.invoice_id, "invoice_id"),
                                     _reason(request.reason))
        return await _mutate(guard, pb.Invoice, run)

    # ---- reads --------------------------------------------------------------------------------

    async def GetInvoice(self, request: pb.GetInvoiceRequest, context: _Ctx) -> pb.Invoice:
        return pack.invoice(await self._invoices.get(_tenant(), check_id(request.invoice_id, "invoice_id")))

    async def ListInvoices(self, request: pb.ListInvoicesRequest, context: _Ctx) -> pb.ListInvoicesResponse:
        limit = page_size(request.page_size)
        f = ListFilter(
            customer_id=check_optional_id(request.customer_id, "customer_id"),
            statuses=tuple(_status_name(s, i) for i, s in enumerate(request.statuses)),
            prepared_before=(unpack.timestamp(request.prepared_before, True, "prepared_before")
                             if request.HasField("prepared_before") else None),
            period_start=(unpack.timestamp(request.period_start, True, "period_start")
                          if request.HasField("period_start") else None),
            after=unpack.invoice_cursor(request.page_token), limit=limit)
        views = await self._invoices.list_invoices(_tenant(), f)
        token = pack.invoice_token(views[-1]) if len(views) == limit else ""
        return pb.ListInvoicesResponse(invoices=[pack.invoice(v) for v in views], next_page_token=token)

    async def ExportInvoices(self, request: pb.ExportInvoicesRequest,
                             context: _Ctx) -> AsyncIterator[pb.InvoiceExportChunk]:
        if request.format not in (pb.INVOICE_EXPORT_FORMAT_UNSPECIFIED, pb.INVOICE_EXPORT_CSV, pb.INVOICE_EXPORT_JSON):
            raise invalid("format", "must be INVOICE_EXPORT_CSV or INVOICE_EXPORT_JSON")
        f = ListFilter(customer_id=check_optional_id(request.customer_id, "customer_id"),
                       statuses=tuple(_status_name(s, i) for i, s in enumerate(request.statuses)),
                       limit=EXPORT_PAGE)
        as_json, full = request.format == pb.INVOICE_EXPORT_JSON, request.line_items
        columns = exports.LINE_COLUMNS if full else exports.INVOICE_COLUMNS
        total = await self._invoices.count_invoices(_tenant(), f)
        done, first = 0, True
        async for views in self._invoices.invoice_pages(_tenant(), f, full=full):
            rows = [r for v in views for r in exports.line_rows(v)] if full else map(exports.invoice_row, views)
            done += len(views)
            yield pb.InvoiceExportChunk(data=render_rows(rows, columns, as_json, header=first),
                                        invoices_done=done, invoices_total=max(total, done))
            first = False
        if first:  # nothing matched: the header alone (CSV), so the file still says what it would hold
            yield pb.InvoiceExportChunk(data=render_rows((), columns, as_json, header=True), invoices_total=0)

    async def RenderInvoice(self, request: pb.RenderInvoiceRequest, context: _Ctx) -> pb.RenderInvoiceResponse:
        view = await self._invoices.get(_tenant(), check_id(request.invoice_id, "invoice_id"))
        if request.format == pb.JSON:
            return pb.RenderInvoiceResponse(content_type="application/json", content=render.to_json(view))
        if request.format not in (pb.TEXT, pb.RENDER_FORMAT_UNSPECIFIED):
            raise invalid("format", "must be TEXT or JSON")
        return pb.RenderInvoiceResponse(content_type="text/plain", content=render.to_text_invoice(view))

    # ---- usage analytics ------------------------------------------------------------------------

    def _window(self, request: pb.GetUsageSeriesRequest | pb.ListTopCustomersRequest,
                max_days: int) -> tuple[datetime, datetime]:
        end = from_timestamp(request.to, "to") if request.HasField("to") else datetime.now(UTC)
        start = from_timestamp(getattr(request, "from"), "from") if request.HasField("from") \
            else end - timedelta(days=30)
        if end <= start:
            raise invalid("to", "must be after from")
        if end - start > timedelta(days=max_days):
            raise invalid("to", f"at most {max_days} days after from")
        return start, end

    async def GetUsageSeries(self, request: pb.GetUsageSeriesRequest, context: _Ctx) -> pb.UsageSeries:
        customer_id = check_id(request.customer_id, "customer_id")
        meter = check_optional_id(request.meter_code, "meter_code")
        grain = {pb.USAGE_GRANULARITY_UNSPECIFIED: "day", pb.DAY: "day", pb.HOUR: "hour"}.get(request.granularity)
        if grain is None:
            raise invalid("granularity", "must be DAY or HOUR")
        start, end = self._window(request, 31 if grain == "hour" else 400)
        rows = await self._usage.series(_tenant(), customer_id, start, end, grain, meter)
        costs = bucket_costs(await self._usage.billed(_tenant(), customer_id, start, end, grain, meter))
        return pb.UsageSeries(customer_id=customer_id, points=[
            _usage_point(m, _stamp(at), _exact(v), n, costs.get((m, at))) for m, at, v, n in rows])

    async def ListTopCustomers(self, request: pb.ListTopCustomersRequest,
                               context: _Ctx) -> pb.ListTopCustomersResponse:
        meter = check_id(request.meter_code, "meter_code")
        if request.limit < 0:
            raise invalid("limit", "must not be negative")
        start, end = self._window(request, 400)
        rows = await self._usage.top(_tenant(), meter, start, end, min(request.limit or 10, 100))
        return pb.ListTopCustomersResponse(meter_code=meter, customers=[
            pb.CustomerUsage(customer_id=c, value=_exact(v), events=n) for c, v, n in rows])

    # ---- pricing rules: taxes and coupons -------------------------------------------------------

    async def SetTaxRule(self, request: pb.SetTaxRuleRequest, context: _Ctx) -> pb.TaxRule:
        guard = _guard("SetTaxRule", request, pack.tax_rule)
        return await _mutate(guard, pb.TaxRule, self._rules.set_tax_rule(guard, unpack.tax_rule(request)))

    async def ListTaxRules(self, request: pb.ListTaxRulesRequest, context: _Ctx) -> pb.ListTaxRulesResponse:
        limit = page_size(request.page_size)
        cursor = decode_token(request.page_token, 1)
        rules = await self._rules.list_tax_rules(_tenant(), cursor[0] if cursor else "", limit)
        return pb.ListTaxRulesResponse(rules=[pack.tax_rule(r) for r in rules],
                                       next_page_token=encode_token(rules[-1].region) if len(rules) == limit else "")

    async def SetCustomerTaxRegion(self, request: pb.SetCustomerTaxRegionRequest, context: _Ctx) -> pb.Customer:
        guard = _guard("SetCustomerTaxRegion", request, pack.customer)
        customer_id = check_id(request.customer_id, "customer_id")
        region = check_optional_id(request.tax_region, "tax_region")
        return await _mutate(guard, pb.Customer, self._rules.set_customer_tax_region(guard, customer_id, region))

    async def CreateCoupon(self, request: pb.CreateCouponRequest, context: _Ctx) -> pb.Coupon:
        guard = _guard("CreateCoupon", request, pack.coupon)
        return await _mutate(guard, pb.Coupon, self._rules.create_coupon(guard, unpack.coupon(request)))

    async def ListCoupons(self, request: pb.ListCouponsRequest, context: _Ctx) -> pb.ListCouponsResponse:
        limit = page_size(request.page_size)
        cursor = decode_token(request.page_token, 1)
        coupons = await self._rules.list_coupons(_tenant(), cursor[0] if cursor else "", limit)
        token = encode_token(coupons[-1].coupon_code) if len(coupons) == limit else ""
        return pb.ListCouponsResponse(coupons=[pack.coupon(c) for c in coupons], next_page_token=token)

    async def RedeemCoupon(self, request: pb.RedeemCouponRequest, context: _Ctx) -> pb.CouponRedemption:
        guard = _guard("RedeemCoupon", request, pack.redemption)
        customer_id = check_id(request.customer_id, "customer_id")
        coupon_code = check_id(request.coupon_code, "coupon_code")
        at = (unpack.timestamp(request.redeemed_at, True, "redeemed_at") if request.HasField("redeemed_at")
              else datetime.now(UTC))
        return await _mutate(guard, pb.CouponRedemption,
                             self._rules.redeem_coupon(guard, customer_id, coupon_code, at))

    # ---- the customer portal --------------------------------------------------------------------

    async def CreatePortalLink(self, request: pb.CreatePortalLinkRequest, context: _Ctx) -> pb.PortalLink:
        customer_id = check_id(request.customer_id, "customer_id")
        ttl_s = request.ttl_s or portal_sessions.DEFAULT_TTL_S
        if ttl_s < 60 or ttl_s > portal_sessions.MAX_TTL_S:
            raise invalid("ttl_s", f"must be between 60 and {portal_sessions.MAX_TTL_S} seconds")
        customer = await self._catalog.get_customer(_tenant(), customer_id)
        secret = portal_sessions.secret_from_env()
        if not secret:
            raise Rejection(Reason.PRECONDITION, f"portal links need {portal_sessions.SECRET_ENV} (32+ characters) "
                                                 "on this server")
        session = portal_sessions.mint(_tenant(), customer_id, customer.ledger_account_id, ttl_s, secret)
        token = portal_sessions.sign(session, secret)
        expires = Timestamp(seconds=session.expires_at)
        return pb.PortalLink(customer_id=customer_id, ledger_account_id=customer.ledger_account_id, token=token,
                             url=f"{Settings().portal_base_url}/s/{token}", expires_at=expires)


def _usage_point(meter: str, at: Timestamp, value: str, events: int, cost: BucketCost | None) -> pb.UsagePoint:
    point = pb.UsagePoint(meter_code=meter, bucket_start=at, value=value, events=events)
    if cost is not None and len(cost.by_currency) == 1:  # billed in several currencies: no one figure
        [(currency, (minor, credits))] = cost.by_currency.items()
        scale = currency_scale(currency)
        point.cost, point.credits_applied, point.currency = to_text(minor, scale), to_text(credits, scale), currency
    return point


def _status_name(value: int, i: int) -> str:
    if value == pb.INVOICE_STATUS_UNSPECIFIED or value not in pb.InvoiceStatus.values():
        raise invalid(f"statuses[{i}]", "must be DRAFT, PREPARED, FINALIZED, VOID_PENDING, VOIDED or ABANDONED")
    return pb.InvoiceStatus.Name(value)


def _reason(reason: str) -> str:
    """Why a period is abandoned: required, because nobody can read a silent write-off later."""
    if not reason.strip():
        raise invalid("reason", "is required: say why the period is not billed")
    return check_text(reason, "reason")
