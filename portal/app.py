"""The portal's web app: GET pages rendered on the server, a CSV download and a server-sent event
stream of the live balance. Every page needs the visitor's portal session (a cookie set by the link
`/s/<token>`); a missing or expired one is a 401 page, a tampered one a 403 page. There is no route
that changes anything (any other method is 405), and the services refuse a session's writes anyway.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
from credits.invoice.v1 import invoice_pb2 as ipb
from credits.ledger.v1 import ledger_pb2 as lpb
from google.protobuf.timestamp_pb2 import Timestamp
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from portal import backend as api
from portal import finance_pages, usage_chart
from portal.backend import Backend, Refused, Visitor
from service_runtime import portal_sessions
from service_runtime.portal_sessions import SessionRefused
from service_runtime.settings import Settings

HERE = Path(__file__).resolve().parent
COOKIE = "credits_portal"
USAGE_DAYS = 30
BILLED_DAYS = 366  # the usage, cost and credits table: a year of invoices (GetUsageSeries allows 400 days)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "frame-ancestors 'none'; form-action 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
GRPC_PAGES = {grpc.StatusCode.UNAUTHENTICATED: (401, "Your link has expired or is not valid"),
              grpc.StatusCode.PERMISSION_DENIED: (403, "This page is not part of your account"),
              grpc.StatusCode.NOT_FOUND: (404, "Not found"),
              grpc.StatusCode.INVALID_ARGUMENT: (400, "That request is not valid")}


def _when(ts: Timestamp) -> str:
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M UTC") if ts.seconds or ts.nanos else ""


def _day(ts: Timestamp) -> str:
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d") if ts.seconds or ts.nanos else ""


def _templates() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
    env.filters.update(when=_when, day=_day, lot_type=lambda t: lpb.LotType.Name(t).title(),
                       movement=lambda t: lpb.MovementType.Name(t).removeprefix("MOVEMENT_").replace("_", " ").title(),
                       status=lambda s: ipb.InvoiceStatus.Name(s).replace("_", " ").title(),
                       negative=lambda a: str(a).startswith("-"),
                       minus=lambda a, b: str(Decimal(a or 0) - Decimal(b or 0)),
                       money=finance_pages.money, rate=finance_pages.rate, duration=finance_pages.duration)
    return env


class Portal:
    def __init__(self, backend: Backend | None, settings: Settings) -> None:
        self.backend = backend
        self.settings = settings
        self.env = _templates()

    # --- sessions ---------------------------------------------------------------------------------

    async def visitor(self, request: Request) -> Visitor:
        """The request's customer. Every request also asks the ledger, which refuses a revoked link
        (RevokePortalLink): a revoked link stops at once, on every page, not when it expires."""
        who = self._session(request, portal_sessions.CUSTOMER)
        await api.balance(self.api(), who)  # the cheapest read a session may make; refused once revoked
        return who

    async def finance_visitor(self, request: Request) -> Visitor:
        """The request's finance session (a finance link's). The page's own report read is the check the
        services make: a finance session reaches only the report reads, and nothing of a customer's."""
        return self._session(request, portal_sessions.FINANCE)

    def _session(self, request: Request, kind: str) -> Visitor:
        token = request.cookies.get(COOKIE, "")
        if not token:
            raise Refused(401, "Please open your portal link", "This page needs the link your provider sent you.")
        who = Visitor(self._verify(token), token)
        if who.session.kind != kind:  # a customer link opens no finance page, a finance link no customer's
            raise Refused(403, "This page is not part of your link",
                          "This link opens " + ("the finance reports." if who.session.kind == portal_sessions.FINANCE
                                                else "one customer's account."))
        return who

    @staticmethod
    def _verify(token: str) -> portal_sessions.PortalSession:
        try:
            return portal_sessions.verify(token, portal_sessions.secret_from_env())
        except SessionRefused as refused:
            if refused.expired:
                raise Refused(401, "This link has expired",
                              "Ask your provider for a new link to your account.") from refused
            raise Refused(403, "This link is not valid", "The link was changed or was not issued by your provider. "
                                                         "Ask your provider for a new one.") from refused

    def page(self, name: str, code: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(name).render(**context)
        return HTMLResponse(html, status_code=code, headers=SECURITY_HEADERS)

    def api(self) -> Backend:
        assert self.backend is not None, "the portal's gRPC backend is connected at start-up"
        return self.backend

    # --- routes -------------------------------------------------------------------------------------

    async def open_link(self, request: Request) -> Response:
        token = request.path_params["token"]
        session = self._verify(token)
        if session.kind == portal_sessions.CUSTOMER:
            await api.balance(self.api(), Visitor(session, token))  # a revoked link opens nothing (the ledger says)
        home = "/finance" if session.kind == portal_sessions.FINANCE else "/"
        response = RedirectResponse(home, status_code=303, headers=SECURITY_HEADERS)
        response.set_cookie(COOKIE, token, max_age=max(1, session.expires_at - int(time.time())), httponly=True,
                            samesite="strict", secure=request.url.scheme == "https", path="/")
        return response

    async def _common(self, who: Visitor, active: str) -> dict[str, Any]:
        customer = await api.customer(self.api(), who)
        return {"customer": customer, "active": active, "expires": datetime.fromtimestamp(
            who.session.expires_at, UTC).strftime("%Y-%m-%d %H:%M UTC")}

    async def _units(self, who: Visitor) -> list[str]:
        balance = await api.balance(self.api(), who)
        return [t.unit for t in balance.totals] or [""]

    async def overview(self, request: Request) -> Response:
        who = await self.visitor(request)
        statements = [await api.statement(self.api(), who, unit=u, page_size=1) for u in await self._units(who)]
        return self.page("overview.html", statements=statements, **await self._common(who, "overview"))

    async def transactions(self, request: Request) -> Response:
        who = await self.visitor(request)
        unit = (await self._units(who))[0]
        st = await api.statement(self.api(), who, unit=unit, page_size=100,
                                 page_token=request.query_params.get("page", ""))
        numbers = {i.invoice_id: i.number or i.invoice_id for i in await api.invoices(self.api(), who)}
        return self.page("transactions.html", st=st, invoice_numbers=numbers, **await self._common(who, "transactions"))

    async def invoices(self, request: Request) -> Response:
        who = await self.visitor(request)
        found = await api.invoices(self.api(), who)
        return self.page("invoices.html", invoices=found, **await self._common(who, "invoices"))

    async def invoice(self, request: Request) -> Response:
        who = await self.visitor(request)
        inv = await api.invoice(self.api(), who, request.path_params["invoice_id"])
        by_line: dict[str, list[ipb.CreditApplication]] = {}
        for a in inv.applications:
            by_line.setdefault(a.line_item_id, []).append(a)
        return self.page("invoice.html", inv=inv, by_line=by_line, **await self._common(who, "invoices"))

    async def usage(self, request: Request) -> Response:
        who = await self.visitor(request)
        unit = (await self._units(who))[0]
        today = datetime.now(UTC).date()
        points: list[tuple[date, str, Decimal]] = []
        async for line in api.statement_lines(self.api(), who, unit, USAGE_DAYS):
            if line.type == lpb.MOVEMENT_CONSUMPTION:
                day = line.recorded_at.ToDatetime(tzinfo=UTC).date()
                for item in line.items:
                    points.append((day, item.name, Decimal(item.amount)))
        series = usage_chart.per_meter_per_day(points, today - timedelta(days=USAGE_DAYS - 1), today)
        charts = [(s, Markup(usage_chart.svg(s, unit))) for s in series]
        billed = usage_chart.billed_by_meter(await api.usage_series(self.api(), who, BILLED_DAYS))
        return self.page("usage.html", charts=charts, billed=billed, unit=unit, days=USAGE_DAYS,
                         billed_days=BILLED_DAYS,
                         **await self._common(who, "usage"))

    async def export(self, request: Request) -> Response:
        who = await self.visitor(request)
        unit = (await self._units(who))[0]
        chunks = api.export_csv(self.api(), who, unit)

        async def body() -> AsyncIterator[bytes]:
            async for chunk in chunks:
                yield chunk.data

        name = f"statement-{who.session.customer_id}-{datetime.now(UTC):%Y%m%d}.csv"
        return StreamingResponse(body(), media_type="text/csv; charset=utf-8", headers={
            **SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="{name}"'})

    async def events(self, request: Request) -> Response:
        """The live balance as server-sent events, fed by WatchBalance (resumes from Last-Event-ID)."""
        who = await self.visitor(request)
        after = request.headers.get("last-event-id", "")
        stream = api.watch(self.api(), who, int(after) if after.isdigit() else 0)

        async def body() -> AsyncIterator[bytes]:
            with contextlib.suppress(grpc.aio.AioRpcError):
                async for message in stream:
                    events = []
                    for change in (message, *message.following):  # one event per change, each resumable
                        data = {"type": lpb.ChangeType.Name(change.type).removeprefix("CHANGE_"),
                                "sequence": change.sequence,
                                "balances": [{"unit": b.unit, "available": b.available, "held": b.held,
                                              "balance": b.balance} for b in change.balances]}
                        events.append(f"id: {change.sequence}\nevent: balance\ndata: {json.dumps(data)}\n\n")
                    yield "".join(events).encode()

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={**SECURITY_HEADERS, "X-Accel-Buffering": "no"})

    async def healthz(self, request: Request) -> Response:
        """Liveness: the process answers (no session, no backend call)."""
        return PlainTextResponse("ok", headers=SECURITY_HEADERS)

    async def readyz(self, request: Request) -> Response:
        """Readiness: the ledger and invoice services both answer their gRPC health check SERVING."""
        down = await api.not_serving(self.api())
        return PlainTextResponse("ok" if not down else "not serving: " + ", ".join(down),
                                 status_code=200 if not down else 503, headers=SECURITY_HEADERS)

    async def refused(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, Refused):
            return self.page("error.html", exc.status, title=exc.title, detail=exc.detail, status=exc.status)
        assert isinstance(exc, grpc.aio.AioRpcError)
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in (exc.details() or ""):
            return self.page("error.html", 403, title="This link has been revoked", status=403,
                             detail="Your provider ended this link. Ask them for a new one.")
        status, title = GRPC_PAGES.get(exc.code(), (502, "The service is not available right now"))
        detail = exc.details() or "" if status == 400 else ""  # names the field (a period, an instant)
        return self.page("error.html", status, title=title, detail="Please try again later." if status == 502
                         else detail, status=status)


def create_app(settings: Settings | None = None, backend: Backend | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    portal = Portal(backend, settings)
    books = finance_pages.FinancePages(portal, SECURITY_HEADERS)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        own = portal.backend is None
        if own:
            portal.backend = Backend.connect(settings.ledger_addr, settings.invoice_addr)
        try:
            yield
        finally:
            if own and portal.backend is not None:
                await portal.backend.close()

    routes = [
        Route("/", portal.overview, methods=["GET"], name="overview"),
        Route("/s/{token}", portal.open_link, methods=["GET"]),
        Route("/transactions", portal.transactions, methods=["GET"]),
        Route("/invoices", portal.invoices, methods=["GET"]),
        Route("/invoices/{invoice_id}", portal.invoice, methods=["GET"]),
        Route("/usage", portal.usage, methods=["GET"]),
        Route("/statement.csv", portal.export, methods=["GET"]),
        Route("/events", portal.events, methods=["GET"]),
        Route("/finance", books.revenue, methods=["GET"]),   # a finance link's pages (finance_pages)
        Route("/finance/liability", books.liability, methods=["GET"]),
        Route("/finance/breakage", books.breakage, methods=["GET"]),
        Route("/finance/program", books.program, methods=["GET"]),
        Route("/finance/journal", books.journal, methods=["GET"]),
        Route("/finance/journal.csv", books.journal_file, methods=["GET"]),
        Route("/finance/journal.json", books.journal_file, methods=["GET"]),
        Route("/healthz", portal.healthz, methods=["GET"]),   # the Kubernetes probes (deploy/k8s/portal.yaml)
        Route("/readyz", portal.readyz, methods=["GET"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={Refused: portal.refused, grpc.aio.AioRpcError: portal.refused})
