"""One mutating call as idempotency sees it, and the three ways a ledger write runs exactly once.

- `submit`: through the AccountWriter (one account's lots and holds; the key is recorded in the
  account's group-commit transaction, with the call's audit record);
- `once`: in one transaction of its own (`service_runtime.idempotency.run_idempotent`);
- `stored_sweep` / `remember_sweep`: a sweep over many accounts, whose parts are idempotent per
  account and whose whole response is stored under the caller's key once all parts are done.

The same key with the same request replays the first response; with another request it is
ALREADY_EXISTS naming `idempotency_key`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import asyncpg
from google.protobuf.message import Message

from ledger_service.operations.context import Ledger
from ledger_service.storage.account_writer import Apply, Operation, Outcome
from service_runtime.api_keys import Caller
from service_runtime.audit import claim_audit
from service_runtime.idempotency import remember, request_hash, run_idempotent, stored_response

M = TypeVar("M", bound=Message)


@dataclass(slots=True)  # not frozen: one per debit on the hot path
class Call(Generic[M]):
    """Who calls which verb with which request (and its checked idempotency key), and the response
    type its stored answer decodes to.

    `method` is the verb's name in idempotency records; `earlier_methods` are names it had before
    (a renamed RPC): keys stored under them replay too. `actor` is the caller's key id: the actor
    of journal entries, the granted_by of lots.
    """

    caller: Caller
    method: str
    request: Message
    key: str
    response: type[M]
    earlier_methods: tuple[str, ...] = ()

    @property
    def tenant_id(self) -> str:
        return self.caller.tenant_id

    @property
    def actor(self) -> str:
        return self.caller.key_id

    @property
    def digest(self) -> bytes:
        return request_hash(self.request)


def operation(call: Call[M], apply: Apply, pack: Callable[[Any], M], *, hold_keys: tuple[str, ...] = (),
              lot_ids: tuple[str, ...] = (), audited: bool = True) -> Operation:
    """The AccountWriter operation of `call`; `audited` claims the call's audit record for its transaction."""
    return Operation(call.method, call.key, call.digest, apply, pack, hold_keys=hold_keys, lot_ids=lot_ids,
                     audit=claim_audit() if audited else None, earlier_methods=call.earlier_methods)


def unwrap(outcome: Outcome, response: type[M]) -> M:
    """The fresh response, or the stored one of an earlier call with the same key."""
    if outcome.replay is not None:
        return response.FromString(outcome.replay)
    assert isinstance(outcome.message, response)
    return outcome.message


async def submit(ledger: Ledger, call: Call[M], account_id: str, apply: Apply, pack: Callable[[Any], M], *,
                 hold_keys: tuple[str, ...] = (), lot_ids: tuple[str, ...] = ()) -> M:
    """Applies `apply` to `account_id` through the AccountWriter, once per key."""
    op = operation(call, apply, pack, hold_keys=hold_keys, lot_ids=lot_ids)
    return unwrap(await ledger.writer.submit(call.tenant_id, account_id, op), call.response)


async def once(ledger: Ledger, call: Call[M], work: Callable[[asyncpg.Connection], Awaitable[Any]],
               pack: Callable[[Any], M]) -> M:
    """Runs `work` in one transaction that also records the key (or replays the stored response)."""
    out = await run_idempotent(ledger.pool, call.tenant_id, call.key, call.method, call.request, work, pack)
    return call.response.FromString(out) if isinstance(out, bytes) else out  # type: ignore[return-value]


async def stored_sweep(ledger: Ledger, call: Call[M]) -> M | None:
    """The stored response of a sweep that spans accounts (each account also has its own key)."""
    async with ledger.pool.acquire() as conn:
        stored = await stored_response(conn, call.tenant_id, call.key, call.method, call.digest)
    return None if stored is None else call.response.FromString(stored)


async def remember_sweep(ledger: Ledger, call: Call[M], response: M) -> M:
    """Stores a finished sweep's response (a concurrent identical sweep may have stored it first)."""
    await remember(ledger.pool, call.tenant_id, call.key, call.method, call.digest, response, if_absent=True)
    return response


def part_key(call: Call[Any], account_id: str) -> str:
    """The key of one account's part of a sweep: a retried sweep skips the accounts already done."""
    return f"{call.key}/{account_id}"
