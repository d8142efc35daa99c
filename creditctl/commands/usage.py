"""creditctl usage ingest-event|ingest-events: usage events for the meters (IngestEvent, IngestEvents).

`ingest-events FILE` reads CSV (a header row: event_id, customer_id, meter_code, quantity, timestamp;
any other column is an event property) or JSON Lines (one UsageEvent object a line, `properties` a
map), sends batches with a progress bar on stderr, and sums up what was accepted, what was a
duplicate (an event id seen before is never counted twice) and what was rejected and why. The
service takes or refuses a batch whole; a refusal naming `events[i]` rejects that event alone and
the rest of its batch is sent again. Exit 1 if any event was rejected.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import grpc
from credits.invoice.v1 import invoice_pb2 as ipb
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from creditctl.arguments import iso
from creditctl.connection import rpc, rpcs
from creditctl.errors import rpc_line
from creditctl.help_listing import Group
from creditctl.output import Format, console, emit_record, emit_rows, format_options, print_json
from creditctl.records import pairs, record, set_instant
from creditctl.times import INSTANT, SINCE, parse_instant

FIELDS = ("event_id", "customer_id", "meter_code", "quantity", "timestamp")
_EVENT_INDEX = re.compile(r"^events\[(\d+)\]")
# A refusal of the batch because of its content (rejected events); anything else stops the run.
_CONTENT_REFUSALS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                     grpc.StatusCode.NOT_FOUND)


@dataclass
class Rejected:
    line: int
    event_id: str
    reason: str


@dataclass
class Summary:
    read: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejected] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"read": self.read, "accepted": self.accepted, "duplicates": self.duplicates,
                "rejected": [r.__dict__ for r in self.rejected]}


def event_from(row: dict[str, Any]) -> ipb.UsageEvent:
    """A UsageEvent from a CSV row or a JSON object; ValueError naming what is wrong."""
    missing = [f for f in ("event_id", "customer_id", "meter_code") if not str(row.get(f) or "")]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    props = dict(row.get("properties") or {})
    props.update({k: str(v) for k, v in row.items() if k not in (*FIELDS, "properties") and v not in (None, "")})
    event = ipb.UsageEvent(event_id=str(row["event_id"]), customer_id=str(row["customer_id"]),
                           meter_code=str(row["meter_code"]), quantity=str(row.get("quantity") or ""),
                           properties={str(k): str(v) for k, v in props.items()})
    if row.get("timestamp"):
        set_instant(event.timestamp, parse_instant(str(row["timestamp"])))
    return event


def read_events(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, row) per event of a CSV or JSON Lines file; a row that is not an object is its error."""
    with path.open(newline="") as f:
        if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as err:
                        yield n, f"not JSON: {err.msg}"
                        continue
                    yield n, obj if isinstance(obj, dict) else "not a JSON object"
        else:
            for n, row in enumerate(csv.DictReader(f), 2):
                yield n, {k.strip(): v for k, v in row.items() if k}


async def send_batch(call_one: Callable[[str, Any], Awaitable[Any]], batch: list[tuple[int, ipb.UsageEvent]],
                     summary: Summary) -> None:
    """Sends the batch; an event the service names is rejected alone and the rest is sent again."""
    while batch:
        try:
            response = await call_one("IngestEvents", ipb.IngestEventsRequest(events=[e for _, e in batch]))
        except grpc.aio.AioRpcError as err:
            if err.code() not in _CONTENT_REFUSALS:
                raise
            found = _EVENT_INDEX.match(err.details() or "")
            index = int(found.group(1)) if found and int(found.group(1)) < len(batch) else None
            culprits = [batch[index]] if index is not None else batch
            # The index is the event's place in the batch sent; the summary names the file's line instead.
            reason = re.sub(r"^(\w+: )events\[\d+\]\.", r"\1", rpc_line(err))
            summary.rejected.extend(Rejected(n, e.event_id, reason) for n, e in culprits)
            batch = [b for i, b in enumerate(batch) if i != index] if index is not None else []
            continue
        summary.accepted += response.accepted
        summary.duplicates += response.duplicates
        return


def ingest_file(path: Path, batch_size: int, show_progress: bool) -> Summary:
    rows = list(read_events(path))
    summary = Summary(read=len(rows))

    async def work(call_one: Callable[[str, Any], Awaitable[Any]]) -> Summary:
        columns = (TextColumn("ingesting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console(stderr=True), disable=not show_progress, transient=True) as bar:
            task = bar.add_task("events", total=len(rows))
            batch: list[tuple[int, ipb.UsageEvent]] = []
            for i, (n, row) in enumerate(rows, 1):
                try:
                    if isinstance(row, str):
                        raise ValueError(row)
                    batch.append((n, event_from(row)))
                except ValueError as err:
                    summary.rejected.append(Rejected(n, str(row.get("event_id", "")) if isinstance(row, dict)
                                                     else "", str(err)))
                if len(batch) >= batch_size or i == len(rows):
                    await send_batch(call_one, batch, summary)
                    bar.update(task, completed=i)
                    batch = []
        return summary

    return rpcs("invoice", work)


@click.group("usage", cls=Group, help="usage events: one, or a CSV / JSON Lines file; usage per meter per day, top "
             "customers (CREDITS_INVOICE_ADDR)")
def command() -> None:
    pass


@command.command("ingest-event", help="one usage event (a repeated event id is a DUPLICATE, never counted twice)")
@click.option("--event-id", required=True, help="unique per tenant")
@click.option("--customer", required=True)
@click.option("--meter", required=True)
@click.option("--quantity", default="1", show_default=True)
@click.option("--at", type=INSTANT, default="now", show_default=True, help="when the usage happened")
@click.option("--property", "properties", multiple=True, help="NAME=VALUE, repeatable")
@format_options()
def ingest_event(event_id: str, customer: str, meter: str, quantity: str, at: datetime, properties: tuple[str, ...],
                 fmt: Format) -> int:
    event = ipb.UsageEvent(event_id=event_id, customer_id=customer, meter_code=meter, quantity=quantity,
                           properties=dict(pairs(properties, "--property")))
    set_instant(event.timestamp, at)
    result = rpc("invoice", "IngestEvent", ipb.IngestEventRequest(event=event)).result
    emit_record(record(result), fmt)
    return 0


@command.command("ingest-events", help="every event of a CSV or JSON Lines file, with a progress bar and a summary")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=1000, show_default=True)
@format_options()
def ingest_events(file: Path, batch_size: int, fmt: Format) -> int:
    summary = ingest_file(file, batch_size, show_progress=fmt == Format.TABLE and sys.stderr.isatty())
    if fmt == Format.JSON:
        print_json(summary.as_dict())
    else:
        click.echo(f"{summary.read} events read: {summary.accepted} accepted, {summary.duplicates} duplicates, "
                   f"{len(summary.rejected)} rejected")
        if summary.rejected:
            emit_rows([r.__dict__ for r in summary.rejected], ("line", "event_id", "reason"), Format.TABLE,
                      title="rejected")
    return 1 if summary.rejected else 0


def _window(request: Any, since: datetime, until: datetime | None) -> Any:
    set_instant(getattr(request, "from"), since)  # `from` is a Python keyword
    if until is not None:
        set_instant(request.to, until)
    return request


@command.command("series", help="a customer's usage per meter per day (or --hourly), each meter's own aggregation")
@click.argument("customer")
@click.option("--since", type=SINCE, default="30d", show_default=True, help="from: ISO 8601, 30d (ago), -7d")
@click.option("--until", type=INSTANT, default=None, help="to (default now)")
@click.option("--meter", default="", help="one meter (default: every meter)")
@click.option("--hourly", is_flag=True, help="hours instead of days (at most 31 days)")
@format_options(csv_=True)
def series(customer: str, since: datetime, until: datetime | None, meter: str, hourly: bool, fmt: Format) -> int:
    request = _window(ipb.GetUsageSeriesRequest(customer_id=customer, meter_code=meter,
                                                granularity=ipb.HOUR if hourly else ipb.DAY), since, until)
    found = rpc("invoice", "GetUsageSeries", request)
    rows = [{"meter_code": p.meter_code, "bucket_start": iso(p.bucket_start, "bucket_start"), "value": p.value,
             "events": p.events} for p in found.points]
    emit_rows(rows, ("meter_code", "bucket_start", "value", "events"), fmt)
    return 0


@command.command("top", help="the tenant's biggest users of one meter over a period")
@click.argument("meter")
@click.option("--since", type=SINCE, default="30d", show_default=True, help="from: ISO 8601, 30d (ago), -7d")
@click.option("--until", type=INSTANT, default=None, help="to (default now)")
@click.option("--limit", type=click.IntRange(1, 100), default=10, show_default=True)
@format_options(csv_=True)
def top(meter: str, since: datetime, until: datetime | None, limit: int, fmt: Format) -> int:
    found = rpc("invoice", "ListTopCustomers", _window(ipb.ListTopCustomersRequest(meter_code=meter, limit=limit),
                                                       since, until))
    emit_rows([{"customer_id": c.customer_id, "value": c.value, "events": c.events} for c in found.customers],
              ("customer_id", "value", "events"), fmt)
    return 0
