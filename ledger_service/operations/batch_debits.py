"""BatchDebitCredits as columns: every debit of a batch follows DebitCredits' rules (`holds._debit`),
without a Call, Reserve, Operation, Hold and pb.Hold per debit (those cost ~110 µs of server CPU per
batched debit).

- The API layer unpacks a batch into columns (`BatchDebits`): per debit its idempotency key, its
  request digest and its *shape*: everything of the debit but its key (account, unit, charges,
  reference, up_to). Each distinct shape is unpacked, checked and scaled once.
- Per account, the debits go to the AccountWriter as ONE operation: it loads their idempotency keys
  with the account (`Operation.own_keys`) and runs in a transaction of its own, applying each debit
  in request order as `holds._debit` would: a used key replays (or conflicts), an unknown account is
  NOT_FOUND, then `allocation.takes` over the shape's eligible lots in policy order (found once per
  shape and batch: eligibility depends on a lot's configuration, not its balance). Insufficient
  credit refuses that debit alone; the others proceed. The journal entries, debits rows, balance
  deltas and stored responses are those the unary path writes.
- A debit's answer is its Hold. Two debits of one shape with the same allocations differ only in
  hold_key, field 1 of Hold and serialized first; so each distinct (shape, allocations) is packed
  once (`DebitWire.tail`) and each debit's answer is its hold_key field + those bytes; the same bytes
  are stored under its idempotency key, and a replay returns them. The rows such debits write differ
  only in hold_key too: each (shape, allocations) registers one `DebitTemplate` with the flush, and each
  debit queues only its hold key and template index (the flush joins them in SQL).
- An account's operation that fails other than by a refusal (a bug, a lost connection) runs again
  debit by debit through the unary path (`holds.batch_debit_credits`): one bad debit cannot fail its
  neighbours.

Checked against the unary path by seeded random batches (tests/ledger/test_batch_debits.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from google.protobuf.message import Message

from ledger_service.domain import holds as rules
from ledger_service.domain.allocation import AllocationResult, takes
from ledger_service.domain.holds import HoldRequest
from ledger_service.domain.model import DEBIT_PREFIX, Allocation, Charge, Hold, Lot
from ledger_service.operations.calls import Call
from ledger_service.operations.context import Ledger
from ledger_service.operations.holds import Reserve, batch_debit_credits
from ledger_service.storage.account_writer import Operation
from ledger_service.storage.effects import DebitTemplate, Effects, debit_json
from ledger_service.storage.state import AccountState
from service_runtime.api_keys import Caller
from service_runtime.rejections import Rejection, conflict, not_found

M = TypeVar("M", bound=Message)
Answer = bytes | Exception  # a debit's serialized Hold, or why it was refused


@dataclass(slots=True)
class BatchDebits:
    """A BatchDebitCredits request as columns (built by `api.mapping.batch_columns`)."""

    requests: Sequence[Message]   # the debits as sent (only the fallback path reads them)
    keys: list[str]               # checked idempotency keys ("" for a refused debit)
    digests: list[bytes]          # each debit's request hash (service_runtime.idempotency.request_hash)
    shape_of: list[int]           # index into `shapes`; -1: refused while unpacking (see `refused`)
    shapes: list[Reserve | Rejection]
    refused: dict[int, Rejection]


class DebitWire(Protocol):
    """How a debit's Hold becomes bytes (api.packing)."""

    def tail(self, hold: Hold, scale: int) -> bytes:
        """The serialized Hold of `hold` with an empty hold_key."""
        ...

    def keyed(self, hold_key: str, tail: bytes) -> bytes:
        """`tail` with its hold_key field in front: the serialized Hold."""
        ...


@dataclass(slots=True)
class _Shape:
    reserve: Reserve
    scale: int
    charges: list[Charge]
    requested: int
    charges_json: str = ""


def _nested(rej: Rejection, index: int) -> Rejection:
    """`rej` of the debit at `index`: its field named in place (debits[3].charges[0].amount)."""
    field = f"debits[{index}].{rej.field}"
    said = rej.message.removeprefix(f"{rej.field}: ") if rej.field else rej.message
    return Rejection(rej.reason, said, field)


async def _shapes(ledger: Ledger, tenant_id: str, shapes: list[Reserve | Rejection]) -> list[_Shape | Rejection]:
    """Each distinct shape scaled once: an unknown unit or a bad amount refuses every debit of it."""
    out: list[_Shape | Rejection] = []
    for shape in shapes:
        if isinstance(shape, Rejection):
            out.append(shape)
            continue
        try:
            scale = await ledger.scale(tenant_id, shape.unit)
            charges = [c.scaled(scale) for c in shape.charges]
        except Rejection as rej:
            out.append(rej)
            continue
        out.append(_Shape(shape, scale, charges, sum(c.amount for c in charges)))
    return out


async def batch_debit(ledger: Ledger, caller: Caller, method: str, batch: BatchDebits, wire: DebitWire,
                      response: type[M], pack: Callable[[Hold, int], M]) -> list[Answer]:
    """Every debit's answer in request order (`response`/`pack`: the unary path's, for the fallback)."""
    tenant_id = caller.tenant_id
    shapes = await _shapes(ledger, tenant_id, batch.shapes)
    answers: list[Answer] = [b""] * len(batch.keys)
    by_account: dict[str, list[int]] = {}
    for i, s in enumerate(batch.shape_of):
        if s < 0:
            answers[i] = _nested(batch.refused[i], i)
            continue
        shape = shapes[s]
        if isinstance(shape, Rejection):
            answers[i] = _nested(shape, i)
        else:
            by_account.setdefault(shape.reserve.account_id, []).append(i)

    async def one_account(account_id: str, indexes: list[int]) -> None:
        run = _AccountRun(caller, method, batch, shapes, indexes, wire)
        op = Operation(method, "", b"", run.apply, _no_message, own_keys=tuple(batch.keys[i] for i in indexes),
                       size=len(indexes))
        (outcome,) = await ledger.writer.submit_many(tenant_id, account_id, [op])
        if isinstance(outcome, Exception):  # not a refusal (those are per debit): one by one, unary
            await _one_by_one(ledger, caller, method, batch, shapes, indexes, answers, response, pack)
            return
        for i, got in zip(indexes, outcome.result, strict=True):
            answers[i] = got

    await asyncio.gather(*(one_account(a, idx) for a, idx in by_account.items()))
    return answers


def _no_message(result: object) -> None:
    return None


async def _one_by_one(ledger: Ledger, caller: Caller, method: str, batch: BatchDebits,
                      shapes: list[_Shape | Rejection], indexes: list[int], answers: list[Answer],
                      response: type[M], pack: Callable[[Hold, int], M]) -> None:
    debits: list[tuple[Call[M], Reserve] | Rejection] = []
    for i in indexes:
        shape = shapes[batch.shape_of[i]]
        assert not isinstance(shape, Rejection)
        debits.append((Call(caller, method, batch.requests[i], batch.keys[i], response), shape.reserve))
    got = await batch_debit_credits(ledger, caller.tenant_id, debits, pack)
    for i, one in zip(indexes, got, strict=True):
        answers[i] = one if isinstance(one, Exception) else one.SerializeToString()


class _AccountRun:
    """One account's debits of a batch, applied by the AccountWriter (see the module docstring)."""

    __slots__ = ("_batch", "_caller", "_eligible", "_indexes", "_memo", "_method", "_shapes", "_wire")

    def __init__(self, caller: Caller, method: str, batch: BatchDebits, shapes: list[_Shape | Rejection],
                 indexes: list[int], wire: DebitWire) -> None:
        self._caller, self._method, self._batch, self._shapes = caller, method, batch, shapes
        self._indexes, self._wire = indexes, wire
        self._eligible: dict[int, list[list[Lot]]] = {}
        # (shape, *allocations) -> (Hold bytes without hold_key, its DebitTemplate's index in this flush)
        self._memo: dict[tuple[int | tuple[int, str, int], ...], tuple[bytes, int]] = {}

    def apply(self, state: AccountState, fx: Effects) -> list[bytes | Rejection]:
        self._eligible.clear()  # a retried transaction reloads the account
        self._memo.clear()
        batch, method, idem = self._batch, self._method, state.idempotency
        keys, digests, shape_of = batch.keys, batch.digests, batch.shape_of
        out: list[bytes | Rejection] = []
        for i in self._indexes:
            key, digest = keys[i], digests[i]
            stored = idem.get(key)
            if stored is not None:
                if stored[0] != method or stored[1] != digest:
                    out.append(conflict("idempotency_key", f"{key!r} was used for a different request"))
                else:
                    out.append(stored[2])
                continue
            if not state.exists:
                out.append(not_found("account_id", f"account {state.account_id!r} not found"))
                continue
            try:
                answer = self._debit(state, fx, shape_of[i], key)
            except Rejection as rej:
                out.append(rej)
                continue
            fx.remember(key, method, digest, answer)
            idem[key] = (method, digest, answer)
            out.append(answer)
        return out

    def _debit(self, state: AccountState, fx: Effects, s: int, key: str) -> bytes:
        """One debit: allocate, journal, record; its answer (raises Rejection with nothing changed)."""
        shape = self._shapes[s]
        assert not isinstance(shape, Rejection)
        eligible = self._eligible.get(s)
        if eligible is None:
            lots = state.sorted_lots(shape.reserve.unit)
            eligible = self._eligible[s] = [
                [lot for lot in lots if lot.scope.covers(c.kind, c.name) and lot.usable_for(c.service_start,
                                                                                            c.service_end)]
                for c in shape.charges]
        taken = takes(shape.charges, eligible, up_to=shape.reserve.up_to)
        memo_key: tuple[int | tuple[int, str, int], ...] = (s, *[(i, lot.lot_id, amount) for i, lot, amount in taken])
        found = self._memo.get(memo_key)
        if found is None:
            found = self._memo[memo_key] = self._template(state, fx, shape, taken)
        tail, template = found
        hold_key = DEBIT_PREFIX + key
        fx.debit_by_template(template, hold_key, [lot for _, lot, _ in taken])
        return self._wire.keyed(hold_key, tail)

    def _template(self, state: AccountState, fx: Effects, shape: _Shape,
                  taken: list[tuple[int, Lot, int]]) -> tuple[bytes, int]:
        """The Hold of a debit of `shape` that took `taken`, as the unary path builds it, keyless; and the
        template (registered in `fx`) of the rows such a debit writes."""
        now = fx.now
        allocations = [Allocation(position, shape.charges[index].charge_id, lot.lot_id, amount, lot.lot_type)
                       for position, (index, lot, amount) in enumerate(taken)]
        reserved = sum(a.amount for a in allocations)
        reserve = shape.reserve
        ask = HoldRequest(hold_key="", unit=reserve.unit, charges=shape.charges, up_to=reserve.up_to, ttl_s=0,
                          release_on_ttl=False, reference=reserve.reference, actor=self._caller.key_id)
        hold = rules.new_hold(ask, state.account_id, AllocationResult(allocations, shape.requested, reserved),
                              state.policy.version, now)
        rules.settle_as_debit(hold, now)
        shape.charges_json, allocations_json = debit_json(shape.charges, allocations)
        template = fx.add_template(DebitTemplate(
            account_id=state.account_id, unit=reserve.unit,
            takes=tuple((lot.lot_id, amount) for _, lot, amount in taken),
            actor=self._caller.key_id, reference=reserve.reference, policy_version=state.policy.version,
            requested=shape.requested, reserved=reserved, up_to=reserve.up_to, charges_json=shape.charges_json,
            allocations_json=allocations_json))
        return self._wire.tail(hold, shape.scale), template
