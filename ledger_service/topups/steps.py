"""The ledger's side of the auto top-up saga (coordinator/workflows.py AutoTopUpWorkflow): each step reads and
settles the top-up row the crossing wrote (storage/topup_watch.py) and, for `charge`, asks the payment
provider. Run as the saga's activities (coordinator/activities.py TopUpActivities) by the ledger process
(ledger_service/topups/saga.py), on the owner DSN (every tenant).

    charge  counts the attempt, then find(topup_id) — a charge made before a crash or a lost answer is
            found, never made twice; none found: charge(topup_id) (same key: idempotent). No answer:
            the row keeps CHARGING with the error, and the step raises (the saga asks again, with backoff).
            Pending: AWAITING_PAYMENT. A row already settled answers SETTLED (a saga started again).
    grant   PURCHASED credit through the AccountWriter under `charge:<charge id>` (a replay returns the same
            lot), then GRANTED; the policy's failure count resets
    decline DECLINED; after failure_limit in a row the policy disables itself (`topup.disabled`)

Invariants (tests/ledger/test_topups.py): credit is granted only for a charge the provider reported
succeeded (`grant` is only called with the charge `charge` saw succeed, and checks the row is in flight);
a succeeded charge is granted exactly once (the idempotency key), whatever crashes between.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

import asyncpg
from temporalio.exceptions import ApplicationError

from coordinator.messages import PaymentView, TopUpOutcome, TopUpResult, TopUpStep
from ledger_service.domain.journal import EntryKind
from ledger_service.domain.model import Lot, LotType, Scope
from ledger_service.domain.payments import Payment, PaymentProvider, PaymentStatus, PaymentUnknown
from ledger_service.domain.topups import IN_FLIGHT, TOPUP_SOURCE, TopUpStatus
from ledger_service.operations.context import new_id
from ledger_service.storage.account_writer import AccountWriter, Apply, Operation
from ledger_service.storage.effects import Effects, EntryContext
from ledger_service.storage.state import AccountState
from ledger_service.storage.topup_watch import emit_event
from service_runtime.amounts import format_minor
from service_runtime.rejections import Rejection

log = logging.getLogger(__name__)
GRANT_METHOD = "/credits.alerts.v1.AlertsService/AutoTopUp"  # the verb in idempotency records
GRANTED_BY = "auto-topup"
_IN_FLIGHT = [s.value for s in IN_FLIGHT]

SELECT = """
SELECT t.tenant_id, t.topup_id, t.account_id, t.unit, t.crossing, t.amount, t.status, t.payment_method, t.cost_basis,
       t.attempts, t.charge_id, t.lot_id,
       (SELECT scale FROM topup_policies p WHERE p.tenant_id = t.tenant_id AND p.account_id = t.account_id
          AND p.unit = t.unit) AS scale
FROM topups t WHERE t.tenant_id = $1 AND t.topup_id = $2
"""
ATTEMPT = """
UPDATE topups SET attempts = attempts + 1, updated_at = $3,
  status = CASE WHEN status = 'REQUESTED' THEN 'CHARGING' ELSE status END
WHERE tenant_id = $1 AND topup_id = $2 AND status = ANY($4::text[])
"""
# A step settles a row still in flight only: a replayed step finds it settled and changes nothing.
SETTLE = """
UPDATE topups SET status = $3, charge_id = $4, lot_id = $5, last_error = $6, updated_at = $7
WHERE tenant_id = $1 AND topup_id = $2 AND status = ANY($8::text[])
"""
SUCCEEDED = """
UPDATE topup_policies SET consecutive_failures = 0 WHERE tenant_id = $1 AND account_id = $2 AND unit = $3
"""
FAILED = """
UPDATE topup_policies SET consecutive_failures = consecutive_failures + 1,
  disabled_at = CASE WHEN disabled_at IS NULL AND consecutive_failures + 1 >= failure_limit
                     THEN $4 ELSE disabled_at END,
  disabled_reason = CASE WHEN disabled_at IS NULL AND consecutive_failures + 1 >= failure_limit
                         THEN $5 ELSE disabled_reason END
WHERE tenant_id = $1 AND account_id = $2 AND unit = $3
RETURNING consecutive_failures, failure_limit, disabled_at = $4 AS disabled_now
"""


def charge_amount(amount: int, cost_basis: Decimal) -> int:
    """What the card pays, in the currency's minor units: the credited amount at its cost basis."""
    return int((Decimal(amount) * cost_basis).to_integral_value(ROUND_HALF_UP))


def _lot(row: asyncpg.Record, now: datetime) -> Lot:
    return Lot(lot_id=new_id("lot"), account_id=row["account_id"], lot_type=LotType.PURCHASED, unit=row["unit"],
               amount=row["amount"], priority=50, effective_at=now, expires_at=None, scope=Scope(),
               cost_basis=Decimal(row["cost_basis"]), seq=0, source=TOPUP_SOURCE, reason_code=TOPUP_SOURCE,
               campaign_id=row["topup_id"], granted_by=GRANTED_BY)


def _grant_step(lot: Lot) -> Apply:
    def apply(state: AccountState, fx: Effects) -> Lot:
        lot.created_at = fx.now
        fx.create(lot)
        state.add_lot(lot)
        fx.move(lot, EntryKind.GRANT, lot.amount, EntryContext(actor=GRANTED_BY, reason=TOPUP_SOURCE))
        return lot

    return apply


class _LotId:
    """The grant's stored response: just the lot id (a replay returns the first lot's)."""

    def __init__(self, lot_id: str) -> None:
        self.lot_id = lot_id

    def SerializeToString(self) -> bytes:
        return self.lot_id.encode()


def _outcome(payment: Payment) -> TopUpOutcome:
    return {PaymentStatus.SUCCEEDED: TopUpOutcome.SUCCEEDED, PaymentStatus.DECLINED: TopUpOutcome.DECLINED,
            PaymentStatus.PENDING: TopUpOutcome.PENDING}[payment.status]


class LedgerTopUps:
    """The saga's participant (coordinator.activities.TopUpParticipant) on the ledger's owner pool."""

    def __init__(self, pool: asyncpg.Pool, provider: PaymentProvider) -> None:
        self._pool = pool
        self._provider = provider
        self._writer = AccountWriter(pool)

    async def _row(self, step: TopUpStep) -> asyncpg.Record:
        row = await self._pool.fetchrow(SELECT, step.tenant_id, step.topup_id)
        if row is None:
            raise ApplicationError(f"no top-up {step.topup_id!r} in tenant {step.tenant_id!r}", non_retryable=True)
        return row

    async def _settle(self, row: asyncpg.Record, status: TopUpStatus, charge_id: str, lot_id: str, error: str,
                      conn: asyncpg.Connection | None = None) -> bool:
        done = await (conn or self._pool).execute(SETTLE, row["tenant_id"], row["topup_id"], status.value, charge_id,
                                                  lot_id, error[:300], datetime.now(UTC), _IN_FLIGHT)
        return not done.endswith(" 0")

    async def charge(self, step: TopUpStep) -> PaymentView:
        await self._pool.execute(ATTEMPT, step.tenant_id, step.topup_id, datetime.now(UTC), _IN_FLIGHT)
        row = await self._row(step)
        if row["status"] not in _IN_FLIGHT:
            return PaymentView(row["charge_id"], TopUpOutcome.SETTLED, row["status"])
        key = row["topup_id"]
        try:
            payment = await self._provider.find(key)
            if payment is None:
                payment = await self._provider.charge(key, charge_amount(row["amount"], Decimal(row["cost_basis"])),
                                                      row["unit"], row["payment_method"], f"auto top-up {key}")
        except PaymentUnknown as err:
            await self._settle(row, TopUpStatus(row["status"]), row["charge_id"], "", f"no answer: {err}")
            raise  # never assumed paid or unpaid: the saga asks again (same key)
        status = TopUpStatus.AWAITING_PAYMENT if payment.status is PaymentStatus.PENDING else TopUpStatus(row["status"])
        await self._settle(row, status, payment.charge_id, "",
                           "payment pending" if payment.status is PaymentStatus.PENDING else "")
        return PaymentView(payment.charge_id, _outcome(payment), payment.message)

    async def grant(self, step: TopUpStep) -> TopUpResult:
        """Credits a charge `charge` saw succeed; exactly once (`charge:<id>`), also when repeated."""
        row = await self._row(step)
        if row["status"] == TopUpStatus.GRANTED.value:
            return TopUpResult(step.topup_id, row["status"], row["charge_id"], row["lot_id"])
        if row["status"] not in _IN_FLIGHT or not step.charge_id:
            raise ApplicationError(f"top-up {step.topup_id} is {row['status']}: no credit without a confirmed "
                                   "payment", non_retryable=True)
        lot = _lot(row, datetime.now(UTC))
        op = Operation(GRANT_METHOD, f"charge:{step.charge_id}", row["topup_id"].encode(), _grant_step(lot),
                       lambda granted: _LotId(granted.lot_id))  # type: ignore[arg-type, return-value]
        try:
            outcome = await self._writer.submit(row["tenant_id"], row["account_id"], op)
        except Rejection as rej:  # the account is gone, or the key was taken by another request: retry, visibly
            await self._settle(row, TopUpStatus(row["status"]), step.charge_id, "", f"paid, not yet credited: {rej}")
            raise
        lot_id = outcome.replay.decode() if outcome.replay is not None else lot.lot_id
        if await self._settle(row, TopUpStatus.GRANTED, step.charge_id, lot_id, ""):
            await self._pool.execute(SUCCEEDED, row["tenant_id"], row["account_id"], row["unit"])
        return TopUpResult(step.topup_id, TopUpStatus.GRANTED.value, step.charge_id, lot_id)

    async def decline(self, step: TopUpStep) -> TopUpResult:
        row = await self._row(step)
        now = datetime.now(UTC)
        async with self._pool.acquire() as conn, conn.transaction():
            if not await self._settle(row, TopUpStatus.DECLINED, step.charge_id, "", "declined", conn):
                return TopUpResult(step.topup_id, row["status"], row["charge_id"], row["lot_id"])
            failed = await conn.fetchrow(FAILED, row["tenant_id"], row["account_id"], row["unit"], now,
                                         f"consecutive declines (the last: {row['topup_id']})")
            if failed is not None and failed["disabled_now"]:
                await emit_event(conn, row["tenant_id"], f"{row['topup_id']}/disabled", "topup.disabled",
                                 row["account_id"], row["topup_id"], row["crossing"],
                                 {"consecutive_failures": failed["consecutive_failures"],
                                  "amount": format_minor(row["amount"], row["scale"] or 0)}, now)
        return TopUpResult(step.topup_id, TopUpStatus.DECLINED.value, step.charge_id)
