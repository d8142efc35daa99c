"""Fault plans: which participant call fails, how, and when (used by the tests and the harness worker).

A fault names the call by the coordinator activity's step (`prepare_finalize`, `commit_hold`, ...;
`STEP_METHODS` maps each to the RPC it makes) or by the RPC's full method name, and a phase:
"before" the request leaves the worker or "after" the response came back. A planned fault acts there:
a business rejection (FAILED_PRECONDITION, not retried before the saga's decision), a transport error
(UNAVAILABLE, retried), or it blocks until released (to kill or terminate mid-saga). "after" models a
lost response: the participant did the work but the coordinator never heard.

Faults enter only through `FaultInterceptor` (harness.faults.interceptor) on the channels of a worker
the harness builds; the production worker has no fault code.

Across processes (a harness worker run as `python -m harness.worker` that a test SIGKILLs), a plan
comes from CREDITS_FAULTS ("step:phase:kind[:times],...") and a block is signalled through files
in CREDITS_FAULT_DIR: the call creates `reached` when it blocks and waits for `release`.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path

import grpc

_LEDGER = "/credits.ledger.v1.LedgerService/"
_INVOICE = "/credits.invoice.v1.InvoiceService/"
STEP_METHODS = {  # the coordinator activities' step names -> the RPC each one calls
    "get_lot_boundaries": _LEDGER + "GetLotBoundaries", "reserve_credits": _LEDGER + "ReserveCredits",
    "reserve_units": _LEDGER + "ReserveCredits", "reserve_converted": _LEDGER + "ReserveCredits",
    "list_units": _LEDGER + "ListUnits", "list_rates": _LEDGER + "ListRates", "get_balance": _LEDGER + "GetBalance",
    "commit_hold": _LEDGER + "CommitHold", "release_hold": _LEDGER + "ReleaseHold",
    "reverse_hold": _LEDGER + "ReverseHold", "list_holds": _LEDGER + "ListHolds",
    "expire_lots": _LEDGER + "ExpireLots", "grant_credits": _LEDGER + "GrantCredits",
    "get_invoice": _INVOICE + "GetInvoice", "split_draft": _INVOICE + "SplitDraft",
    "prepare_finalize": _INVOICE + "PrepareFinalize", "commit_finalize": _INVOICE + "CommitFinalize",
    "abort_finalize": _INVOICE + "AbortFinalize", "prepare_void": _INVOICE + "PrepareVoid",
    "commit_void": _INVOICE + "CommitVoid", "abort_void": _INVOICE + "AbortVoid",
    "create_draft": _INVOICE + "CreateDraft", "list_due_subscriptions": _INVOICE + "ListDueSubscriptions",
    "list_invoices": _INVOICE + "ListInvoices", "list_settlements": _INVOICE + "ListSettlements",
    "record_settlement": _LEDGER + "RecordSettlement",
    "release_expired_holds": _LEDGER + "ReleaseExpiredHolds",
}
PHASES = ("before", "after")
KINDS = ("reject", "transport", "block")
REJECT_CODE = grpc.StatusCode.FAILED_PRECONDITION  # a business rejection, as a participant sends it
TRANSPORT_CODE = grpc.StatusCode.UNAVAILABLE


def method_for(step: str) -> str:
    """The full RPC method name ("/package.Service/Method") of a step name, or the name itself if it is one."""
    if step.startswith("/"):
        return step
    try:
        return STEP_METHODS[step]
    except KeyError:
        raise ValueError(f"unknown step {step!r}: one of {', '.join(sorted(STEP_METHODS))} "
                         "or a full method name") from None


def injected_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """The error a participant call fails with, as if the service (or the network) had sent it."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@dataclass
class Fault:
    step: str
    phase: str  # before | after
    kind: str  # reject | transport | block
    times: int = 1
    fired: int = 0
    method: str = ""

    def __post_init__(self) -> None:
        if self.phase not in PHASES or self.kind not in KINDS:
            raise ValueError(f"fault {self.step}:{self.phase}:{self.kind}: phase is one of {PHASES}, "
                             f"kind one of {KINDS}")
        self.method = self.method or method_for(self.step)


@dataclass
class FaultPlan:
    faults: list[Fault] = field(default_factory=list)
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    signal_dir: Path | None = None
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    @staticmethod
    def from_env() -> FaultPlan:
        plan = FaultPlan()
        for spec in filter(None, os.environ.get("CREDITS_FAULTS", "").split(",")):
            step, phase, kind, *times = spec.split(":")
            plan.add(step, phase, kind, int(times[0]) if times else 1)
        if os.environ.get("CREDITS_FAULT_DIR"):
            plan.signal_dir = Path(os.environ["CREDITS_FAULT_DIR"])
        return plan

    def add(self, step: str, phase: str, kind: str, times: int = 1) -> FaultPlan:
        self.faults.append(Fault(step, phase, kind, times))
        return self

    def release_blocked(self) -> None:
        self._release.set()

    async def hit(self, method: str, phase: str) -> None:
        """Applies the next planned fault for this call and phase, if any: raises the injected error,
        or blocks until released; returns when the call may go on."""
        for fault in self.faults:
            if fault.method != method or fault.phase != phase or fault.fired >= fault.times:
                continue
            fault.fired += 1
            if fault.kind == "reject":
                raise injected_error(REJECT_CODE, f"injected rejection {phase} {fault.step}")
            if fault.kind == "transport":
                raise injected_error(TRANSPORT_CODE, f"injected transport error {phase} {fault.step}")
            await self._block(fault)

    async def _block(self, fault: Fault) -> None:
        self.reached.set()
        if self.signal_dir is None:
            await self._release.wait()
            return
        (self.signal_dir / "reached").write_text(f"{fault.step} {fault.phase} pid={os.getpid()}\n")
        # Another process releases us through a file: nothing to await but the file system.
        while not self._release.is_set() and not (self.signal_dir / "release").exists():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
