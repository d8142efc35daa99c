"""The fuzz oracle: send one request, check the status is documented, check a rejection wrote nothing."""

from __future__ import annotations

import asyncio
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
# and nothing else"): that one append is allowed, or for a caller that proved no key the count of its
# window (refused_call_windows); every other table must be unchanged.
AUDIT_TABLES = frozenset({'"public"."audit_log"', '"public"."refused_call_windows"'})


def is_audit(table: str) -> bool:
    """An audit table, also under a "<db>:" prefix (a snapshot of several databases)."""
    return table.rpartition(":")[2] in AUDIT_TABLES

CALL_TIMEOUT_S = 20.0  # a call slower than this is reported as a hang (DEADLINE_EXCEEDED)
STREAM_QUIET_S = 0.5   # a server stream silent this long after its first message is live, not hung
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
        md: list[tuple[str, Any]] = [] if key is None else [("x-api-key", key)]
        md += extra_metadata or []
        if method.server_streaming:
            if any(isinstance(v, str) and not all(" " <= c <= "~" for c in v) for _, v in md):
                # what grpc does before a unary call leaves the process (validate_metadata.cc); a stream
                # would only report it as INTERNAL on its first read
                raise ValueError("grpc refuses a metadata value outside printable ASCII")
            return await self._stream(method, request, serializer, md)
        rpc = self.channel.unary_unary(path(method), request_serializer=serializer,
                                       response_deserializer=response_class(method).FromString)
        try:
            response = await rpc(request, metadata=md, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as err:
            return Outcome(err.code(), err.details() or "")
        return Outcome(OK, "", response)

    async def _stream(self, method: MethodDescriptor, request: Message | bytes, serializer: Callable[[Any], bytes],
                      md: list[tuple[str, Any]]) -> Outcome:
        """A server-streaming RPC: read to its end, or (a live stream such as WatchBalance) until it has
        been quiet for STREAM_QUIET_S after its first message; the outcome carries the first message."""
        call = self.channel.unary_stream(path(method), request_serializer=serializer,
                                         response_deserializer=response_class(method).FromString)(
            request, metadata=md, timeout=CALL_TIMEOUT_S)
        first: Message | None = None
        try:
            while True:
                try:
                    message = await asyncio.wait_for(call.read(), STREAM_QUIET_S if first is not None
                                                     else CALL_TIMEOUT_S)
                except TimeoutError:
                    call.cancel()
                    break
                if message is grpc.aio.EOF:
                    break
                first = first or message
        except grpc.aio.AioRpcError as err:
            return Outcome(err.code(), err.details() or "")
        return Outcome(OK, "", first)

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
                       if before.get(t) != after.get(t) and not is_audit(t)}
            for t in filter(is_audit, after):  # a refused attempt leaves one audit record (per database)
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


@dataclass
class WorkflowCheckedService(Service):
    """A service that starts Temporal workflows (the billing front door): a rejected call must also have
    started no workflow. Checked two ways: by the workflow id the request would have used (consistent
    read: describe), and over the whole namespace (visibility: every run listed must be one an accepted
    call reported; visibility lags, so a stray run may be caught by a later call or at the end)."""

    client: Any = None
    tenants: dict[str, str] = field(default_factory=dict)  # API key -> tenant
    accepted: set[tuple[str, str]] = field(default_factory=set)  # (operation id, run id) of accepted calls

    async def runs(self) -> set[tuple[str, str]]:
        return {(wf.id, wf.run_id) async for wf in self.client.list_workflows()}

    async def stray(self) -> set[tuple[str, str]]:
        return await self.runs() - self.accepted

    async def _stream(self, method: MethodDescriptor, request: Message | bytes, serializer: Callable[[Any], bytes],
                      md: list[tuple[str, Any]]) -> Outcome:
        """A server-streaming RPC: read to its end, or (a live stream such as WatchBalance) until it has
        been quiet for STREAM_QUIET_S after its first message; the outcome carries the first message."""
        call = self.channel.unary_stream(path(method), request_serializer=serializer,
                                         response_deserializer=response_class(method).FromString)(
            request, metadata=md, timeout=CALL_TIMEOUT_S)
        first: Message | None = None
        try:
            while True:
                try:
                    message = await asyncio.wait_for(call.read(), STREAM_QUIET_S if first is not None
                                                     else CALL_TIMEOUT_S)
                except TimeoutError:
                    call.cancel()
                    break
                if message is grpc.aio.EOF:
                    break
                first = first or message
        except grpc.aio.AioRpcError as err:
            return Outcome(err.code(), err.details() or "")
        return Outcome(OK, "", first)

    async def checked_call(self, method: MethodDescriptor, request: Message | bytes, key: str | None,
                           extra_metadata: list[tuple[str, Any]] | None = None, *,
                           secret_allowed: bool = False) -> Outcome:
        outcome = await super().checked_call(method, request, key, extra_metadata, secret_allowed=secret_allowed)
        if outcome.code == OK:
            op_id = getattr(outcome.response, "operation_id", "")
            if op_id:
                self.accepted.add((op_id, outcome.response.run_id))  # type: ignore[union-attr]
            return outcome
        tenant = self.tenants.get(key or "")
        for wf_id in predicted_workflow_ids(method, request, tenant):
            run = await self._run_of(wf_id)
            assert run is None or (wf_id, run) in self.accepted, (
                f"{path(method)} was rejected ({outcome.code.name}: {outcome.details[:300]}) but workflow "
                f"{wf_id!r} run {run} exists\nrequest: {describe(request)}")
        stray = await self.stray()
        assert not stray, (f"workflows no accepted call started: {sorted(stray)[:5]} (seen after "
                           f"{path(method)} {outcome.code.name}: {outcome.details[:200]}; request {describe(request)})")
        return outcome

    async def _run_of(self, workflow_id: str) -> str | None:
        from temporalio.service import RPCError

        try:
            return (await self.client.get_workflow_handle(workflow_id).describe()).run_id  # type: ignore[no-any-return]
        except RPCError:
            return None  # not found (or an id Temporal refuses: then nothing was started under it either)

    async def assert_no_stray_workflows(self, timeout_s: float = 20) -> None:
        """Once visibility shows every accepted run, nothing else may be listed."""
        import asyncio
        import time

        deadline = time.monotonic() + timeout_s
        while not self.accepted <= (seen := await self.runs()) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)  # visibility catches up on its own: nothing to await but a poll
        assert self.accepted <= seen, f"accepted runs never listed: {sorted(self.accepted - seen)[:5]}"
        assert not seen - self.accepted, f"workflows no accepted call started: {sorted(seen - self.accepted)[:5]}"


def predicted_workflow_ids(method: MethodDescriptor, request: Message | bytes, tenant: str | None) -> list[str]:
    """The workflow ids a front-door start request would use (none for reads, unknown callers, raw bytes)."""
    from datetime import UTC, datetime, timedelta

    from coordinator import naming
    from coordinator.activities import from_ts
    from service_runtime.rejections import Rejection

    if tenant is None or isinstance(request, bytes):
        return []
    name = method.name
    if name in ("FinalizeInvoice", "VoidInvoice"):
        make = naming.finalize_workflow_id if name == "FinalizeInvoice" else naming.void_workflow_id
        return [make(tenant, request.invoice_id)]  # type: ignore[attr-defined]
    if name == "CompensateOutage":
        return [naming.outage_workflow_id(tenant, request.incident_id)]  # type: ignore[attr-defined]
    if name == "RunBillingCycle":
        if request.HasField("as_of"):  # type: ignore[attr-defined]
            try:  # to the second, as the front door keys the run
                as_of = datetime.fromisoformat(from_ts(request.as_of)).replace(microsecond=0)  # type: ignore[attr-defined]
                return [naming.cycle_workflow_id(tenant, as_of.isoformat())]
            except (ValueError, OverflowError, Rejection):  # the front door refuses it: nothing starts
                return []
        now = datetime.now(UTC).replace(microsecond=0)
        return [naming.cycle_workflow_id(tenant, (now - timedelta(seconds=s)).isoformat()) for s in range(-5, 6)]
    return []


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
