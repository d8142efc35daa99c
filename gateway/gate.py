"""A gate: answers "may this request run?" from local leases, with the ledger's guarantee intact.

    gate = Gate(LedgerServiceStub(channel), api_key, GateConfig(unit="token"))
    await gate.start()
    decision = await gate.authorize("acct-1", 120)        # minor units of the unit; µs when leased
    if decision.allowed:
        ...serve the request...
        await gate.settle(decision.ticket, actual=97)     # what it really cost
    await gate.close()                                    # commits what was used, returns the rest

How it keeps its promises:
- Every authorization is backed by a ledger hold — a lease (a `release_on_ttl` hold the gate took
  ahead of need, sized from the account's observed consumption rate) or, once the account runs
  low, a hold per request. So across any number of gates the credit authorized never exceeds what
  the account has, and, while demand lasts, reaches it (leases shrink to per-request reserves, and
  each report interval returns what a lease did not use).
- Used amounts are committed on the lease's hold when it is replaced, closed or at the report
  interval (a partial commit releases the rest). A gate that crashes loses at most the usage of its
  current lease (one report interval); the lease's TTL gives the credit back, and nothing it let
  through was unbacked.
- Denials say why: `insufficient`, `account_refused` (the ledger refuses the account: unknown,
  not this key's, ...), `ledger_unreachable` (fail-closed, or fail-open with its budget spent).
  Fail-open authorizations are bounded per account by `fail_open_budget` and debited once the
  ledger answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from credits.ledger.v1 import ledger_pb2 as pb
from credits.ledger.v1 import ledger_pb2_grpc

from gateway import metrics
from gateway.leases import ConsumptionRate, FailOpen, Lease, lease_size
from service_runtime.amounts import format_minor, parse_minor

T = TypeVar("T")
_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.StatusCode.CANCELLED}


class Denial(enum.StrEnum):
    INSUFFICIENT = "insufficient"
    ACCOUNT_REFUSED = "account_refused"
    LEDGER_UNREACHABLE = "ledger_unreachable"


class WhenUnreachable(enum.StrEnum):
    FAIL_CLOSED = "fail_closed"
    FAIL_OPEN = "fail_open"


class Excess(enum.StrEnum):
    """What `settle` does with an actual cost beyond the authorized estimate and the lease's room."""

    DEBIT = "debit"    # a real-time debit of the excess (refused if the account cannot pay it)
    REFUSE = "refuse"  # not charged; reported as refused


@dataclass(frozen=True)
class GateConfig:
    unit: str
    report_interval_s: float = 1.0   # leases are replaced and their usage committed at least this often
    lease_ttl_s: int = 30            # the ledger gives a lease back after this if the gate never reports
    lease_horizon_s: float = 2.0     # a lease covers this long at the observed consumption rate
    min_lease: int = 1               # minor units
    max_lease: int = 10**9
    on_unreachable: WhenUnreachable = WhenUnreachable.FAIL_CLOSED
    fail_open_budget: int = 0        # per account, minor units, while the ledger is unreachable
    on_excess: Excess = Excess.DEBIT
    settle_timeout_s: float = 10.0   # an open ticket older than this is committed at its estimate
    call_timeout_s: float = 2.0


@dataclass(slots=True)  # not frozen: built per request on the hot path (frozen __init__ costs ~3x)
class Ticket:
    account_id: str
    estimate: int
    lease: Lease | None = None  # authorized from a lease
    hold_key: str = ""          # authorized by a hold of its own (the account is low)
    fail_open: bool = False     # let through while the ledger was unreachable


@dataclass(slots=True)  # not frozen: built per request on the hot path (frozen __init__ costs ~3x)
class Decision:
    allowed: bool
    ticket: Ticket | None = None
    reason: Denial | None = None
    detail: str = ""


@dataclass(slots=True)  # not frozen: built per request on the hot path (frozen __init__ costs ~3x)
class Settled:
    charged: int       # through the lease or the request's hold (committed with the lease/hold)
    debited: int = 0   # the excess, debited in real time
    refused: int = 0   # the excess nobody pays (Excess.REFUSE, or the account could not)


@dataclass
class GateStats:
    local: int = 0
    reserved: int = 0
    fail_open: int = 0
    leases: int = 0
    lost: int = 0  # usage whose lease the ledger had already given back (TTL) when the gate reported
    committed: int = 0  # minor units the ledger has posted for this gate (lease and hold commits, debits)
    denials: dict[str, int] = field(default_factory=dict)

    @property
    def authorized(self) -> int:
        return self.local + self.reserved + self.fail_open


@dataclass
class _Account:
    account_id: str
    rate: ConsumptionRate
    fail_open: FailOpen
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    current: Lease | None = None
    retired: list[Lease] = field(default_factory=list)
    low: bool = False
    size_floor: int = 0  # what the last report showed this gate uses per lease (the rate estimate lags)
    uncommitted: list[tuple[str, int]] = field(default_factory=list)  # request holds whose commit must be retried


class _Unreachable(Exception):
    pass


class _Refused(Exception):
    def __init__(self, reason: Denial, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class Gate:
    def __init__(self, stub: ledger_pb2_grpc.LedgerServiceStub, api_key: str, config: GateConfig,
                 gate_id: str = "") -> None:
        self._stub, self._md, self.config = stub, [("x-api-key", api_key)], config
        self.gate_id = gate_id or uuid.uuid4().hex[:12]  # names the gate's metrics
        self._run = f"{self.gate_id}.{uuid.uuid4().hex[:12]}"  # this incarnation: its keys never repeat
        self.stats = GateStats()
        self._accounts: dict[str, _Account] = {}
        self._scale = 0
        self._seq = 0
        self._ticker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._exported = GateStats()
        self._closing = False

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        units = await self._stub.ListUnits(pb.ListUnitsRequest(), metadata=self._md,
                                           timeout=self.config.call_timeout_s)
        scale = next((u.scale for u in units.units if u.code == self.config.unit), None)
        if scale is None:
            raise ValueError(f"the ledger has no unit {self.config.unit!r}")
        self._scale = int(scale)
        self._ticker = asyncio.create_task(self._tick_forever())

    async def close(self) -> None:
        """Stops leasing, waits for open tickets (up to settle_timeout_s), commits every lease."""
        self._closing = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for acct in self._accounts.values():
            self._retire(acct)
        deadline = time.monotonic() + self.config.settle_timeout_s
        while time.monotonic() < deadline:
            if not any(lease.open_tickets for a in self._accounts.values() for lease in a.retired):
                break
            await asyncio.sleep(0.01)
        await self._report(force=True)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._export()

    # ---- the two calls a request makes ------------------------------------------------------------

    async def authorize(self, account_id: str, cost: int) -> Decision:
        """May a request of `cost` minor units run on `account_id`? From a lease when it can (no I/O)."""
        if cost <= 0:
            raise ValueError(f"cost must be a positive number of minor units, got {cost}")
        acct = self._accounts.get(account_id) or self._account(account_id)
        lease = acct.current
        if lease is not None and lease.take(cost):  # the hot path: no I/O, no clock, no lock
            self.stats.local += 1
            acct.rate.pending += cost
            return Decision(True, Ticket(account_id, cost, lease))
        return await self._authorize_slow(acct, cost)

    async def settle(self, ticket: Ticket, actual: int) -> Settled:
        """Replaces the authorized estimate by the actual cost (which may be more or less)."""
        acct = self._accounts[ticket.account_id]
        if ticket.lease is not None:
            excess = ticket.lease.settle(ticket.estimate, actual)
            if ticket.lease.ready_to_commit:
                self._spawn(self._commit(acct, ticket.lease))
            charged = actual - excess
        elif ticket.hold_key:
            charged, excess = min(actual, ticket.estimate), max(0, actual - ticket.estimate)
            await self._commit_request(acct, ticket.hold_key, charged)
        else:
            acct.fail_open.owed.append(actual)
            return Settled(charged=actual)
        if excess == 0:
            return Settled(charged)
        if self.config.on_excess is Excess.REFUSE:
            return Settled(charged, refused=excess)
        try:
            await self._debit(acct, excess)
        except (_Refused, _Unreachable):
            return Settled(charged, refused=excess)
        return Settled(charged, debited=excess)

    # ---- the slow path ----------------------------------------------------------------------------

    async def _authorize_slow(self, acct: _Account, cost: int) -> Decision:
        async with acct.lock:
            lease = acct.current
            if lease is not None and lease.take(cost):
                self.stats.local += 1
                return Decision(True, Ticket(acct.account_id, cost, lease))
            try:
                if not acct.low:
                    lease = await self._take_lease(acct, cost)
                    if lease is not None and lease.take(cost):
                        self.stats.local += 1
                        acct.rate.record(cost, time.monotonic())
                        return Decision(True, Ticket(acct.account_id, cost, lease))
                hold_key = await self._reserve_one(acct, cost)
            except _Unreachable:
                return self._unreachable(acct, cost)
            except _Refused as refused:
                return self._deny(refused.reason, refused.detail)
        self.stats.reserved += 1
        acct.rate.record(cost, time.monotonic())
        return Decision(True, Ticket(acct.account_id, cost, hold_key=hold_key))

    async def _take_lease(self, acct: _Account, cost: int) -> Lease | None:
        """A new lease sized from the rate (the current one retires); `low` when the ledger had less."""
        c = self.config
        size = lease_size(acct.rate.fold(time.monotonic()), c.lease_horizon_s, cost, c.min_lease, c.max_lease)
        size = max(size, min(c.max_lease, acct.size_floor))
        spent = acct.current
        if spent is not None and time.monotonic() - spent.taken_at < c.report_interval_s:
            size = max(size, min(c.max_lease, 2 * spent.reserved))  # used up early: demand outruns the rate
        hold_key = self._key("lease", acct.account_id)
        try:  # the spent lease keeps authorizing what it still can until its successor is in place
            hold = await self._call(self._stub.ReserveCredits, pb.ReserveCreditsRequest(
                idempotency_key=hold_key, hold_key=hold_key, account_id=acct.account_id, unit=c.unit,
                charges=[self._charge(size)], up_to=True, ttl_s=c.lease_ttl_s, release_on_ttl=True,
                reference=f"gateway/{self._run}"))
        finally:
            if acct.current is spent:
                self._retire(acct)
        reserved = parse_minor(hold.reserved or "0", self._scale, "reserved", allow_zero=True)
        self.stats.leases += 1
        acct.low = reserved < size
        lease = Lease(hold_key, reserved, time.monotonic())
        if reserved == 0:
            lease.retired = True
            acct.retired.append(lease)
            self._spawn(self._commit(acct, lease))
            return None
        acct.current = lease
        return lease

    async def _reserve_one(self, acct: _Account, cost: int) -> str:
        hold_key = self._key("request", acct.account_id)
        await self._call(self._stub.ReserveCredits, pb.ReserveCreditsRequest(
            idempotency_key=hold_key, hold_key=hold_key, account_id=acct.account_id, unit=self.config.unit,
            charges=[self._charge(cost)], ttl_s=self.config.lease_ttl_s, release_on_ttl=True,
            reference=f"gateway/{self._run}"))
        return hold_key

    def _unreachable(self, acct: _Account, cost: int) -> Decision:
        if self.config.on_unreachable is WhenUnreachable.FAIL_OPEN and acct.fail_open.take(cost):
            self.stats.fail_open += 1
            return Decision(True, Ticket(acct.account_id, cost, fail_open=True))
        detail = ("fail-open budget spent" if self.config.on_unreachable is WhenUnreachable.FAIL_OPEN
                  else "fail-closed")
        return self._deny(Denial.LEDGER_UNREACHABLE, detail)

    def _deny(self, reason: Denial, detail: str) -> Decision:
        self.stats.denials[reason.value] = self.stats.denials.get(reason.value, 0) + 1
        return Decision(False, reason=reason, detail=detail)

    # ---- reporting --------------------------------------------------------------------------------

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.report_interval_s)
            try:
                await self._report(force=False)
            except Exception:  # a report that failed is retried at the next tick
                continue

    async def _report(self, *, force: bool) -> None:
        """Each interval: retire leases that were used (their usage is committed once their tickets
        settle), commit the retired ones, debit what fail-open let through, export metrics."""
        now = time.monotonic()
        for acct in list(self._accounts.values()):
            acct.rate.fold(now)
            lease = acct.current
            acct.low = False  # probe with a lease again: someone may have topped the account up
            if lease is not None and (lease.used > 0 or now - lease.taken_at > self.config.lease_ttl_s / 2):
                acct.size_floor = lease.reserved if 2 * lease.used >= lease.reserved else lease.used
                await self._replace(acct, lease)
            for old in list(acct.retired):
                if old.open_tickets and (force or now - old.taken_at > self.config.settle_timeout_s):
                    old.open_tickets = 0  # taken at their estimates
                if old.ready_to_commit:
                    await self._commit(acct, old)
            retry, acct.uncommitted = acct.uncommitted, []
            for hold_key, amount in retry:
                await self._commit_request(acct, hold_key, amount)
            await self._pay_fail_open(acct)
        self._export()

    async def _replace(self, acct: _Account, lease: Lease) -> None:
        """A successor for a used lease, taken while the lease still authorizes (authorizations do not
        wait for the ledger at each report); then the lease retires and its usage is committed. Whatever
        happens to the successor, the lease retires: its usage reaches the ledger this interval."""
        async with acct.lock:
            if acct.current is lease and not self._closing:
                with contextlib.suppress(_Unreachable, _Refused, ValueError):
                    await self._take_lease(acct, 1)
            if acct.current is lease:
                self._retire(acct)

    def _retire(self, acct: _Account) -> None:
        lease = acct.current
        if lease is None:
            return
        acct.current = None
        lease.retired = True
        acct.retired.append(lease)

    async def _commit(self, acct: _Account, lease: Lease) -> None:
        if lease.committed:
            return
        lease.committed = True
        try:
            await self._commit_hold(lease.hold_key, lease.used)
            self.stats.committed += lease.used
        except _Unreachable:
            lease.committed = False  # the next report retries (same idempotency key)
            return
        except _Refused:
            self.stats.lost += lease.used  # the TTL gave the lease back before the gate reported
        if lease in acct.retired:
            acct.retired.remove(lease)

    async def _commit_request(self, acct: _Account, hold_key: str, amount: int) -> None:
        """Commits a per-request hold; unreachable: retried at the next report (same idempotency key)."""
        try:
            await self._commit_hold(hold_key, amount)
            self.stats.committed += amount
        except _Unreachable:
            acct.uncommitted.append((hold_key, amount))
        except _Refused:
            self.stats.lost += amount  # its TTL passed first

    async def _commit_hold(self, hold_key: str, amount: int) -> None:
        if amount > 0:
            await self._call(self._stub.CommitHold, pb.CommitHoldRequest(
                idempotency_key=f"{hold_key}/commit", hold_key=hold_key, amount=format_minor(amount, self._scale)))
        else:
            await self._call(self._stub.ReleaseHold, pb.ReleaseHoldRequest(
                idempotency_key=f"{hold_key}/release", hold_key=hold_key, reason="unused lease"))

    async def _pay_fail_open(self, acct: _Account) -> None:
        owed = sum(acct.fail_open.owed)
        if not owed:
            return
        try:
            await self._debit(acct, owed, up_to=True)
        except (_Unreachable, _Refused):
            return
        acct.fail_open.owed.clear()
        acct.fail_open.used = 0

    async def _debit(self, acct: _Account, amount: int, *, up_to: bool = False) -> None:
        hold = await self._call(self._stub.DebitCredits, pb.DebitCreditsRequest(
            idempotency_key=self._key("debit", acct.account_id), account_id=acct.account_id, unit=self.config.unit,
            charges=[self._charge(amount)], up_to=up_to, reference=f"gateway/{self._run}"))
        self.stats.committed += parse_minor(hold.posted or "0", self._scale, "posted", allow_zero=True)

    # ---- plumbing ---------------------------------------------------------------------------------

    def _account(self, account_id: str) -> _Account:
        acct = _Account(account_id, ConsumptionRate(), FailOpen(self.config.fail_open_budget))
        self._accounts[account_id] = acct
        return acct

    def _key(self, what: str, account_id: str) -> str:
        self._seq += 1
        return f"gate/{self._run}/{what}/{self._seq}/{account_id}"

    def _charge(self, amount: int) -> pb.Charge:
        return pb.Charge(charge_id="gate", kind=pb.USAGE, name="gateway", amount=format_minor(amount, self._scale))

    async def _call(self, method: Callable[..., Awaitable[T]], request: Any) -> T:
        try:
            return await method(request, metadata=self._md, timeout=self.config.call_timeout_s)
        except grpc.aio.AioRpcError as err:
            if err.code() in _UNREACHABLE:
                raise _Unreachable(str(err.details())) from None
            details = str(err.details() or "")
            if err.code() is grpc.StatusCode.INVALID_ARGUMENT:
                raise ValueError(f"the ledger refused the gate's request: {details}") from None
            reason = Denial.INSUFFICIENT if "insufficient" in details else Denial.ACCOUNT_REFUSED
            raise _Refused(reason, f"{err.code().name}: {details}") from None

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _export(self) -> None:
        metrics.export(self.gate_id, self.stats, self._exported)
