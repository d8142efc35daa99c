"""Fault injection at the step boundaries of the sagas (used by the tests and by nothing else).

An activity calls `hit(step, "before")` just before its participant call and `hit(step, "after")`
just after it returned. A planned fault raises there: a business rejection (non-retryable), a
transport error (retried), or it blocks until released (to kill a worker mid-saga). "after" models
a lost response: the participant did the work but the coordinator never heard.

Across processes (a worker run as `python -m coordinator.worker` that a test SIGKILLs), a plan
comes from CREDITS_FAULTS ("step:phase:kind[:times],...") and a block is signalled through files
in CREDITS_FAULT_DIR: the activity creates `reached` when it blocks and waits for `release`.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path


class InjectedRejection(Exception):
    """Behaves like a business rejection from a participant."""


class InjectedTransportError(Exception):
    """Behaves like UNAVAILABLE: the call may be retried."""


@dataclass
class Fault:
    step: str
    phase: str  # before | after
    kind: str  # reject | transport | block
    times: int = 1
    fired: int = 0


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

    async def hit(self, step: str, phase: str) -> None:
        for fault in self.faults:
            if fault.step != step or fault.phase != phase or fault.fired >= fault.times:
                continue
            fault.fired += 1
            if fault.kind == "reject":
                raise InjectedRejection(f"injected rejection {phase} {step}")
            if fault.kind == "transport":
                raise InjectedTransportError(f"injected transport error {phase} {step}")
            if fault.kind == "block":
                self.reached.set()
                if self.signal_dir is None:
                    await self._release.wait()
                    return
                (self.signal_dir / "reached").write_text(f"{step} {phase} pid={os.getpid()}\n")
                # Another process releases us through a file: nothing to await but the file system.
                while not self._release.is_set() and not (self.signal_dir / "release").exists():  # noqa: ASYNC110
                    await asyncio.sleep(0.02)


NO_FAULTS = FaultPlan()
