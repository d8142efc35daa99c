"""When credit leaves use: expiry, closing, voids, and where released or reinstated credit goes (SPEC §5, §8).

Pure rules over a `Lot`; the operations layer applies them through the journal:
- a lot's unused credit expires once its usable window (expires_at, extended by any reinstatement
  grace) has ended; a lot closes when nothing is left available or held after that;
- credit that comes back to a lot (a released hold, a reversed posting, a reversed transfer) on a
  lot that is voided or past its usable window does not become usable again: it leaves at once,
  as VOID for a voided lot and EXPIRE otherwise, unless a reversal grants grace — or the lot has
  not settled yet (`domain/settlement.py`): then it stays on the lot, pending expiry, for the
  charges from inside the window still owed it, and expires with the rest when the lot settles.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from ledger_service.domain.journal import EntryKind
from ledger_service.domain.model import Lot
from ledger_service.domain.settlement import Settlement

AT_ONCE = Settlement()  # an account never recorded as billed: lots settle as soon as their window ends


def _ended_kind(lot: Lot, now: datetime) -> EntryKind | None:
    """VOID for a voided lot, EXPIRE for one past its usable window, None for a live lot."""
    if lot.closed_at is not None and not lot.is_past_usable(lot.closed_at):
        return EntryKind.VOID
    if lot.is_past_usable(now) or lot.closed_at is not None:
        return EntryKind.EXPIRE
    return None


def terminal_kind(lot: Lot, now: datetime, settlement: Settlement = AT_ONCE) -> EntryKind | None:
    """Where credit coming back to `lot` goes: VOID (voided lot), EXPIRE (past its window and
    settled), or None: it stays available (a live lot, or one pending expiry until it settles)."""
    kind = _ended_kind(lot, now)
    if kind is EntryKind.EXPIRE and lot.is_past_usable(now) and not settlement.settles(lot):
        return None
    return kind


def reinstated_fate(lot: Lot, now: datetime, grace_s: int | None,
                    settlement: Settlement = AT_ONCE) -> EntryKind | datetime | None:
    """What happens to credit a reversal gives back to `lot`.

    None: it stays on the lot (live: usable again; past its window but not settled: pending
    expiry). An EntryKind: it leaves at once as that kind (no grace asked for on a settled lot, or
    the lot was voided: grace never revives a void). A datetime: the lot stays usable until then
    (REINSTATE_WITH_GRACE on a lot past its window).
    """
    kind = _ended_kind(lot, now)
    if kind is None:
        return None
    if kind is EntryKind.VOID:
        return kind
    if grace_s is not None:
        return now + timedelta(seconds=grace_s)
    return terminal_kind(lot, now, settlement)


def expires(lot: Lot, as_of: datetime, settlement: Settlement = AT_ONCE) -> bool:
    """Does `lot` have unused credit whose usable window ended by `as_of`, and has it settled?"""
    return lot.available > 0 and lot.is_past_usable(as_of) and settlement.settles(lot)


def closes(lot: Lot, as_of: datetime) -> bool:
    """Is `lot` past its usable window with nothing left available or held (so it closes)?"""
    return lot.is_past_usable(as_of) and lot.held == 0 and lot.available == 0


def void_amount(lot: Lot) -> int | None:
    """The credit a VoidGrant takes from `lot`; None if it is already closed (voided or expired)."""
    return None if lot.closed_at is not None else lot.available
