"""The fuzz oracle: send one request, check the status is documented, check a rejection wrote nothing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

OK = grpc.StatusCode.OK
DOCUMENTED = frozenset({
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
})
# Refused attempts are recorded in the audit trail on purpose ("every refused attempt leaves a record,
# and nothing else"): that one append is allowed; every other table must be unchanged.
AUDIT_TABLES = frozenset({'"public"."audit_log"'})
CALL_TIMEOUT_S = 20.0  # a call slower than this is reported as a hang (DEADLINE_EXCEEDED)
SECRET = "SECRETB"     # planted in the other tenant's free-text fields; must never come back to tenant A


def methods(service: ServiceDescriptor) -> list[MethodDescriptor]:
    return list(service.methods)


def path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def request_class(method: MethodDescriptor) -> type[Message]:
    return message_factory.GetMessageClass(method.input_type)


def response_class(method: MethodDescriptor) -> type[Message]:
    return message_factory.GetMessageClass(method.output_type)


class Snapshot:
    """Row count and content digest of every base table of a service database (from information_schema)."""

    def __init__(self, conn: asyncpg.Connection, tables: list[str]) -> None:
        self.conn = conn
        self.tables = tables
        parts = [f"SELECT {i} AS n, count(*) AS rows, md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                 f"AS digest FROM {name} t" for i, name in enumerate(tables)]
        self._sql = " UNION ALL ".join(parts)

    @classmethod
    async def connect(cls, dsn: str) -> Snapshot:
        conn = await asyncpg.connect(dsn)
        rows = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema') "
            "ORDER BY 1, 2")
        tables = [f'"{r["table_schema"]}"."{r["table_name"]}"' for r in rows]
        assert tables, "no tables found in the service database"
        return cls(conn, tables)

    async def take(self) -> dict[str, tuple[int, str]]:
        rows = await self.conn.fetch(self._sql)
        return {self.tables[r["n"]]: (r["rows"], r["digest"]) for r in rows}

    async def close(self) -> None:
        await self.conn.close()


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    response: Message | None = None


@dataclass
class Service:
    """A running service under fuzz: its channel, its database snapshotter, its descriptor."""

    name: str
    descriptor: ServiceDescriptor
    channel: grpc.aio.Channel
    snapshot: Snapshot
    calls: dict[str, int] = field(default_factory=dict)  # RPC path -> requests that reached the server
    codes: dict[tuple[str, str], int] = field(default_factory=dict)  # (RPC, status) -> count, for tuning
    _last: dict[str, tuple[int, str]] | None = None     # snapshot still valid (nothing written since)

    def invalidate(self) -> None:
        """Something outside checked_call wrote to the database (seeding): the cached snapshot is stale."""
        self._last = None

    async def call(self, method: MethodDescriptor, request: Message | bytes, key: str | None,
                   extra_metadata: list[tuple[str, Any]] | None = None) -> Outcome:
        serializer: Callable[[Any], bytes] = (lambda b: b) if isinstance(request, bytes) else \
            (lambda m: m.SerializeToString())
        rpc = self.channel.unary_unary(path(method), request_serializer=serializer,
                                       response_deserializer=response_class(method).FromString)
        md: list[tuple[str, Any]] = [] if key is None else [("x-api-key", key)]
        md += extra_metadata or []
        try:
            response = await rpc(request, metadata=md, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as err:
            return Outcome(err.code(), err.details() or "")
        return Outcome(OK, "", response)

    async def checked_call(self, method: MethodDescriptor, request: Message | bytes, key: str | None,
                           extra_metadata: list[tuple[str, Any]] | None = None, *,
                           secret_allowed: bool = False) -> Outcome:
        """Calls and checks the oracle: documented status; a rejected call leaves every table unchanged;
        an OK response never carries the other tenant's planted secret (unless called with that tenant's key)."""
        before = self._last if self._last is not None else await self.snapshot.take()
        self._last = None
        outcome = await self.call(method, request, key, extra_metadata)
        self.calls[path(method)] = self.calls.get(path(method), 0) + 1
        stat = (method.name, outcome.code.name + " " + outcome.details.split(":")[0][:30])
        self.codes[stat] = self.codes.get(stat, 0) + 1
        assert outcome.code in DOCUMENTED, (
            f"{path(method)} returned {outcome.code.name}: {outcome.details[:2000]}\nrequest: {describe(request)}")
        if outcome.code != OK:
            after = await self.snapshot.take()
            changed = {t: (before.get(t), after.get(t)) for t in after
                       if before.get(t) != after.get(t) and t not in AUDIT_TABLES}
            for t in AUDIT_TABLES & after.keys():  # a refused attempt leaves one audit record, by design
                grew = after[t][0] - before[t][0]
                assert grew in (0, 1), f"{path(method)} refused but wrote {grew} rows to {t}"
            assert not changed, (f"{path(method)} was rejected ({outcome.code.name}: {outcome.details[:300]}) "
                                 f"but changed tables {changed}\nrequest: {describe(request)}")
            self._last = after
        elif not secret_allowed:
            assert outcome.response is not None
            raw = outcome.response.SerializeToString()
            assert SECRET.encode() not in raw, (
                f"{path(method)} returned another tenant's data: {describe(outcome.response)}\n"
                f"request: {describe(request)}")
        return outcome


def describe(msg: Message | bytes, limit: int = 1500) -> str:
    """A short printable rendering of a request (huge strings and long repeats elided)."""
    if isinstance(msg, bytes):
        return f"<{len(msg)} raw bytes: {msg[:80]!r}>"
    text = _short(msg)
    return text if len(text) <= limit else text[:limit] + "..."


def _short(msg: Message) -> str:
    parts = []
    for fd, value in msg.ListFields():
        if isinstance(value, str):
            parts.append(f"{fd.name}={value[:40]!r}{f'...({len(value)} chars)' if len(value) > 40 else ''}")
        elif isinstance(value, Message):
            parts.append(f"{fd.name}={{{_short(value)}}}")
        elif hasattr(value, "__len__") and not isinstance(value, bytes):
            items = list(value.items()) if hasattr(value, "items") else list(value)
            head = [(_short(v) if isinstance(v, Message) else repr(v)[:60]) for v in items[:2]]
            parts.append(f"{fd.name}=[{', '.join(head)}{', ...' if len(items) > 2 else ''}] (n={len(items)})")
        else:
            parts.append(f"{fd.name}={value!r}"[:120])
    return f"{type(msg).__name__}(" + ", ".join(parts) + ")"


def key_strategy(a_key: str, a_readonly: str, b_key: str) -> Any:
    """Mostly tenant A's admin key; sometimes a read-only key, the other tenant's key, or none/garbage."""
    from hypothesis import strategies as st

    garbage = ["", "ck_", "ck_x.y", "ck_" + "a" * 300, a_key + "x", a_key.split(".")[0] + ".wrong", "Bearer x"]
    return st.one_of(*[st.just(a_key)] * 8, st.just(a_readonly), st.just(b_key), st.none(), st.sampled_from(garbage))
