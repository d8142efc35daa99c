"""The fault interceptor on a real gRPC channel and server: what each planned fault does to one call,
and that the plan's step names are the RPCs the coordinator's activities really make."""

from __future__ import annotations

import ast
import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from credits.invoice.v1 import invoice_pb2
from credits.ledger.v1 import ledger_pb2

from harness.faults import STEP_METHODS, FaultInterceptor, FaultPlan, method_for

ACTIVITIES = Path(__file__).resolve().parents[2] / "coordinator" / "activities.py"
SERVICES = {"LedgerActivities": "/credits.ledger.v1.LedgerService/",
            "InvoiceActivities": "/credits.invoice.v1.InvoiceService/"}


@dataclass
class Server:
    """A gRPC server answering the two methods under test with the request's bytes; counts what it served."""

    address: str
    served: list[str] = field(default_factory=list)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = grpc.aio.server()
    state = Server("")

    def handler(name: str) -> grpc.RpcMethodHandler:
        async def answer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            state.served.append(name)
            return request

        return grpc.unary_unary_rpc_method_handler(answer)

    srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "credits.ledger.v1.LedgerService", {"CommitHold": handler("CommitHold"),
                                            "ReserveCredits": handler("ReserveCredits")}),))
    state.address = f"127.0.0.1:{srv.add_insecure_port('127.0.0.1:0')}"
    await srv.start()
    try:
        yield state
    finally:
        await srv.stop(0)


async def _call(server: Server, plan: FaultPlan, method: str = "CommitHold") -> bytes:
    async with grpc.aio.insecure_channel(server.address, interceptors=[FaultInterceptor(plan)]) as channel:
        result: bytes = await channel.unary_unary(f"/credits.ledger.v1.LedgerService/{method}")(b"req", timeout=5)
        return result


async def test_a_rejection_before_the_call_never_reaches_the_service(server: Server) -> None:
    plan = FaultPlan().add("commit_hold", "before", "reject")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(server, plan)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "injected rejection before commit_hold" in (err.value.details() or "")
    assert server.served == []
    assert await _call(server, plan) == b"req"  # times=1: the next call goes through
    assert server.served == ["CommitHold"] and plan.faults[0].fired == 1


async def test_a_lost_response_after_the_call_leaves_the_work_done(server: Server) -> None:
    plan = FaultPlan().add("commit_hold", "after", "transport", times=2)
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _call(server, plan)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert server.served == ["CommitHold", "CommitHold"]  # the service did the work both times
    assert await _call(server, plan) == b"req"
    assert plan.faults[0].fired == 2


async def test_faults_are_keyed_by_the_rpc_method(server: Server) -> None:
    plan = FaultPlan().add("reserve_credits", "before", "reject")
    assert await _call(server, plan, "CommitHold") == b"req"
    with pytest.raises(grpc.aio.AioRpcError):
        await _call(server, plan, "ReserveCredits")
    assert server.served == ["CommitHold"]


@pytest.mark.parametrize("phase", ["before", "after"])
async def test_a_block_holds_the_call_until_released(server: Server, phase: str) -> None:
    plan = FaultPlan().add("commit_hold", phase, "block")
    call = asyncio.create_task(_call(server, plan))
    await asyncio.wait_for(plan.reached.wait(), 5)
    assert not call.done()
    assert server.served == ([] if phase == "before" else ["CommitHold"])
    plan.release_blocked()
    assert await asyncio.wait_for(call, 5) == b"req"
    assert server.served == ["CommitHold"]


async def test_a_block_signalled_through_files(server: Server, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDITS_FAULTS", "commit_hold:after:block,reserve_credits:before:reject:3")
    monkeypatch.setenv("CREDITS_FAULT_DIR", str(tmp_path))
    plan = FaultPlan.from_env()
    assert [(f.step, f.phase, f.kind, f.times) for f in plan.faults] == [
        ("commit_hold", "after", "block", 1), ("reserve_credits", "before", "reject", 3)]
    call = asyncio.create_task(_call(server, plan))
    while not (tmp_path / "reached").exists():  # noqa: ASYNC110 - the other side of a file signal
        await asyncio.sleep(0.02)
    assert "commit_hold after pid=" in (tmp_path / "reached").read_text()
    (tmp_path / "release").touch()
    assert await asyncio.wait_for(call, 5) == b"req"


def test_a_plan_refuses_what_it_could_never_apply() -> None:
    with pytest.raises(ValueError, match="unknown step 'comit_hold'"):
        FaultPlan().add("comit_hold", "before", "reject")
    with pytest.raises(ValueError, match="phase"):
        FaultPlan().add("commit_hold", "during", "reject")
    with pytest.raises(ValueError, match="kind"):
        FaultPlan().add("commit_hold", "before", "explode")
    assert method_for("/credits.ledger.v1.LedgerService/CommitHold") == STEP_METHODS["commit_hold"]


def test_every_step_is_an_rpc_of_the_services() -> None:
    methods = {f"/{s.full_name}/{m.name}" for d in (ledger_pb2.DESCRIPTOR, invoice_pb2.DESCRIPTOR)
               for s in d.services_by_name.values() for m in s.methods}
    assert set(STEP_METHODS.values()) <= methods, set(STEP_METHODS.values()) - methods


def test_the_steps_are_the_calls_the_activities_make() -> None:
    """Each `self._p._call("step", tenant, self._stub.Method, ...)` in coordinator/activities.py is in
    STEP_METHODS with that service and method, and every step there is made by some activity."""
    made: dict[str, str] = {}
    for cls in ast.parse(ACTIVITIES.read_text()).body:
        if not isinstance(cls, ast.ClassDef) or cls.name not in SERVICES:
            continue
        for node in ast.walk(cls):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "_call":
                step, rpc = node.args[0], node.args[2]
                assert isinstance(step, ast.Constant) and isinstance(rpc, ast.Attribute), ast.dump(node)
                made[str(step.value)] = SERVICES[cls.name] + rpc.attr
    assert made == STEP_METHODS
