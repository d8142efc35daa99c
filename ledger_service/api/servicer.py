"""LedgerService gRPC servicer: each method unpacks (`mapping`), calls one operation, packs (`packing`).

No SQL and no rules here: the operations (`ledger_service.operations`) apply the domain rules and
write through storage, idempotency and audit included.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
import grpc
from credits.ledger.v1 import ledger_pb2 as pb
from credits.ledger.v1 import ledger_pb2_grpc
from google.protobuf.message import Message

from ledger_service.api import exports, packing
from ledger_service.api import mapping as m
from ledger_service.domain.statements import StatementMismatch
from ledger_service.operations import (
    accounts_and_units,
    balance_watch,
    batch_debits,
    grants,
    holds,
    lots_and_balances,
    policy,
    portal_links,
    rates,
    reversals_and_transfers,
    statements,
    sweeps,
)
from ledger_service.operations.calls import Call
from ledger_service.operations.context import Ledger, utc_now
from ledger_service.operations.grants import ApprovalWire
from ledger_service.storage import portal_links as revocations
from ledger_service.storage.balance_feed import BalanceFeed
from service_runtime.grpc_server import current_caller
from service_runtime.identifiers import check_id, check_key
from service_runtime.permissions import LEDGER_SERVICE
from service_runtime.portal_sessions import SessionRefused
from service_runtime.rejections import Reason, Rejection
from service_runtime.settings import Settings

M = TypeVar("M", bound=Message)
R = TypeVar("R", pb.ReverseHoldResponse, pb.ReverseReferenceResponse)
SERVICE = LEDGER_SERVICE
log = logging.getLogger(__name__)


def _path(name: str) -> str:
    return f"/{SERVICE}/{name}"


_DEBIT_WIRE = packing.DebitWire()


def _tenant() -> str:
    return current_caller().tenant_id


class LedgerServicer(ledger_pb2_grpc.LedgerServiceServicer):
    def __init__(self, pool: asyncpg.Pool, settings: Settings, clock: Callable[[], datetime] = utc_now,
                 listen_dsn: str = "") -> None:
        self._ledger = Ledger.create(pool, settings, clock)
        self._feed = BalanceFeed(pool, listen_dsn) if listen_dsn else None  # WatchBalance: LISTEN/NOTIFY
        self._skew = settings.clock_skew_s
        self._horizon = settings.lot_horizon_s
        self._approvals = ApprovalWire(m.stored_grant, packing.lot, pb.Lot, packing.grant_request)

    def _call(self, name: str, request: Message, response: type[M], earlier: tuple[str, ...] = ()) -> Call[M]:
        """The mutating call `name` by the current caller; every mutation requires its idempotency key."""
        key = check_key(request.idempotency_key)  # type: ignore[attr-defined]
        return Call(current_caller(), _path(name), request, key, response, earlier)

    def _now(self) -> datetime:
        return self._ledger.now()

    # --- accounts and units -------------------------------------------------------------------

    async def CreateAccount(self, request: pb.CreateAccountRequest, context: Any) -> pb.Account:
        call = self._call("CreateAccount", request, pb.Account)
        return await accounts_and_units.create_account(self._ledger, call, m.new_account(request), packing.account)

    async def GetAccount(self, request: pb.GetAccountRequest, context: Any) -> pb.Account:
        account_id = check_id(request.account_id, "account_id")
        return await accounts_and_units.get_account(self._ledger, _tenant(), account_id, packing.account)

    async def ListAccounts(self, request: pb.ListAccountsRequest, context: Any) -> pb.ListAccountsResponse:
        found, token = await accounts_and_units.list_accounts(self._ledger, _tenant(), m.account_query(request),
                                                              packing.account)
        return pb.ListAccountsResponse(accounts=found, next_page_token=token)

    async def DefineUnit(self, request: pb.DefineUnitRequest, context: Any) -> pb.Unit:
        call = self._call("DefineUnit", request, pb.Unit)
        code, scale = m.unit_definition(request)
        return await accounts_and_units.define_unit(self._ledger, call, code, scale, packing.unit)

    async def ListUnits(self, request: pb.ListUnitsRequest, context: Any) -> pb.ListUnitsResponse:
        return packing.units(await accounts_and_units.list_units(self._ledger, _tenant()))

    # --- conversion rates ----------------------------------------------------------------------

    async def PublishRate(self, request: pb.PublishRateRequest, context: Any) -> pb.Rate:
        call = self._call("PublishRate", request, pb.Rate)
        return await rates.publish_rate(self._ledger, call, m.rate_publication(request, self._now()), packing.rate)

    async def ListRates(self, request: pb.ListRatesRequest, context: Any) -> pb.ListRatesResponse:
        unit, currency = m.rate_filter(request)
        return await rates.list_rates(self._ledger, _tenant(), unit, currency, packing.rates)

    # --- lots and grants ----------------------------------------------------------------------

    async def GrantCredits(self, request: pb.GrantCreditsRequest, context: Any) -> pb.Lot:
        call = self._call("GrantCredits", request, pb.Lot)
        order = m.grant(request, self._now(), self._horizon)
        return await grants.grant_credits(self._ledger, call, order, packing.lot, packing.pending_lot)

    async def GetLot(self, request: pb.GetLotRequest, context: Any) -> pb.Lot:
        lot_id = check_id(request.lot_id, "lot_id")
        as_of = m.opt_when(request, "as_of")
        pack = functools.partial(packing.lot, at=as_of or self._now())
        return await lots_and_balances.get_lot(self._ledger, _tenant(), lot_id, as_of, pack)

    async def ListLots(self, request: pb.ListLotsRequest, context: Any) -> pb.ListLotsResponse:
        pack = functools.partial(packing.lot, at=self._now())
        lots, token = await lots_and_balances.list_lots(self._ledger, _tenant(), m.lot_query(request), pack)
        return pb.ListLotsResponse(lots=lots, next_page_token=token)

    async def VoidGrant(self, request: pb.VoidGrantRequest, context: Any) -> pb.VoidGrantResponse:
        call = self._call("VoidGrant", request, pb.VoidGrantResponse)
        lot_id, reason = m.void(request)
        return await grants.void_grant(self._ledger, call, lot_id, reason, packing.void_result)

    # --- support grants: limits and the two-person rule (service_runtime/permissions.py) --------

    async def SetSupportGrantLimits(self, request: pb.SetSupportGrantLimitsRequest,
                                    context: Any) -> pb.SupportGrantLimits:
        call = self._call("SetSupportGrantLimits", request, pb.SupportGrantLimits)
        unit, per_grant, per_day, threshold = m.support_limits(request)
        return await grants.set_support_grant_limits(self._ledger, call, unit, per_grant, per_day,
                                                     packing.support_limits, threshold)

    async def GetSupportGrantLimits(self, request: pb.GetSupportGrantLimitsRequest,
                                    context: Any) -> pb.SupportGrantLimits:
        unit = check_id(request.unit, "unit")
        return await grants.get_support_grant_limits(self._ledger, _tenant(), unit, packing.support_limits)

    async def GetGrantRequest(self, request: pb.GetGrantRequestRequest, context: Any) -> pb.GrantRequest:
        request_id = check_id(request.request_id, "request_id")
        return await grants.get_grant_request(self._ledger, _tenant(), request_id, packing.grant_request)

    async def ListGrantRequests(self, request: pb.ListGrantRequestsRequest,
                                context: Any) -> pb.ListGrantRequestsResponse:
        found, token = await grants.list_grant_requests(self._ledger, _tenant(), m.grant_request_query(request),
                                                        packing.grant_request)
        return pb.ListGrantRequestsResponse(requests=found, next_page_token=token)

    async def ApproveGrantRequest(self, request: pb.ApproveGrantRequestRequest, context: Any) -> pb.GrantRequest:
        call = self._call("ApproveGrantRequest", request, pb.GrantRequest)
        request_id, reason = m.decision(request)
        return await grants.approve_grant_request(self._ledger, call, request_id, reason, self._approvals)

    async def RejectGrantRequest(self, request: pb.RejectGrantRequestRequest, context: Any) -> pb.GrantRequest:
        request_id, reason = m.rejection(request)
        call = self._call("RejectGrantRequest", request, pb.GrantRequest)
        return await grants.reject_grant_request(self._ledger, call, request_id, reason, self._approvals)

    # --- reads --------------------------------------------------------------------------------

    async def GetBalance(self, request: pb.GetBalanceRequest, context: Any) -> pb.Balance:
        account_id = check_id(request.account_id, "account_id")
        return await lots_and_balances.get_balance(self._ledger, _tenant(), account_id, m.opt_when(request, "as_of"),
                                                   packing.balance)

    async def ListEntries(self, request: pb.ListEntriesRequest, context: Any) -> pb.ListEntriesResponse:
        entries, token = await lots_and_balances.list_entries(self._ledger, _tenant(), m.entry_query(request),
                                                              packing.entry)
        return pb.ListEntriesResponse(entries=entries, next_page_token=token)

    async def GetLotBoundaries(self, request: pb.GetLotBoundariesRequest,
                               context: Any) -> pb.GetLotBoundariesResponse:
        account_id, unit, start, end = m.boundaries(request)
        instants = await lots_and_balances.get_lot_boundaries(self._ledger, _tenant(), account_id, unit, start, end)
        return packing.boundaries(instants)

    async def ExplainAllocation(self, request: pb.ExplainAllocationRequest,
                                context: Any) -> pb.ExplainAllocationResponse:
        hold_key = m.hold_key(request.hold_key)
        return await holds.explain_allocation(self._ledger, _tenant(), hold_key, packing.explanation)

    async def VerifyJournal(self, request: pb.VerifyJournalRequest, context: Any) -> pb.VerifyJournalResponse:
        return packing.verification(await lots_and_balances.verify_journal(self._ledger, _tenant()))

    # --- statements, exports, the balance stream ----------------------------------------------

    async def GetStatement(self, request: pb.GetStatementRequest, context: Any) -> pb.Statement:
        query = m.statement_query(request)
        try:
            return await statements.get_statement(self._ledger, _tenant(), query, packing.statement)
        except StatementMismatch as bug:  # the statement and the ledger disagree: never shown as a statement
            log.error("statement of %s does not reconcile: %s", query.account_id, bug)
            await context.abort(grpc.StatusCode.INTERNAL, f"statement does not reconcile with the ledger: {bug}")
            raise

    async def ExportStatement(self, request: pb.ExportStatementRequest, context: Any) -> AsyncIterator[pb.ExportChunk]:
        query, raw, as_json = m.export_query(request)
        first = True
        try:
            async for progress in statements.export(self._ledger, _tenant(), query, raw):
                yield exports.chunk(progress, raw, as_json, first)
                first = False
        except StatementMismatch as bug:
            log.error("export of %s does not reconcile: %s", query.account_id, bug)
            await context.abort(grpc.StatusCode.INTERNAL, f"statement does not reconcile with the ledger: {bug}")

    async def WatchBalance(self, request: pb.WatchBalanceRequest, context: Any) -> AsyncIterator[pb.BalanceChange]:
        account_id, after, include_entries = m.watch(request)
        if self._feed is None:
            raise Rejection(Reason.PRECONDITION, "this server was started without a database to LISTEN on")
        scales: dict[str, int] = {}
        session = current_caller().portal  # a portal link's live balance ends at the first change after revoking it
        async for message in balance_watch.watch(self._feed, _tenant(), account_id, after):
            if session is not None and await revocations.is_revoked(self._ledger.pool, session):
                raise SessionRefused("portal link revoked")
            for change in (message.change, *message.following):
                for unit in change.balances:
                    if unit not in scales:
                        scales[unit] = await self._ledger.scale(_tenant(), unit)
            # serialized once per change for every stream of the account (call_guard.passing_bytes)
            yield packing.balance_change_bytes(account_id, message, scales, include_entries)  # type: ignore[misc]

    async def RevokePortalLink(self, request: pb.RevokePortalLinkRequest,
                               context: Any) -> pb.PortalLinkRevocation:
        call = self._call("RevokePortalLink", request, pb.PortalLinkRevocation)
        session = m.portal_link(request.link, call.tenant_id)
        return await portal_links.revoke_portal_link(self._ledger, call, session, m.text(request.reason, "reason"),
                                                     packing.portal_revocation)

    # --- policy -------------------------------------------------------------------------------

    async def SetConsumptionPolicy(self, request: pb.SetConsumptionPolicyRequest,
                                   context: Any) -> pb.ConsumptionPolicy:
        call = self._call("SetConsumptionPolicy", request, pb.ConsumptionPolicy)
        account_id, sort_keys, type_order = m.consumption_policy(request)
        return await policy.set_consumption_policy(self._ledger, call, account_id, sort_keys, type_order,
                                                   packing.policy_row)

    async def GetConsumptionPolicy(self, request: pb.GetConsumptionPolicyRequest,
                                   context: Any) -> pb.ConsumptionPolicy:
        account_id = check_id(request.account_id, "account_id", required=False)
        return await policy.get_consumption_policy(self._ledger, _tenant(), account_id, packing.policy_row)

    # --- holds and debits ---------------------------------------------------------------------

    async def ReserveCredits(self, request: pb.ReserveCreditsRequest, context: Any) -> pb.Hold:
        call = self._call("ReserveCredits", request, pb.Hold)
        reserve = m.reserve(request, self._now(), self._skew)
        return await holds.reserve_credits(self._ledger, call, reserve, packing.hold)

    async def CommitHold(self, request: pb.CommitHoldRequest, context: Any) -> pb.Hold:
        call = self._call("CommitHold", request, pb.Hold)
        hold_key, amount = m.commit(request)
        return await holds.commit_hold(self._ledger, call, hold_key, amount, packing.hold)

    async def ReleaseHold(self, request: pb.ReleaseHoldRequest, context: Any) -> pb.Hold:
        call = self._call("ReleaseHold", request, pb.Hold)
        hold_key, account_id, reason = m.release(request)
        return await holds.release_hold(self._ledger, call, hold_key, account_id, reason, packing.hold)

    async def GetHold(self, request: pb.GetHoldRequest, context: Any) -> pb.Hold:
        return await holds.get_hold(self._ledger, _tenant(), m.hold_key(request.hold_key), packing.hold)

    async def ListHolds(self, request: pb.ListHoldsRequest, context: Any) -> pb.ListHoldsResponse:
        found, token = await holds.list_holds(self._ledger, _tenant(), m.hold_query(request), packing.hold)
        return pb.ListHoldsResponse(holds=found, next_page_token=token)

    async def DebitCredits(self, request: pb.DebitCreditsRequest, context: Any) -> pb.Hold:
        call = self._call("DebitCredits", request, pb.Hold)
        return await holds.debit_credits(self._ledger, call, m.debit(request, self._now(), self._skew), packing.hold)

    async def BatchDebitCredits(self, request: pb.BatchDebitCreditsRequest,
                                context: Any) -> pb.BatchDebitCreditsResponse:
        debits = m.batch_columns(request, self._now(), self._skew)
        answers = await batch_debits.batch_debit(self._ledger, current_caller(), _path("DebitCredits"), debits,
                                                 _DEBIT_WIRE, pb.Hold, packing.hold)
        return pb.BatchDebitCreditsResponse.FromString(packing.batch_wire(answers))

    # --- lifecycle ----------------------------------------------------------------------------

    async def ExpireLots(self, request: pb.ExpireLotsRequest, context: Any) -> pb.ExpireLotsResponse:
        call = self._call("ExpireLots", request, pb.ExpireLotsResponse)
        as_of, account_id = m.expiry(request, self._now(), self._skew)
        return await sweeps.expire_lots(self._ledger, call, as_of, account_id, packing.expired_part,
                                        packing.expired_whole)

    async def RecordSettlement(self, request: pb.RecordSettlementRequest, context: Any) -> pb.Settlement:
        call = self._call("RecordSettlement", request, pb.Settlement)
        account_id, invoiced_through = m.settlement(request)
        return await sweeps.record_settlement(self._ledger, call, account_id, invoiced_through, packing.settlement)

    async def GetSettlement(self, request: pb.GetSettlementRequest, context: Any) -> pb.Settlement:
        account_id = check_id(request.account_id, "account_id")
        return await sweeps.get_settlement(self._ledger, _tenant(), account_id, packing.settlement)

    async def ReleaseExpiredHolds(self, request: pb.ReleaseExpiredHoldsRequest,
                                  context: Any) -> pb.ReleaseExpiredHoldsResponse:
        call = self._call("ReleaseExpiredHolds", request, pb.ReleaseExpiredHoldsResponse)
        as_of = m.as_of(request, self._now(), self._skew)
        return await sweeps.release_expired_holds(self._ledger, call, as_of, packing.released_holds,
                                                  packing.released_keys)

    async def ReverseHold(self, request: pb.ReverseHoldRequest, context: Any) -> pb.ReverseHoldResponse:
        return await self._reverse_hold(request, pb.ReverseHoldResponse)

    async def ReverseReference(self, request: pb.ReverseReferenceRequest,
                               context: Any) -> pb.ReverseReferenceResponse:
        """Deprecated alias of ReverseHold: the same handler, behaviour and idempotency."""
        return await self._reverse_hold(request, pb.ReverseReferenceResponse)

    async def _reverse_hold(self, request: pb.ReverseHoldRequest | pb.ReverseReferenceRequest,
                            response: type[R]) -> R:
        """Both names are one verb: keys are stored as ReverseHold's, and ReverseReference's replay."""
        call = self._call("ReverseHold", request, response, earlier=(_path("ReverseReference"),))
        pack = functools.partial(packing.reversal, response=response)
        return await reversals_and_transfers.reverse_hold(self._ledger, call, m.reversal(request), pack)

    async def TransferCredits(self, request: pb.TransferCreditsRequest, context: Any) -> pb.TransferCreditsResponse:
        call = self._call("TransferCredits", request, pb.TransferCreditsResponse)
        return await reversals_and_transfers.transfer_credits(self._ledger, call, m.transfer(request),
                                                              packing.transfer)

    async def ReverseTransfer(self, request: pb.ReverseTransferRequest, context: Any) -> pb.TransferCreditsResponse:
        call = self._call("ReverseTransfer", request, pb.TransferCreditsResponse)
        transfer_id = check_id(request.transfer_id, "transfer_id")
        return await reversals_and_transfers.reverse_transfer(self._ledger, call, transfer_id, packing.transfer)

    async def SetTransferLimit(self, request: pb.SetTransferLimitRequest, context: Any) -> pb.TransferLimit:
        call = self._call("SetTransferLimit", request, pb.TransferLimit)
        account_id, unit, limit = m.transfer_limit(request)
        return await reversals_and_transfers.set_transfer_limit(self._ledger, call, account_id, unit, limit,
                                                                packing.transfer_limit)
