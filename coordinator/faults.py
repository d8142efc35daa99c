"""Fault injection at the step boundaries of the sagas (used by the tests and by nothing else).

An activity calls `hit(step, "before")` just before its participant call and `hit(step, "after")`
just after it returned. A planned fault raises there: a business rejection (non-retryable), a
transport error (retried), or it blocks until released (to kill a worker mid-saga). "after" models
a lost response: the participant did the work but the coordinator never heard.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


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
    _release: asyncio.Event = field(default_factory=asyncio.Event)

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
                await self._release.wait()


NO_FAULTS = FaultPlan()
