"""The chaos campaign's fault book: every planned fault, and what it actually did.

A fault is *applied* only when its effect was seen: a process that was running is gone (killed, reaped
with SIGKILL), a new postmaster runs, the proxy delayed or swallowed bytes, cut connections or lost
responses, a saga was terminated (inside its in-doubt window, for the in-doubt kinds). A fault that did
nothing is *missed* (no process to kill, no traffic in the window, no saga running, the window not hit)
and one that raised is an *error* — neither counts as applied, and neither is a recovery. The campaign
reports planned and applied per kind and lists every fault that was not applied; `creditctl chaos`
fails when one was not applied unless told to tolerate it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

APPLIED, MISSED, ERROR, PENDING = "applied", "missed", "error", "pending"


@dataclass
class FaultRecord:
    batch: int
    at_s: float
    kind: str
    target: str = ""
    status: str = PENDING
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "at_s": self.at_s, "kind": self.kind, "target": self.target,
                "status": self.status, "detail": self.detail}

    def line(self) -> str:
        where = f"@{self.target}" if self.target else ""
        return f"batch {self.batch + 1} +{self.at_s:.2f}s {self.kind}{where}: {self.status} ({self.detail})"


class FaultBook:
    """One record per fault of the plan, opened pending before anything runs: a fault the injector never
    reached stays in the book and ends missed."""

    def __init__(self, plan: list[list[tuple[float, str, str]]]) -> None:  # per batch: (at_s, kind, target)
        self.batches = [[FaultRecord(b, at_s, kind, target) for at_s, kind, target in faults]
                        for b, faults in enumerate(plan)]
        self.records = [r for batch in self.batches for r in batch]

    @staticmethod
    def applied(record: FaultRecord, detail: str) -> None:
        record.status, record.detail = APPLIED, detail

    @staticmethod
    def missed(record: FaultRecord, detail: str) -> None:
        record.status, record.detail = MISSED, detail

    @staticmethod
    def error(record: FaultRecord, detail: str) -> None:
        record.status, record.detail = ERROR, detail

    def close_pending(self, detail: str) -> None:
        """Faults whose effect was still awaited when the campaign stopped them: missed."""
        for record in self.records:
            if record.status == PENDING:
                self.missed(record, detail)

    def planned(self) -> dict[str, int]:
        return dict(sorted(Counter(r.kind for r in self.records).items()))

    def applied_by_kind(self) -> dict[str, int]:
        counts = Counter(r.kind for r in self.records if r.status == APPLIED)
        return {kind: counts.get(kind, 0) for kind in self.planned()}

    def not_applied(self) -> list[FaultRecord]:
        return [r for r in self.records if r.status != APPLIED]
