"""Chaos faults are counted by their effect: a kill only of a live process, a proxy fault only by the bytes it
delayed or swallowed, the connections it cut, the responses it lost (harness.processes, harness.chaos.proxy,
harness.chaos.fault_book)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from harness.chaos.fault_book import FaultBook
from harness.chaos.proxy import FaultProxy
from harness.processes import ServiceProcess

REQUEST, RESPONSE = b"q" * 50, b"r" * 60  # the proxy treats downstream chunks >= 40 bytes as a response


def test_a_kill_counts_only_when_a_running_process_died(tmp_path: Path) -> None:
    proc = ServiceProcess("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], {}, tmp_path / "s.log")
    assert proc.kill9() is False  # never started: nothing to kill
    proc._spawn()
    assert proc.running
    assert proc.kill9() is True
    assert not proc.running and proc.kills == 1
    assert proc.kill9() is False  # already down: not a second kill
    assert proc.kills == 1


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.read(4096):
                writer.write(RESPONSE)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    fault_proxy = await FaultProxy("test", "127.0.0.1", server.sockets[0].getsockname()[1]).start()
    try:
        yield fault_proxy
    finally:
        await fault_proxy.stop()
        server.close()


async def _connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.listen_port)
    for _ in range(100):
        if proxy.open_connections:
            break
        await asyncio.sleep(0.01)
    return reader, writer


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(REQUEST)
    await writer.drain()
    return await asyncio.wait_for(reader.read(4096), 5)


async def test_reset_counts_the_connections_it_cut(proxy: FaultProxy) -> None:
    assert proxy.reset() == 0  # nothing open: nothing cut
    reader, writer = await _connect(proxy)
    assert await _exchange(reader, writer) == RESPONSE
    assert proxy.reset() == 1
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        data = await _exchange(reader, writer)
        if not data:
            raise ConnectionResetError("closed")
    writer.close()


async def test_delay_and_drop_count_the_chunks_they_touched(proxy: FaultProxy) -> None:
    idle = proxy.delay(0.05, 0.3)
    await asyncio.sleep(0.35)
    assert idle.chunks == 0  # no traffic in the window: the delay did nothing
    reader, writer = await _connect(proxy)
    busy = proxy.delay(0.05, 1.0)
    assert await _exchange(reader, writer) == RESPONSE
    assert busy.chunks >= 2  # the request and the response, each held back
    proxy.clear()
    dropped = proxy.drop(0.3)
    writer.write(REQUEST)
    await writer.drain()
    await asyncio.sleep(0.5)
    assert dropped.chunks >= 1 and dropped.connections_cut == 1
    writer.close()
    # Armed: the window opens at the first chunk within arm_s, not on the idle link before it.
    reader, writer = await _connect(proxy)
    armed = proxy.drop(0.3, arm_s=2.0)
    await asyncio.sleep(0.5)  # longer than the window, no traffic yet
    writer.write(REQUEST)
    await writer.drain()
    await asyncio.sleep(0.5)
    assert armed.chunks >= 1 and armed.connections_cut == 1
    writer.close()


async def test_lose_response_counts_responses_actually_lost(proxy: FaultProxy) -> None:
    effect = proxy.lose_response(2)
    reader, writer = await _connect(proxy)
    writer.write(REQUEST)
    await writer.drain()
    with pytest.raises(ConnectionResetError):  # the answer never arrives: the connection is reset
        if not await asyncio.wait_for(reader.read(4096), 5):
            raise ConnectionResetError("closed without an answer")
    writer.close()
    assert (effect.responses_lost, effect.wanted) == (1, 2)  # one of two: not (yet) applied
    proxy.clear()
    reader, writer = await _connect(proxy)
    assert await _exchange(reader, writer) == RESPONSE  # cleared: the second is not lost any more
    assert effect.responses_lost == 1
    writer.close()


def test_the_book_counts_applied_per_kind_and_lists_the_rest() -> None:
    book = FaultBook([[(0.1, "kill_ledger", ""), (0.2, "proxy_reset", "invoice")], [(0.3, "kill_ledger", "")]])
    first, reset = book.batches[0]
    book.applied(first, "pid 1 killed")
    book.error(reset, "OSError()")
    book.close_pending("never injected")
    assert book.planned() == {"kill_ledger": 2, "proxy_reset": 1}
    assert book.applied_by_kind() == {"kill_ledger": 1, "proxy_reset": 0}
    assert [(r.kind, r.status) for r in book.not_applied()] == [("proxy_reset", "error"), ("kill_ledger", "missed")]


async def test_the_campaign_files_proxy_faults_by_what_the_proxy_did(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """With no traffic through the proxy, a reset, a delay and a lost response did nothing: all missed."""
    from harness.chaos import campaign as chaos
    from service_runtime.temporal_server import reserve_port

    monkeypatch.setattr(chaos, "TRAFFIC_WAIT_S", 0.2)
    run = chaos.Campaign(chaos.CampaignConfig(sagas=5, seed=1), tmp_path, lambda _m: None)
    idle = await FaultProxy("ledger", "127.0.0.1", reserve_port()).start()
    run.stack.proxies["ledger"] = idle
    faults = [chaos.PlannedFault(0.0, "proxy_reset", "ledger"), chaos.PlannedFault(0.0, "proxy_delay", "ledger", 0.1),
              chaos.PlannedFault(0.0, "lose_response", "ledger", 1)]
    run.book = FaultBook([[(f.at_s, f.kind, f.target) for f in faults]])
    try:
        for fault, record in zip(faults, run.book.batches[0], strict=True):
            await run._inject(fault, record)
        run._judge_proxy_faults()
    finally:
        await idle.stop()
    assert run.book.applied_by_kind() == {"lose_response": 0, "proxy_delay": 0, "proxy_reset": 0}
    assert [r.detail for r in run.book.not_applied()] == ["0 connections cut", "0 chunks delayed 0.1s",
                                                          "0 of 1 responses lost"]


def test_creditctl_chaos_fails_when_a_planned_fault_was_not_applied() -> None:
    from creditctl.commands.chaos import FAULTS_NOT_APPLIED, exit_code
    from harness.chaos.campaign import CampaignResult
    from reconciler.report import Violation

    book = FaultBook([[(0.1, "kill_ledger", ""), (0.2, "proxy_reset", "invoice")]])
    book.applied(book.batches[0][0], "pid 1 killed")
    book.missed(book.batches[0][1], "0 connections cut")

    def result(violations: list[Violation]) -> CampaignResult:
        return CampaignResult(1, 5, book.planned(), book.applied_by_kind(), book.not_applied(), {}, violations, 1.0)

    assert exit_code(result([]), tolerate_missed_faults=False) == FAULTS_NOT_APPLIED
    assert exit_code(result([]), tolerate_missed_faults=True) == 0
    assert exit_code(result([Violation("bank", "t", "x")]), tolerate_missed_faults=True) == 1
    book.applied(book.batches[0][1], "1 connections cut")
    assert result([]).all_faults_applied and exit_code(result([]), tolerate_missed_faults=False) == 0
    assert result([]).as_dict()["faults_total"] == 2
