"""WatchBalance: a snapshot, then every committed change of the account's balance, each with the
account's sequence (`ledger_service/storage/balance_feed.py` says where the sequence comes from).

The stream's promise: the sequences it sends after the first message are exactly cursor + 1,
cursor + 2, ... — no gap, no duplicate. A client that reconnects with `after_sequence` = the last
one it saw gets exactly what it missed; when that is unknown (ahead of the ledger) or further back
than the feed can replay, or when the stream fell too far behind the account's changes, it gets a
RESYNC carrying a fresh snapshot, and the promise starts again from there.

Coalescing: a stream is pulled for its next message only once its previous one is written, so while
a write is slow (a thousand streams on one event loop) its account's changes pile up. They go out
together as ONE message (the first change with the next ones in `following`, at most
MAX_PER_MESSAGE), not one write each: a stream behind by k changes costs one write, not k, and the
promise is unchanged — every change, in order, each with its own sequence and balances.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from ledger_service.operations.context import Ledger
from ledger_service.storage.balance_feed import AccountChannel, BalanceFeed, Change, changes_after

MAX_PER_MESSAGE = 256  # changes in one message (the first and its `following`)


class Kind(enum.Enum):
    SNAPSHOT = "SNAPSHOT"
    UPDATE = "UPDATE"
    RESYNC = "RESYNC"


@dataclass(frozen=True, slots=True)
class Message:
    kind: Kind
    change: Change
    reason: str = ""
    following: tuple[Change, ...] = ()  # UPDATE: the changes right after `change`, sent with it


def _updates(changes: list[Change]) -> Iterator[Message]:
    """Contiguous changes as UPDATE messages of up to MAX_PER_MESSAGE changes each."""
    for at in range(0, len(changes), MAX_PER_MESSAGE):
        part = changes[at:at + MAX_PER_MESSAGE]
        yield Message(Kind.UPDATE, part[0], following=tuple(part[1:]))


def _snapshot(channel: AccountChannel) -> Change:
    return Change(channel.seq, None, channel.balances)


async def _first(channel: AccountChannel, after: int) -> tuple[list[Message], int]:
    """What the stream starts with, and its cursor after it."""
    if after == 0:
        return [Message(Kind.SNAPSHOT, _snapshot(channel))], channel.seq
    missed = await channel.history(after)
    if missed is None:
        why = ("after_sequence is ahead of the account's changes" if after > channel.seq
               else "after_sequence is too far back to replay")
        return [Message(Kind.RESYNC, _snapshot(channel), why)], channel.seq
    return list(_updates(missed)), after


async def _wait(channel: AccountChannel, cursor: int, epoch: int) -> None:
    """Until the channel has a change after `cursor`, or started over."""
    while channel.seq <= cursor and channel.epoch == epoch:
        await channel.changed.wait()


async def watch(feed: BalanceFeed, tenant_id: str, account_id: str, after: int) -> AsyncIterator[Message]:
    """The stream's messages, until the caller stops iterating (the RPC is cancelled)."""
    channel = await feed.attach(tenant_id, account_id)
    try:
        first, cursor = await _first(channel, after)
        epoch = channel.epoch
        for message in first:
            yield message
            cursor = max(cursor, (message.following or (message.change,))[-1].seq)
        while True:
            await _wait(channel, cursor, epoch)
            if channel.epoch != epoch or not channel.recent or channel.recent[0].seq > cursor + 1:
                # the channel started over, or this stream fell behind what it keeps
                epoch = channel.epoch
                yield Message(Kind.RESYNC, _snapshot(channel), "the stream fell behind the account's changes")
                cursor = channel.seq
                continue
            for message in _updates(changes_after(channel.recent, cursor)):
                yield message
                cursor = (message.following or (message.change,))[-1].seq
    finally:
        feed.detach(channel)


def feed_of(ledger: Ledger, dsn: str) -> BalanceFeed:
    return BalanceFeed(ledger.pool, dsn)
