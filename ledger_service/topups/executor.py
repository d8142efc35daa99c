"""The top-up executor: charges each requested top-up and grants its credit once the payment is confirmed.

A top-up row is written with its crossing (storage/topup_watch.py); this loop (in the ledger process,
on the owner DSN: every tenant) claims due rows with `FOR UPDATE SKIP LOCKED`, marks them CHARGING
*before* calling the provider, and then:

    CHARGING / AWAITING_PAYMENT: find(topup_id) — a charge made before a crash or a lost answer is found,
                                 never made twice; none found: charge(topup_id) (same key: idempotent)
    succeeded  -> grant PURCHASED credit through the AccountWriter under `charge:<charge id>` (a replay
                  returns the same lot), then GRANTED; the policy's failure count resets
    declined   -> DECLINED; after failure_limit in a row the policy disables itself (`topup.disabled`)
    pending    -> AWAITING_PAYMENT, asked again after poll_s
    no answer  -> stays CHARGING, asked again after a backoff (never assumed paid or unpaid)

Invariants (tests/ledger/test_topups.py): credit is granted only for a charge the provider reported
succeeded; a succeeded charge is granted exactly once (the idempotency key), whatever crashes between.
Why a loop beside the ledger and not a Temporal saga: the top-up is requested in the crossing's own
transaction and its grant is a ledger write, so its state lives with the ledger's (one database, no
second system on the hot path); the provider's idempotency key and the grant's make every step
repeatable, which is what a saga's retries would rely on too.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import asyncpg

from ledger_service.domain.journal import EntryKind
from ledger_service.domain.model import Lot, LotType, Scope
from ledger_service.domain.payments import Payment, PaymentProvider, PaymentStatus, PaymentUnknown
from ledger_service.domain.topups import TOPUP_SOURCE, TopUpStatus
from ledger_service.domain.webhooks import RetrySchedule
from ledger_service.operations.context import new_id
from ledger_service.storage.account_writer import AccountWriter, Apply, Operation
from ledger_service.storage.effects import Effects, EntryContext
from ledger_service.storage.notified_rounds import run_rounds
from ledger_service.storage.state import AccountState
from ledger_service.storage.topup_watch import NOTIFY_TOPUPS, emit_event
from service_runtime.amounts import format_minor
from service_runtime.postgres import create_pool
from service_runtime.rejections import Rejection

log = logging.getLogger(__name__)
GRANT_METHOD = "/credits.alerts.v1.AlertsService/AutoTopUp"  # the verb in idempotency records
GRANTED_BY = "auto-topup"

CLAIM = """
WITH due AS (
  SELECT tenant_id, topup_id FROM topups
  WHERE status IN ('REQUESTED', 'CHARGING', 'AWAITING_PAYMENT') AND next_attempt_at <= $1
  ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED
)
UPDATE topups t SET attempts = t.attempts + 1, next_attempt_at = $1 + make_interval(secs => $3), updated_at = $1,
  status = CASE WHEN t.status = 'REQUESTED' THEN 'CHARGING' ELSE t.status END
FROM due WHERE t.tenant_id = due.tenant_id AND t.topup_id = due.topup_id
RETURNING t.tenant_id, t.topup_id, t.account_id, t.unit, t.crossing, t.amount, t.status, t.payment_method,
          t.cost_basis, t.attempts,
          (SELECT scale FROM topup_policies p WHERE p.tenant_id = t.tenant_id AND p.account_id = t.account_id
             AND p.unit = t.unit) AS scale
"""
# Only the claim that made this attempt records it (a process whose lease ran out may not).
SETTLE = """
UPDATE topups SET status = $4, charge_id = $5, lot_id = $6, next_attempt_at = $7, last_error = $8, updated_at = $9
WHERE tenant_id = $1 AND topup_id = $2 AND attempts = $3 AND status IN ('CHARGING', 'AWAITING_PAYMENT')
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


@dataclass(frozen=True)
class TopUpSettings:
    schedule: RetrySchedule = field(default_factory=lambda: RetrySchedule(base_s=2.0, cap_s=600.0,
                                                                          max_attempts=1_000_000))
    pending_poll_s: float = 5.0
    poll_s: float = 1.0
    lease_s: float = 60.0
    batch: int = 50


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


class TopUpExecutor:
    def __init__(self, pool: asyncpg.Pool, provider: PaymentProvider, settings: TopUpSettings = TopUpSettings()):
        self._pool = pool
        self._provider = provider
        self._settings = settings
        self._writer = AccountWriter(pool)
        self._rng = random.Random()

    async def run_once(self) -> int:
        now = datetime.now(UTC)
        rows = await self._pool.fetch(CLAIM, now, self._settings.batch, self._settings.lease_s)
        await asyncio.gather(*(self._advance(r) for r in rows))
        return len(rows)

    async def _advance(self, row: asyncpg.Record) -> None:
        key = row["topup_id"]
        try:
            payment = await self._provider.find(key)
            if payment is None:
                payment = await self._provider.charge(key, charge_amount(row["amount"], Decimal(row["cost_basis"])),
                                                      row["unit"], row["payment_method"], f"auto top-up {key}")
        except PaymentUnknown as err:
            delay = self._settings.schedule.delay_after(row["attempts"], self._rng) or self._settings.schedule.cap_s
            await self._settle(row, TopUpStatus.CHARGING, "", "", delay, f"no answer: {err}")
            return
        if payment.status is PaymentStatus.SUCCEEDED:
            await self._granted(row, payment)
        elif payment.status is PaymentStatus.DECLINED:
            await self._declined(row, payment)
        else:
            await self._settle(row, TopUpStatus.AWAITING_PAYMENT, payment.charge_id, "",
                               self._settings.pending_poll_s, "payment pending")

    async def _granted(self, row: asyncpg.Record, payment: Payment) -> None:
        lot = _lot(row, datetime.now(UTC))
        op = Operation(GRANT_METHOD, f"charge:{payment.charge_id}", row["topup_id"].encode(), _grant_step(lot),
                       lambda granted: _LotId(granted.lot_id))  # type: ignore[arg-type, return-value]
        try:
            outcome = await self._writer.submit(row["tenant_id"], row["account_id"], op)
        except Rejection as rej:  # the account is gone, or the key was taken by another request: retry, visibly
            await self._settle(row, TopUpStatus.CHARGING, payment.charge_id, "", self._settings.schedule.cap_s,
                               f"paid, not yet credited: {rej}")
            return
        lot_id = outcome.replay.decode() if outcome.replay is not None else lot.lot_id
        await self._settle(row, TopUpStatus.GRANTED, payment.charge_id, lot_id, 0, "")
        await self._pool.execute(SUCCEEDED, row["tenant_id"], row["account_id"], row["unit"])

    async def _declined(self, row: asyncpg.Record, payment: Payment) -> None:
        now = datetime.now(UTC)
        async with self._pool.acquire() as conn, conn.transaction():
            done = await conn.execute(SETTLE, row["tenant_id"], row["topup_id"], row["attempts"],
                                      TopUpStatus.DECLINED.value, payment.charge_id, "", now,
                                      payment.message or "declined", now)
            if done.endswith(" 0"):
                return
            failed = await conn.fetchrow(FAILED, row["tenant_id"], row["account_id"], row["unit"], now,
                                         f"consecutive declines (the last: {row['topup_id']})")
            if failed is not None and failed["disabled_now"]:
                await emit_event(conn, row["tenant_id"], f"{row['topup_id']}/disabled", "topup.disabled",
                                 row["account_id"], row["topup_id"], row["crossing"],
                                 {"consecutive_failures": failed["consecutive_failures"],
                                  "amount": format_minor(row["amount"], row["scale"] or 0)}, now)

    async def _settle(self, row: asyncpg.Record, status: TopUpStatus, charge_id: str, lot_id: str, delay_s: float,
                      error: str) -> None:
        now = datetime.now(UTC)
        await self._pool.execute(SETTLE, row["tenant_id"], row["topup_id"], row["attempts"], status.value, charge_id,
                                 lot_id, now + timedelta(seconds=delay_s), error[:300], now)

    async def run_forever(self) -> None:
        """Rounds until cancelled: at once after a NOTIFY, else every poll_s."""
        await run_rounds(self._pool, NOTIFY_TOPUPS, self.run_once, batch=self._settings.batch,
                         poll_s=self._settings.poll_s, what="top-up")


class RunningExecutor:
    def __init__(self, task: asyncio.Task[None], pool: asyncpg.Pool) -> None:
        self.task, self._pool = task, pool

    async def stop(self) -> None:
        self.task.cancel()
        try:
            await self.task
        except (asyncio.CancelledError, Exception):
            pass
        await self._pool.close()


async def start_executor(owner_dsn: str, provider: PaymentProvider,
                         settings: TopUpSettings = TopUpSettings()) -> RunningExecutor:
    pool = await create_pool(owner_dsn, min_size=1, max_size=4)
    task = asyncio.get_running_loop().create_task(TopUpExecutor(pool, provider, settings).run_forever())
    return RunningExecutor(task, pool)
