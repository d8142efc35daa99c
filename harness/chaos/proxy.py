"""An asyncio TCP fault proxy between the coordinator worker and one service.

Faults work at the connection level (gRPC multiplexes calls on one HTTP/2 connection, so
per-message surgery would need an HTTP/2 parser; a connection-level fault is what a real network
or load balancer does anyway):

- `delay(s, for_s)`: every chunk in both directions waits `s` before it is forwarded;
- `drop(for_s)`: bytes in both directions are swallowed (a black hole); when the window ends the
  connections that lost bytes are reset, so clients reconnect on a clean stream;
  with `arm_s`, a delay or drop window starts at the first chunk seen within `arm_s` (the next `for_s`
  seconds of traffic), not on an idle link;
- `reset()`: every open connection is reset now (RST, SO_LINGER 0);
- `lose_response(n)`: the next `n` responses are lost after the server processed the request: the
  proxy forwards the request upstream, waits for the server's response bytes, swallows them and
  resets the client connection. The server committed the work; the client never hears.

Each fault call returns what it did as it happens (an `Effect`: chunks actually delayed or swallowed,
connections actually cut, responses actually lost), so a campaign counts faults by their effect, not by
the call: a delay with no traffic in its window, a reset with no connection open, a lost response still
queued when the faults stop did nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from dataclasses import dataclass, field

RESPONSE_MIN_BYTES = 40  # smaller downstream chunks are HTTP/2 control frames (SETTINGS ack, PING, WINDOW_UPDATE)


@dataclass
class ProxyStats:
    connections: int = 0
    resets: int = 0
    lost_responses: int = 0
    dropped_chunks: int = 0
    delayed_chunks: int = 0


@dataclass
class Effect:
    """What one fault call actually did, counted by the proxy while it acts."""

    chunks: int = 0           # chunks delayed (delay) or swallowed (drop, lose_response) in this fault's window
    connections_cut: int = 0  # connections this fault reset
    responses_lost: int = 0   # lose_response: responses swallowed after the server processed the request
    wanted: int = 0           # lose_response: how many it was asked to lose


@dataclass(eq=False)
class _Conn:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    request_sent: float = 0.0  # monotonic time the client last sent bytes
    dirty: bool = False  # lost bytes in a drop window
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _abort(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    def __init__(self, name: str, upstream_host: str, upstream_port: int, listen_port: int = 0) -> None:
        self.name = name
        self.upstream = (upstream_host, upstream_port)
        self.listen_port = listen_port
        self.stats = ProxyStats()
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._delay_s = 0.0
        self._delay_until = 0.0
        self._drop_until = 0.0
        self._delay_len = self._drop_len = 0.0
        self._delay_armed_until = self._drop_armed_until = 0.0  # a window waiting for its first chunk
        self._delay_effect = Effect()
        self._drop_effect = Effect()
        self._lose: list[Effect] = []  # pending lose_response faults, oldest first

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.listen_port}"

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.listen_port)
        self.listen_port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.reset()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    # --- faults ----------------------------------------------------------------------------

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    def delay(self, seconds: float, for_s: float, arm_s: float = 0.0) -> Effect:
        self._delay_s, self._delay_len = seconds, for_s
        self._delay_effect = Effect()
        if arm_s > 0:
            self._delay_until, self._delay_armed_until = 0.0, time.monotonic() + arm_s
        else:
            self._start_delay(time.monotonic())
        return self._delay_effect

    def drop(self, for_s: float, arm_s: float = 0.0) -> Effect:
        self._drop_len = for_s
        effect = self._drop_effect = Effect()
        if arm_s > 0:
            self._drop_until, self._drop_armed_until = 0.0, time.monotonic() + arm_s
        else:
            self._start_drop(time.monotonic())
        return effect

    def _start_delay(self, now: float) -> None:
        self._delay_armed_until, self._delay_until = 0.0, now + self._delay_len

    def _start_drop(self, now: float) -> None:
        self._drop_armed_until, self._drop_until = 0.0, now + self._drop_len
        asyncio.get_running_loop().call_later(self._drop_len, self._end_drop, self._drop_effect)

    def reset(self) -> int:
        """Resets every open connection now; returns how many were cut."""
        n = 0
        for conn in list(self._conns):
            self._kill(conn)
            n += 1
        self.stats.resets += n
        return n

    def lose_response(self, n: int = 1) -> Effect:
        effect = Effect(wanted=n)
        self._lose.append(effect)
        return effect

    def clear(self) -> None:
        self._delay_until = self._drop_until = 0.0
        self._delay_armed_until = self._drop_armed_until = 0.0
        self._lose.clear()

    def _end_drop(self, effect: Effect) -> None:
        for conn in list(self._conns):
            if conn.dirty:
                self._kill(conn)
                self.stats.resets += 1
                effect.connections_cut += 1

    # --- plumbing --------------------------------------------------------------------------

    def _kill(self, conn: _Conn) -> None:
        _abort(conn.client)
        _abort(conn.upstream)
        self._conns.discard(conn)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _abort(writer)  # the service is down: the client sees a refused/reset connection
            return
        self.stats.connections += 1
        conn = _Conn(writer, up_writer)
        self._conns.add(conn)
        conn.tasks = [asyncio.create_task(self._pump(conn, reader, up_writer, upstream=True)),
                      asyncio.create_task(self._pump(conn, up_reader, writer, upstream=False))]
        await asyncio.gather(*conn.tasks, return_exceptions=True)
        self._kill(conn)

    async def _pump(self, conn: _Conn, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *,
                    upstream: bool) -> None:
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                now = time.monotonic()
                if now < self._drop_armed_until:
                    self._start_drop(now)
                if now < self._delay_armed_until:
                    self._start_delay(now)
                if now < self._drop_until:
                    conn.dirty = True
                    self.stats.dropped_chunks += 1
                    self._drop_effect.chunks += 1
                    continue
                if now < self._delay_until:
                    self.stats.delayed_chunks += 1
                    self._delay_effect.chunks += 1
                    await asyncio.sleep(self._delay_s)
                if upstream:
                    conn.request_sent = now
                elif self._lose and len(data) >= RESPONSE_MIN_BYTES and conn.request_sent:
                    # The server answered a request it processed: lose the answer, reset the client.
                    effect = self._lose[0]
                    effect.responses_lost += 1
                    effect.chunks += 1
                    effect.connections_cut += 1
                    if effect.responses_lost >= effect.wanted:
                        self._lose.pop(0)
                    self.stats.lost_responses += 1
                    self._kill(conn)
                    return
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                if dst.can_write_eof():
                    dst.write_eof()
