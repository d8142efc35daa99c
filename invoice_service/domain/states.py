"""The invoice state machine of the two-phase participant.

    CreateDraft ──► DRAFT ──PrepareFinalize──► PREPARED ──CommitFinalize──► FINALIZED
                    │ ▲                            │                          │
     AbandonInvoice │ └───────AbortFinalize────────┘                     PrepareVoid
                    ▼                                                         ▼
                ABANDONED   VOIDED ◄────CommitVoid──── VOID_PENDING ──AbortVoid──► FINALIZED

ABANDONED is final: the period will not be billed (a churned customer, a written-off period), no
number is consumed, its usage is frozen, and it counts as settled for the ledger's breakage rule
(`periods.SETTLED_STATUSES`), so credit expiring inside the period no longer waits for it.

Repeating a verb whose effect is already in place (commit of a finalized invoice, abort of a
draft or of an abandoned invoice, commit of a voided invoice, abort of a void never prepared,
abandon of an abandoned invoice) is a no-op success, so
retries and null compensations are harmless. Everything else not drawn above — above all a
commit after an abort, or an abort after a commit — is FAILED_PRECONDITION.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from service_runtime.rejections import precondition


class Status(enum.Enum):
    DRAFT = "DRAFT"
    PREPARED = "PREPARED"
    FINALIZED = "FINALIZED"
    VOID_PENDING = "VOID_PENDING"
    VOIDED = "VOIDED"
    ABANDONED = "ABANDONED"


class Verb(enum.Enum):
    PREPARE_FINALIZE = "PrepareFinalize"
    COMMIT_FINALIZE = "CommitFinalize"
    ABORT_FINALIZE = "AbortFinalize"
    PREPARE_VOID = "PrepareVoid"
    COMMIT_VOID = "CommitVoid"
    ABORT_VOID = "AbortVoid"
    ABANDON = "AbandonInvoice"


@dataclass(frozen=True)
class Transition:
    target: Status
    changes: bool  # False: the effect is already in place, nothing is written


S, V = Status, Verb
TRANSITIONS: dict[tuple[Verb, Status], Transition] = {
    (V.PREPARE_FINALIZE, S.DRAFT): Transition(S.PREPARED, True),
    (V.COMMIT_FINALIZE, S.PREPARED): Transition(S.FINALIZED, True),
    (V.COMMIT_FINALIZE, S.FINALIZED): Transition(S.FINALIZED, False),
    (V.ABORT_FINALIZE, S.PREPARED): Transition(S.DRAFT, True),
    (V.ABORT_FINALIZE, S.DRAFT): Transition(S.DRAFT, False),
    (V.PREPARE_VOID, S.FINALIZED): Transition(S.VOID_PENDING, True),
    (V.COMMIT_VOID, S.VOID_PENDING): Transition(S.VOIDED, True),
    (V.COMMIT_VOID, S.VOIDED): Transition(S.VOIDED, False),
    (V.ABORT_VOID, S.VOID_PENDING): Transition(S.FINALIZED, True),
    (V.ABORT_VOID, S.FINALIZED): Transition(S.FINALIZED, False),
    (V.ABANDON, S.DRAFT): Transition(S.ABANDONED, True),
    (V.ABANDON, S.ABANDONED): Transition(S.ABANDONED, False),
    # A saga that lost the race with AbandonInvoice compensates: nothing of it is frozen, so its
    # abort is the null compensation (and burns its prepare key, as on a DRAFT).
    (V.ABORT_FINALIZE, S.ABANDONED): Transition(S.ABANDONED, False),
}

_WHY: dict[Verb, str] = {
    V.PREPARE_FINALIZE: "only a DRAFT invoice can be prepared",
    V.COMMIT_FINALIZE: "only a PREPARED invoice can be committed (was it aborted, or never prepared?)",
    V.ABORT_FINALIZE: "only a PREPARED invoice can be aborted (an abort after commit is refused)",
    V.PREPARE_VOID: "only a FINALIZED invoice can be voided",
    V.COMMIT_VOID: "only a VOID_PENDING invoice can be void-committed (was the void aborted?)",
    V.ABORT_VOID: "only a VOID_PENDING invoice can have its void aborted (an abort after commit is refused)",
    V.ABANDON: "only a DRAFT invoice can be abandoned (a PREPARED one is aborted first, a FINALIZED one voided)",
}


def transition(verb: Verb, status: Status) -> Transition:
    """The transition of `verb` from `status`, or FAILED_PRECONDITION naming the invoice status."""
    found = TRANSITIONS.get((verb, status))
    if found is None:
        raise precondition("status", f"invoice is {status.value}: {verb.value} refused; {_WHY[verb]}")
    return found
