"""The billing front door (credits.billing.v1): upstream services start and watch sagas over gRPC.

Callers authenticate with their tenant API key (resolved against the ledger database, which holds
the same tenant keys as every service database); the key's tenant scopes every operation id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import urllib.parse
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
from credits.billing.v1 import billing_pb2 as pb
from credits.billing.v1 import billing_pb2_grpc
from credits.invoice.v1 import invoice_pb2 as ipb
from credits.invoice.v1 import invoice_pb2_grpc
from credits.ledger.v1 import ledger_pb2 as lpb
from credits.ledger.v1 import ledger_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from coordinator import naming
from coordinator import search_attributes as sa
from coordinator.allowance_door import AllowanceRpcs
from coordinator.caller_metadata import on_behalf_of
from coordinator.messages import (
    BillingCycleInput,
    CompensateOutageInput,
    FinalizeInvoiceInput,
    Progress,
    VoidInvoiceInput,
)
from coordinator.starter import start_or_attach
from coordinator.workflows import (
    BillingCycleWorkflow,
    CompensateOutageWorkflow,
    FinalizeInvoiceWorkflow,
    VoidInvoiceWorkflow,
)
from service_runtime import tracing
from service_runtime.api_keys import KeyResolver
from service_runtime.free_text import check_text
from service_runtime.grpc_server import create_server, current_caller
from service_runtime.identifiers import check_id
from service_runtime.permissions import BILLING, BILLING_SERVICE
from service_runtime.proto_time import from_timestamp
from service_runtime.rejections import invalid, not_found
from service_runtime.settings import Settings
from service_runtime.tls import open_channel

SERVICE = BILLING_SERVICE
# Who may call what: the one table of every service's RPCs (service_runtime/permissions.py).
PERMISSIONS = BILLING
_STATUS = {
    WorkflowExecutionStatus.RUNNING: pb.RUNNING, WorkflowExecutionStatus.COMPLETED: pb.COMPLETED,
    WorkflowExecutionStatus.FAILED: pb.FAILED, WorkflowExecutionStatus.CANCELED: pb.CANCELED,
    WorkflowExecutionStatus.TERMINATED: pb.TERMINATED, WorkflowExecutionStatus.TIMED_OUT: pb.TIMED_OUT,
    WorkflowExecutionStatus.CONTINUED_AS_NEW: pb.RUNNING,
}
DEFAULT_WAIT_S = 60
MAX_WAIT_S = 600  # a caller cannot park a front-door call (and its resources) for longer
_AMOUNT = re.compile(r"^(0|[1-9]\d{0,17})(\.\d{1,9})?$")


def _iso(ts: Timestamp, field: str) -> str:
    return from_timestamp(ts, field).isoformat()


def _cycle_as_of(request: pb.RunBillingCycleRequest) -> str:
    """The run's as_of, to the second: now when unset; refused further ahead than the clock-skew bound
    (a run as of a future instant would finalize periods whose late-usage grace has not passed)."""
    now = datetime.now(UTC).replace(microsecond=0)
    if not request.HasField("as_of"):
        return now.isoformat()
    as_of = from_timestamp(request.as_of, "as_of").replace(microsecond=0)
    skew_s = Settings.from_env().clock_skew_s
    if as_of > now + timedelta(seconds=skew_s):
        raise invalid("as_of", f"{as_of.isoformat()} is in the future (more than {skew_s} s ahead, "
                      "CREDITS_CLOCK_SKEW_S): a billing run finalizes only periods whose late-usage grace has passed")
    return as_of.isoformat()


def _reason(text: str) -> str:
    """A reason the ledger will accept after the decision (else a void could never complete)."""
    return check_text(text, "reason", 500)


def _check_wait(seconds: int) -> None:
    """Checked before anything starts: bad input changes nothing."""
    if not 0 <= seconds <= MAX_WAIT_S:
        raise invalid("wait_timeout_s", f"must be between 0 and {MAX_WAIT_S} seconds")


QUERY_TIMEOUT = timedelta(seconds=2)


def ui_link(ui_url: str, namespace: str, workflow_id: str, run_id: str = "") -> str:
    if not ui_url:
        return ""
    path = f"{ui_url}/namespaces/{namespace}/workflows/{urllib.parse.quote(workflow_id, safe='')}"
    return f"{path}/{run_id}/history" if run_id else path


ACCOUNT_CHECKS = 32  # concurrent GetAccount calls of CompensateOutage's up-front check


class BillingServicer(AllowanceRpcs, billing_pb2_grpc.BillingServiceServicer):
    """Sagas and operations here; the recurring-allowance RPCs in `coordinator.allowance_door`."""

    def __init__(self, client: Client, task_queue: str, ui_url: str = "", invoice_addr: str = "",
                 ledger_addr: str = "") -> None:
        self._client = client
        self._queue = task_queue
        self._ui = ui_url
        # Participants the front door asks on the caller's behalf before starting a workflow.
        self._invoices = invoice_pb2_grpc.InvoiceServiceStub(open_channel(invoice_addr)) if invoice_addr else None
        self._ledger = ledger_pb2_grpc.LedgerServiceStub(open_channel(ledger_addr)) if ledger_addr else None

    async def _check_unit(self, unit: str, amount: str, context: Any) -> None:
        """INVALID_ARGUMENT now, rather than every grant failing inside the workflow, for a unit the
        caller's tenant has not defined or an amount finer than the unit keeps. Asks the ledger
        with the caller's own key; other errors are left to the workflow."""
        if self._ledger is None:
            return
        try:
            units = await self._ledger.ListUnits(lpb.ListUnitsRequest(), metadata=on_behalf_of(context), timeout=10)
        except grpc.aio.AioRpcError:
            return
        scale = next((u.scale for u in units.units if u.code == unit), None)
        if scale is None:
            raise invalid("unit", f"unknown unit {unit[:40]!r} for this tenant; define it first")
        decimals = len(amount.partition(".")[2])
        if decimals > scale:
            raise invalid("amount", f"{unit} keeps {scale} decimal places; {amount!r} has {decimals}")

    async def _check_accounts(self, account_ids: list[str], context: Any) -> None:
        """NOT_FOUND naming every account the caller's tenant does not have, before anything starts
        (no grant for part of the list, then a failure). Asks the ledger with the caller's own key,
        at most ACCOUNT_CHECKS at a time; other errors are left to the workflow, which names the
        account and step that failed."""
        if self._ledger is None:
            return
        ledger, metadata = self._ledger, on_behalf_of(context)
        slots = asyncio.Semaphore(ACCOUNT_CHECKS)
        first_index = {account: i for i, account in reversed(list(enumerate(account_ids)))}

        async def missing(account: str) -> bool:
            async with slots:
                try:
                    await ledger.GetAccount(lpb.GetAccountRequest(account_id=account), metadata=metadata, timeout=10)
                except grpc.aio.AioRpcError as err:
                    return err.code() == grpc.StatusCode.NOT_FOUND
                return False

        accounts = list(first_index)
        found = await asyncio.gather(*(missing(a) for a in accounts))
        gone = [f"account_ids[{first_index[a]}] {a!r}" for a, is_missing in zip(accounts, found, strict=True)
                if is_missing]
        if gone:
            more = f" and {len(gone) - 20} more" if len(gone) > 20 else ""
            raise not_found("account_ids", f"{len(gone)} of {len(accounts)} accounts not found, nothing was "
                                           f"granted: {', '.join(gone[:20])}{more}")

    async def _check_invoice(self, invoice_id: str, context: Any) -> ipb.Invoice | None:
        """NOT_FOUND now, rather than a failed saga later, for an unknown or another tenant's invoice.

        Asks the invoice service with the caller's own key (tenant keys are valid in every service),
        so the answer is exactly what that tenant may see. Other errors are left to the saga (None).
        The invoice read also gives the saga's customer and period search attributes at start.
        """
        if self._invoices is None:
            return None
        try:
            invoice: ipb.Invoice = await self._invoices.GetInvoice(ipb.GetInvoiceRequest(invoice_id=invoice_id),
                                                                   metadata=on_behalf_of(context), timeout=10)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                raise not_found("invoice_id", f"no invoice {invoice_id!r} for this tenant") from None
            return None
        return invoice

    @staticmethod
    def _attributes(tenant: str, invoice_id: str, invoice: ipb.Invoice | None) -> Any:
        if invoice is None:
            return sa.at_start(tenant, invoice_id)
        start = _iso(invoice.period_start, "period_start") if invoice.HasField("period_start") else ""
        return sa.at_start(tenant, invoice_id, invoice.customer_id, start)

    async def FinalizeInvoice(self, request: pb.FinalizeInvoiceRequest, context: Any) -> pb.Operation:
        _check_wait(request.wait_timeout_s)
        tenant, invoice_id = current_caller().tenant_id, check_id(request.invoice_id, "invoice_id")
        invoice = await self._check_invoice(invoice_id, context)
        handle = await start_or_attach(self._client, FinalizeInvoiceWorkflow.run,
                                       FinalizeInvoiceInput(tenant, invoice_id, local_reads=True),
                                       id=naming.finalize_workflow_id(tenant, invoice_id), task_queue=self._queue,
                                       search_attributes=self._attributes(tenant, invoice_id, invoice),
                                       summary=f"Finalize invoice {invoice_id} (tenant {tenant})")
        return await self._operation(handle, request.wait, request.wait_timeout_s)

    async def VoidInvoice(self, request: pb.VoidInvoiceRequest, context: Any) -> pb.Operation:
        _check_wait(request.wait_timeout_s)
        tenant, invoice_id = current_caller().tenant_id, check_id(request.invoice_id, "invoice_id")
        invoice = await self._check_invoice(invoice_id, context)
        handle = await start_or_attach(self._client, VoidInvoiceWorkflow.run,
                                       VoidInvoiceInput(tenant, invoice_id, _reason(request.reason)),
                                       id=naming.void_workflow_id(tenant, invoice_id), task_queue=self._queue,
                                       search_attributes=self._attributes(tenant, invoice_id, invoice),
                                       summary=f"Void invoice {invoice_id} (tenant {tenant})")
        return await self._operation(handle, request.wait, request.wait_timeout_s)

    async def RunBillingCycle(self, request: pb.RunBillingCycleRequest, context: Any) -> pb.Operation:
        _check_wait(request.wait_timeout_s)
        tenant = current_caller().tenant_id
        as_of = _cycle_as_of(request)
        if not 0 <= request.concurrency <= 64:
            raise invalid("concurrency", "must be between 0 and 64")
        handle = await start_or_attach(self._client, BillingCycleWorkflow.run,
                                       BillingCycleInput(tenant, as_of, request.concurrency or 8),
                                       id=naming.cycle_workflow_id(tenant, as_of), task_queue=self._queue,
                                       summary=f"Billing cycle of {tenant} as of {as_of}", new_run=request.new_run)
        return await self._operation(handle, request.wait, request.wait_timeout_s)

    async def CompensateOutage(self, request: pb.CompensateOutageRequest, context: Any) -> pb.Operation:
        _check_wait(request.wait_timeout_s)
        tenant, incident = current_caller().tenant_id, check_id(request.incident_id, "incident_id")
        if not request.account_ids:
            raise invalid("account_ids", "name at least one account")
        if not request.amount or not request.unit:
            raise invalid("amount", "amount and unit are required")
        if not _AMOUNT.match(request.amount) or not request.amount.strip("0."):
            raise invalid("amount", "must be a positive decimal like 25.00")
        for i, account in enumerate(request.account_ids):
            check_id(account, f"account_ids[{i}]")  # the ledger's account id rule
        if len(request.account_ids) > 10_000:
            raise invalid("account_ids", "more than 10,000 accounts; split the incident")
        expires_at = _iso(request.expires_at, "expires_at") if request.HasField("expires_at") else ""
        reason = _reason(request.reason)
        await self._check_unit(request.unit, request.amount, context)
        await self._check_accounts(list(request.account_ids), context)
        inp = CompensateOutageInput(tenant, incident, list(dict.fromkeys(request.account_ids)), request.amount,
                                    request.unit, expires_at, reason)
        handle = await start_or_attach(self._client, CompensateOutageWorkflow.run, inp,
                                       id=naming.outage_workflow_id(tenant, incident), task_queue=self._queue,
                                       summary=f"Compensate incident {incident}: {len(inp.account_ids)} accounts")
        return await self._operation(handle, request.wait, request.wait_timeout_s)

    async def GetOperation(self, request: pb.GetOperationRequest, context: Any) -> pb.Operation:
        _check_wait(request.wait_timeout_s)
        if naming.tenant_of(request.operation_id) != current_caller().tenant_id:
            raise not_found("operation_id")
        handle = self._client.get_workflow_handle(request.operation_id)
        try:
            return await self._operation(handle, request.wait, request.wait_timeout_s)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise not_found("operation_id") from None
            raise

    async def _operation(self, handle: WorkflowHandle[Any, Any], wait: bool, wait_timeout_s: int) -> pb.Operation:
        if wait:
            try:
                await asyncio.wait_for(handle.result(), wait_timeout_s or DEFAULT_WAIT_S)
            except (TimeoutError, WorkflowFailureError):
                pass
        desc = await handle.describe()
        op = pb.Operation(operation_id=handle.id, kind=naming.kind_of(handle.id), run_id=desc.run_id,
                          status=_STATUS.get(desc.status, pb.OPERATION_STATUS_UNSPECIFIED) if desc.status else 0,
                          outcome=desc.typed_search_attributes.get(sa.OUTCOME) or "",
                          ui_url=ui_link(self._ui, self._client.namespace, handle.id, desc.run_id))
        if desc.status == WorkflowExecutionStatus.COMPLETED:
            result = await handle.result()
            op.result_json = json.dumps(result if isinstance(result, dict) else dataclasses.asdict(result))
            # The result names the outcome ("finalized"); the attribute may still hold the decision.
            final = result.get("outcome") if isinstance(result, dict) else getattr(result, "outcome", None)
            op.outcome = str(final or op.outcome)
        elif desc.status == WorkflowExecutionStatus.FAILED:
            try:
                await handle.result()
            except WorkflowFailureError as err:
                op.error = str(err.cause or err)
                # A compensated finalization's details: step, service, cause, amounts and the hold key.
                details = getattr(err.cause, "details", None)
                if details and isinstance(details[0], dict):
                    op.result_json = json.dumps(details[0])
                    op.outcome = str(details[0].get("outcome") or op.outcome)
        if desc.status in (WorkflowExecutionStatus.RUNNING, WorkflowExecutionStatus.COMPLETED):
            try:
                # Bounded: with no worker polling, a query would wait for one (≈ a minute).
                progress = await handle.query("progress", result_type=Progress, rpc_timeout=QUERY_TIMEOUT)
                op.progress.CopyFrom(pb.Progress(total=progress.total, done=progress.done, failed=progress.failed,
                                                 stage=progress.stage))
            except Exception:  # progress is best effort: no worker polling, or a sweep workflow
                pass
        return op


async def create_front_door(client: Client, key_dsn: str, task_queue: str, address: str = "127.0.0.1:0",
                            ui_url: str = "", invoice_addr: str = "",
                            ledger_addr: str = "") -> tuple[grpc.aio.Server, int, asyncpg.Pool]:
    """Starts the front door; API keys are resolved against `key_dsn` (the ledger database), whose
    reachability its gRPC health follows.

    With `invoice_addr`, finalize/void requests for an invoice the caller's tenant cannot see
    are refused with NOT_FOUND before any saga starts. With `ledger_addr`, an outage compensation
    in a unit the tenant has not defined (or finer than the unit keeps) is refused up front.

    With tracing on (service_runtime.tracing), each request's span is the parent of the check with
    the invoice service and of the workflow it starts (the client gets a TracingInterceptor)."""
    from service_runtime.postgres import create_pool

    tracing.configure("credits-billing")  # from the environment; off by default
    client = tracing.traced_client(client)

    pool = await create_pool(key_dsn, min_size=1, max_size=4)
    servicer = BillingServicer(client, task_queue, ui_url, invoice_addr, ledger_addr)
    server, port = await create_server([(billing_pb2_grpc.add_BillingServiceServicer_to_server, servicer, SERVICE)],
                                       KeyResolver(pool), PERMISSIONS, address, health_dsn=key_dsn)
    return server, port, pool
