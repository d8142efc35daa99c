"""What the reconciler found: violations (check, tenant, message, the ids to look at) and counts."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Check(StrEnum):
    """The reconciler's checks (SPEC §11); the values are what reports and scripts see."""

    INVOICE_FINALIZED = "invoice-finalized"
    INVOICE_VOIDED = "invoice-voided"
    INVOICE_VOID_PENDING = "invoice-void_pending"
    INVOICE_DRAFT = "invoice-draft"
    IN_DOUBT = "in-doubt"
    ORPHAN_HOLD = "orphan-hold"
    SPENT_TWICE = "spent-twice"
    NEGATIVE_LOT = "negative-lot"
    JOURNAL = "journal"
    FINANCE_BOOKS = "finance-books"
    FINANCE_REDERIVED = "finance-rederived"  # the books replayed from the journal from scratch differ
    IDEMPOTENCY = "idempotency"
    SCALE = "scale"
    DECISION = "decision"
    QUIET = "quiet"


@dataclass(frozen=True)
class Violation:
    check: str
    tenant_id: str
    message: str
    ids: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        ids = " ".join(f"{k}={v}" for k, v in self.ids.items())
        return f"[{self.check}] tenant={self.tenant_id} {ids} :: {self.message}"


@dataclass
class ReconcileReport:
    violations: list[Violation] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def ok(self) -> bool:
        return not self.violations

    def by_check(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for v in self.violations:
            out[v.check] += 1
        return dict(out)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "violations": [asdict(v) for v in self.violations],
                "by_check": self.by_check(), "checked": dict(self.checked)}

    def render(self) -> str:
        lines = ["checked: " + ", ".join(f"{k}={v}" for k, v in sorted(self.checked.items()))]
        lines += [v.line() for v in self.violations]
        lines.append(f"{len(self.violations)} violation(s)" if self.violations else "no violations")
        return "\n".join(lines)


@dataclass
class TenantFindings:
    """One tenant's share of the report: `bad` records a violation, `count` what was looked at."""

    tenant_id: str
    report: ReconcileReport

    def bad(self, check: Check, message: str, **ids: str) -> None:
        self.report.violations.append(Violation(str(check), self.tenant_id, message, ids))

    def count(self, what: str, n: int = 1) -> None:
        self.report.checked[what] += n
