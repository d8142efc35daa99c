"""Usage analytics against the real invoice server: a customer's usage per meter per day and per hour,
each meter's own aggregation per bucket, the tenant's top customers of a meter, and the refusals."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from credits.invoice.v1 import invoice_pb2 as pb

from tests.invoice.conftest import InvoiceEnv, event, seed_catalog, ts

DAY = datetime(2026, 8, 3, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


def _series(customer: str, start: datetime, end: datetime, **kw: object) -> pb.GetUsageSeriesRequest:
    req = pb.GetUsageSeriesRequest(customer_id=customer, to=ts(end), **kw)  # type: ignore[arg-type]
    getattr(req, "from").CopyFrom(ts(start))
    return req


async def test_usage_per_meter_per_day_and_hour_and_top_customers(env: InvoiceEnv) -> None:
    await seed_catalog(env, anchor=datetime(2026, 8, 1, tzinfo=UTC))
    await seed_catalog(env, customer_id="anna", anchor=datetime(2026, 8, 1, tzinfo=UTC), plan=pb.CreatePlanRequest(
        plan_id="chatppt-pro"))
    await env.call("CreateMeter", pb.CreateMeterRequest(idempotency_key="m-peak", meter_code="peak",
                                                        aggregation=pb.MAX))
    events = [event("a1", "input_tokens", "100", DAY + timedelta(hours=1)),
              event("a2", "input_tokens", "250", DAY + timedelta(hours=1, minutes=30)),
              event("a3", "input_tokens", "50", DAY + timedelta(days=1, hours=2)),
              event("p1", "peak", "7", DAY + timedelta(hours=3)), event("p2", "peak", "4", DAY + timedelta(hours=4)),
              event("b1", "input_tokens", "1000", DAY + timedelta(hours=5), customer_id="anna")]
    await env.call("IngestEvents", pb.IngestEventsRequest(idempotency_key="e", events=events))
    daily = await env.call("GetUsageSeries", _series("john-wick", DAY, DAY + timedelta(days=3)))
    got = [(p.meter_code, p.bucket_start.ToDatetime(tzinfo=UTC), p.value, p.events) for p in daily.points]
    assert got == [("input_tokens", DAY, "350", 2), ("input_tokens", DAY + timedelta(days=1), "50", 1),
                   ("peak", DAY, "7", 2)]  # MAX per day, not a sum
    hourly = await env.call("GetUsageSeries", _series("john-wick", DAY, DAY + timedelta(days=1), granularity=pb.HOUR,
                                                      meter_code="input_tokens"))
    assert [(p.bucket_start.ToDatetime(tzinfo=UTC).hour, p.value) for p in hourly.points] == [(1, "350")]
    top_req = pb.ListTopCustomersRequest(meter_code="input_tokens", to=ts(DAY + timedelta(days=3)))
    getattr(top_req, "from").CopyFrom(ts(DAY))
    top = await env.call("ListTopCustomers", top_req)
    assert [(c.customer_id, c.value, c.events) for c in top.customers] == [("anna", "1000", 1),
                                                                           ("john-wick", "400", 3)]


@pytest.mark.parametrize(("request_", "code", "field"), [
    (_series("nobody", DAY, DAY + timedelta(days=1)), grpc.StatusCode.NOT_FOUND, "customer_id"),
    (_series("john-wick", DAY, DAY + timedelta(days=1), meter_code="nope"), grpc.StatusCode.NOT_FOUND, "meter_code"),
    (_series("john-wick", DAY, DAY - timedelta(days=1)), grpc.StatusCode.INVALID_ARGUMENT, "to"),
    (_series("john-wick", DAY, DAY + timedelta(days=40), granularity=pb.HOUR), grpc.StatusCode.INVALID_ARGUMENT, "to"),
    (_series("john-wick", DAY, DAY + timedelta(days=1), granularity=7), grpc.StatusCode.INVALID_ARGUMENT,
     "granularity"),
])
async def test_usage_series_refusals(env: InvoiceEnv, request_: pb.GetUsageSeriesRequest, code: grpc.StatusCode,
                                     field: str) -> None:
    await seed_catalog(env, anchor=datetime(2026, 8, 1, tzinfo=UTC))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.call("GetUsageSeries", request_)
    assert info.value.code() == code and field in (info.value.details() or "")


async def test_the_cli_prints_series_and_top(env: InvoiceEnv) -> None:
    await seed_catalog(env, anchor=datetime(2026, 8, 1, tzinfo=UTC))
    await env.call("IngestEvents", pb.IngestEventsRequest(idempotency_key="e", events=[
        event("a1", "input_tokens", "100", DAY + timedelta(hours=1)),
        event("a2", "output_tokens", "5", DAY + timedelta(hours=2))]))
    cli_env = {**{k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")},
               "CREDITS_INVOICE_ADDR": f"127.0.0.1:{env.port}", "CREDITS_API_KEY": env.key}
    window = ("--since", "2026-08-01T00:00:00Z", "--until", "2026-08-10T00:00:00Z")
    outs = []
    for args in (("usage", "series", "john-wick", *window, "--csv"), ("usage", "top", "input_tokens", *window)):
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "creditctl", *args, cwd=ROOT, env=cli_env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        outs.append(out.decode())
    assert outs[0].splitlines() == ["meter_code,bucket_start,value,events",
                                    "input_tokens,2026-08-03T00:00:00+00:00,100,1",
                                    "output_tokens,2026-08-03T00:00:00+00:00,5,1"]
    assert "john-wick" in outs[1] and "100" in outs[1]
