"""The portal's gRPC client: the ledger and invoice APIs, called with the visitor's portal session in
place of an API key, so the services themselves keep the visitor to one customer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property

import grpc
from credits.finance.v1 import finance_pb2_grpc
from credits.invoice.v1 import invoice_pb2 as ipb
from credits.invoice.v1 import invoice_pb2_grpc
from credits.ledger.v1 import ledger_pb2 as lpb
from credits.ledger.v1 import ledger_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service_runtime.portal_sessions import PortalSession
from service_runtime.tls import open_channel


class Refused(Exception):
    """A page the portal answers itself (status, title, detail), e.g. 401 for a missing link, 400 for a
    malformed query value naming it."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(title)
        self.status, self.title, self.detail = status, title, detail


@dataclass
class Backend:
    ledger: ledger_pb2_grpc.LedgerServiceStub
    invoices: invoice_pb2_grpc.InvoiceServiceStub
    channels: tuple[grpc.aio.Channel, ...]

    @classmethod
    def connect(cls, ledger_addr: str, invoice_addr: str) -> Backend:
        lc, ic = open_channel(ledger_addr), open_channel(invoice_addr)  # TLS / mTLS when configured
        return cls(ledger_pb2_grpc.LedgerServiceStub(lc), invoice_pb2_grpc.InvoiceServiceStub(ic), (lc, ic))

    @cached_property
    def finance(self) -> finance_pb2_grpc.FinanceServiceStub:
        """The finance books' API, served by the ledger server (a finance session's reports)."""
        return finance_pb2_grpc.FinanceServiceStub(self.channels[0])

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


async def not_serving(backend: Backend, timeout_s: float = 2.0) -> list[str]:
    """Which of the ledger and invoice services do not answer their gRPC health check SERVING."""
    down = []
    for name, channel in zip(("ledger", "invoice"), backend.channels, strict=True):
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
            if reply.status != health_pb2.HealthCheckResponse.SERVING:
                down.append(name)
        except grpc.aio.AioRpcError:
            down.append(name)
    return down


@dataclass(frozen=True)
class Visitor:
    """One request's customer: the session and the token that proves it."""

    session: PortalSession
    token: str

    @property
    def md(self) -> list[tuple[str, str]]:
        return [("x-api-key", self.token)]


def _ts(value: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(value)
    return out


async def statement(backend: Backend, who: Visitor, *, unit: str = "", days: int | None = None,
                    page_size: int = 200, page_token: str = "") -> lpb.Statement:
    request = lpb.GetStatementRequest(account_id=who.session.account_id, unit=unit, page_size=page_size,
                                      page_token=page_token)
    if days is not None:
        getattr(request, "from").CopyFrom(_ts(datetime.now(UTC) - timedelta(days=days)))
    return await backend.ledger.GetStatement(request, metadata=who.md)


async def statement_lines(backend: Backend, who: Visitor, unit: str, days: int) -> AsyncIterator[lpb.StatementLine]:
    token = ""
    while True:
        page = await statement(backend, who, unit=unit, days=days, page_size=1000, page_token=token)
        for line in page.lines:
            yield line
        token = page.next_page_token
        if not token:
            return


async def balance(backend: Backend, who: Visitor) -> lpb.Balance:
    return await backend.ledger.GetBalance(lpb.GetBalanceRequest(account_id=who.session.account_id),
                                           metadata=who.md)


async def customer(backend: Backend, who: Visitor) -> ipb.Customer:
    return await backend.invoices.GetCustomer(ipb.GetCustomerRequest(customer_id=who.session.customer_id),
                                              metadata=who.md)


async def invoices(backend: Backend, who: Visitor) -> list[ipb.Invoice]:
    out: list[ipb.Invoice] = []
    token = ""
    while True:
        page = await backend.invoices.ListInvoices(ipb.ListInvoicesRequest(
            customer_id=who.session.customer_id, page_size=1000, page_token=token), metadata=who.md)
        out.extend(page.invoices)
        token = page.next_page_token
        if not token or len(out) >= 5000:
            return out


async def invoice(backend: Backend, who: Visitor, invoice_id: str) -> ipb.Invoice:
    return await backend.invoices.GetInvoice(ipb.GetInvoiceRequest(invoice_id=invoice_id), metadata=who.md)


async def usage_series(backend: Backend, who: Visitor, days: int) -> list[ipb.UsagePoint]:
    """The customer's usage per meter per day over the last `days` days, with what each day was billed
    and the credit that paid it (empty while its period is a draft)."""
    end = datetime.now(UTC)
    request = ipb.GetUsageSeriesRequest(customer_id=who.session.customer_id, to=_ts(end))
    getattr(request, "from").CopyFrom(_ts(end - timedelta(days=days)))
    return list((await backend.invoices.GetUsageSeries(request, metadata=who.md)).points)


def export_csv(backend: Backend, who: Visitor, unit: str) -> AsyncIterator[lpb.ExportChunk]:
    return backend.ledger.ExportStatement(lpb.ExportStatementRequest(
        account_id=who.session.account_id, unit=unit, format=lpb.EXPORT_CSV, kind=lpb.EXPORT_STATEMENT),
        metadata=who.md)


def watch(backend: Backend, who: Visitor, after: int = 0) -> AsyncIterator[lpb.BalanceChange]:
    return backend.ledger.WatchBalance(lpb.WatchBalanceRequest(account_id=who.session.account_id,
                                                               after_sequence=after), metadata=who.md)
