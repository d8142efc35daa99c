"""FinanceService gRPC servicer: unpack, catch the books up, read or act, pack. No rules, no SQL here."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from credits.finance.v1 import finance_pb2 as pb
from credits.finance.v1 import finance_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from finance.api import packing
from finance.domain.periods import Granularity, Period, parse_period, period_of
from finance.domain.rules import parse_rules, rules_json
from finance.storage import periods, projector, reads
from ledger_service.storage.catalog import BUILTIN_UNITS
from service_runtime import portal_sessions
from service_runtime.grpc_server import current_caller
from service_runtime.idempotency import remember, request_hash, run_idempotent, stored_response
from service_runtime.identifiers import check_key
from service_runtime.pages import decode_token, encode_token, page_size
from service_runtime.permissions import FINANCE_SERVICE
from service_runtime.proto_time import from_timestamp, to_timestamp
from service_runtime.rejections import Reason, Rejection, invalid
from service_runtime.settings import Settings

SERVICE = FINANCE_SERVICE
INSERT_RULES = """
INSERT INTO finance_rules (tenant_id, version, rules, set_by)
SELECT $1, coalesce(max(version), 0) + 1, $2, $3 FROM finance_rules WHERE tenant_id = $1
RETURNING version
"""
UNIT_SCALES = "SELECT code, scale FROM units WHERE tenant_id = $1"
MAX_RULES_CHARS = 65_536


def _tenant() -> str:
    return current_caller().tenant_id


def _granularity(value: int) -> Granularity:
    return Granularity.DAY if value == pb.DAY else Granularity.MONTH


def _window(first: str, last: str, granularity: Granularity) -> tuple[datetime, datetime]:
    """[start of the first period, end of the last] of `granularity`, from two period names."""
    start = parse_period(first, "from_period")
    end = parse_period(last, "to_period") if last else start
    if start.granularity is not end.granularity:
        raise invalid("to_period", "must be of the same kind as from_period (two months or two days)")
    if end.end <= start.start:
        raise invalid("to_period", "is before from_period")
    if start.granularity is Granularity.DAY and granularity is Granularity.MONTH:
        start, end = period_of(start.start, granularity), period_of(end.start, granularity)
    return start.start, end.end


class FinanceServicer(finance_pb2_grpc.FinanceServiceServicer):
    def __init__(self, pool: asyncpg.Pool, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._pool = pool
        self._clock = clock

    async def _caught_up(self) -> str:
        tenant = _tenant()
        await projector.project(self._pool, tenant)
        return tenant

    async def GetFinanceRules(self, request: pb.GetFinanceRulesRequest, context: Any) -> pb.FinanceRules:
        async with self._pool.acquire() as conn:
            rules = await projector.rules_of(conn, _tenant())
        return pb.FinanceRules(version=rules.version, rules_json=rules_json(rules))

    async def SetFinanceRules(self, request: pb.SetFinanceRulesRequest, context: Any) -> pb.FinanceRules:
        key = check_key(request.idempotency_key)
        if len(request.rules_json) > MAX_RULES_CHARS:
            raise invalid("rules_json", f"is longer than {MAX_RULES_CHARS} characters")
        rules = parse_rules(request.rules_json)
        text = rules_json(rules)
        caller = current_caller()

        async def work(conn: asyncpg.Connection) -> pb.FinanceRules:
            version = await conn.fetchval(INSERT_RULES, caller.tenant_id, text, caller.principal)
            return pb.FinanceRules(version=version, rules_json=text)

        out = await run_idempotent(self._pool, caller.tenant_id, key, f"/{SERVICE}/SetFinanceRules", request,
                                   work, lambda r: r)
        return pb.FinanceRules.FromString(out) if isinstance(out, bytes) else out  # type: ignore[return-value]

    async def ProjectBooks(self, request: pb.ProjectBooksRequest, context: Any) -> pb.BooksStatus:
        tenant = _tenant()
        projected = await projector.project(self._pool, tenant)
        async with self._pool.acquire() as conn:
            return packing.status(await reads.status(conn, tenant), projected)

    async def ClosePeriod(self, request: pb.ClosePeriodRequest, context: Any) -> pb.ClosePeriodResponse:
        key = check_key(request.idempotency_key)
        period = parse_period(request.period)
        caller = current_caller()
        method = f"/{SERVICE}/ClosePeriod"
        async with self._pool.acquire() as conn:  # a replay (or a key reused for another period) closes nothing
            stored = await stored_response(conn, caller.tenant_id, key, method, request_hash(request))
        if stored is not None:
            return pb.ClosePeriodResponse.FromString(stored)
        closed = await periods.close_period(self._pool, caller.tenant_id, period, caller.principal, self._clock())
        response = pb.ClosePeriodResponse(period=period.name, already_closed=closed.already_closed,
                                          closed_through=to_timestamp(closed.closed_through))
        await remember(self._pool, caller.tenant_id, key, method, request_hash(request), response, if_absent=True)
        return response

    async def GetRevenueReport(self, request: pb.GetRevenueReportRequest, context: Any) -> pb.RevenueReport:
        granularity = _granularity(request.granularity)
        start, end = _window(request.from_period, request.to_period, granularity)
        tenant = await self._caught_up()
        async with self._pool.acquire() as conn:
            rows = await reads.revenue(conn, tenant, start, end, granularity)
        return pb.RevenueReport(rows=[packing.revenue_row(r, granularity) for r in rows])

    async def GetLiabilityReport(self, request: pb.GetLiabilityReportRequest, context: Any) -> pb.LiabilityReport:
        now = self._clock()
        as_of = from_timestamp(request.as_of, "as_of") if request.HasField("as_of") else now
        if as_of > now:
            raise invalid("as_of", "is in the future")
        tenant = await self._caught_up()
        async with self._pool.acquire() as conn:
            rows = await reads.liability(conn, tenant, as_of, request.by_customer)
        return pb.LiabilityReport(as_of=to_timestamp(as_of), rows=[packing.liability_row(x) for x in rows])

    async def GetLiabilityRollForward(self, request: pb.GetLiabilityRollForwardRequest,
                                      context: Any) -> pb.LiabilityRollForward:
        period: Period = parse_period(request.period)
        tenant = await self._caught_up()
        async with self._pool.acquire() as conn:
            rows = await reads.roll_forward(conn, tenant, period)
        return pb.LiabilityRollForward(period=period.name, rows=[packing.roll_forward_row(r) for r in rows])

    async def GetBreakageReport(self, request: pb.GetBreakageReportRequest, context: Any) -> pb.BreakageReport:
        granularity = _granularity(request.granularity)
        start, end = _window(request.from_period, request.to_period, granularity)
        tenant = await self._caught_up()
        async with self._pool.acquire() as conn:
            rows = await reads.breakage(conn, tenant, start, end, granularity)
        return pb.BreakageReport(rows=[packing.breakage_row(r, granularity) for r in rows])

    async def GetProgramReport(self, request: pb.GetProgramReportRequest, context: Any) -> pb.ProgramReport:
        first = parse_period(request.from_period, "from_period")
        start, end = _window(request.from_period, request.to_period, first.granularity)
        tenant = await self._caught_up()
        async with self._pool.acquire() as conn:
            rows = await reads.program(conn, tenant, start, end)
            scales = {**BUILTIN_UNITS, **{r["code"]: r["scale"] for r in await conn.fetch(UNIT_SCALES, tenant)}}
        return pb.ProgramReport(rows=[packing.program_row(r, scales) for r in rows])

    async def ExportJournal(self, request: pb.ExportJournalRequest, context: Any) -> pb.ExportJournalResponse:
        period = parse_period(request.period)
        size = page_size(request.page_size)
        token = decode_token(request.page_token, 2)
        try:
            after = (int(token[0]), int(token[1])) if token else (0, 0)
        except ValueError:
            raise invalid("page_token", "is not a page token this service issued") from None
        tenant = await self._caught_up() if token is None else _tenant()
        async with self._pool.acquire() as conn:
            rows = await reads.journal_page(conn, tenant, period, after, size + 1)
        more = len(rows) > size
        rows = rows[:size]
        next_token = encode_token(rows[-1]["entry_id"], rows[-1]["line_no"]) if more and rows else ""
        return pb.ExportJournalResponse(lines=[packing.journal_line(r) for r in rows], next_page_token=next_token)

    async def CreateFinanceLink(self, request: pb.CreateFinanceLinkRequest, context: Any) -> pb.FinanceLink:
        """A finance session for the web portal's finance pages (portal_sessions, kind `finance`)."""
        ttl_s = request.ttl_s or portal_sessions.DEFAULT_TTL_S
        if ttl_s < 60 or ttl_s > portal_sessions.MAX_TTL_S:
            raise invalid("ttl_s", f"must be between 60 and {portal_sessions.MAX_TTL_S} seconds")
        secret = portal_sessions.secret_from_env()
        if not secret:
            raise Rejection(Reason.PRECONDITION, f"finance links need {portal_sessions.SECRET_ENV} (32+ characters) "
                                                 "on this server")
        session = portal_sessions.mint_finance(_tenant(), ttl_s, secret)
        token = portal_sessions.sign(session, secret)
        return pb.FinanceLink(token=token, url=f"{Settings().portal_base_url}/s/{token}",
                              expires_at=Timestamp(seconds=session.expires_at))
