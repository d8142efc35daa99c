"""creditctl bench ingest, creditctl invoices list/show: the invoice service from the command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from creditctl.ledger_commands import bench_subparsers
from service_runtime.tls import open_channel

# Targets on 2 cores (the bar); --check exits 3 when one is missed.
TARGETS = {"events_per_s": 20_000, "ratio_vs_baseline": 3, "draft_1m_events_s": 3.0}


def _cmd_bench_ingest(args: argparse.Namespace) -> int:
    from harness.benches import ingest as bench

    result = asyncio.run(bench.run(events=args.events, baseline_events=args.baseline_events,
                                   draft_events=args.draft_events, concurrency=args.concurrency))
    figures = bench.as_dict(result)
    print(json.dumps(figures) if args.json else bench.describe(result))
    missed = [k for k, target in TARGETS.items()
              if (figures[k] > target if k.endswith("_s") else figures[k] < target)]
    if args.check and missed:
        print(f"bench: missed targets: {', '.join(missed)}", file=sys.stderr)
        return 3
    return 0


def _call(fn: Callable[[Any, list[tuple[str, str]]], Awaitable[Any]]) -> Any:
    """Runs one call against settings.invoice_addr with settings.api_key (CREDITS_API_KEY)."""
    import grpc
    from credits.invoice.v1 import invoice_pb2_grpc as pb_grpc

    from service_runtime.settings import Settings

    settings = Settings.from_env()
    if not settings.api_key:
        raise SystemExit("set CREDITS_API_KEY to an API key of your tenant (creditctl tenants create)")

    async def run() -> Any:
        async with open_channel(settings.invoice_addr) as channel:
            return await fn(pb_grpc.InvoiceServiceStub(channel), [("x-api-key", settings.api_key)])

    try:
        return asyncio.run(run())
    except grpc.aio.AioRpcError as err:
        raise SystemExit(f"{err.code().name}: {err.details()}") from None


def _cmd_list(args: argparse.Namespace) -> int:
    from credits.invoice.v1 import invoice_pb2 as pb

    request = pb.ListInvoicesRequest(customer_id=args.customer, page_size=args.limit,
                                     statuses=[pb.InvoiceStatus.Value(s) for s in args.status])
    response = _call(lambda stub, md: stub.ListInvoices(request, metadata=md))
    if args.json:
        from google.protobuf.json_format import MessageToDict

        print(json.dumps([MessageToDict(i) for i in response.invoices], indent=2))
        return 0
    print(f"{'Invoice':<22}{'Number':<12}{'Customer':<20}{'Status':<14}{'Period start':<14}"
          f"{'Subtotal':>12}{'Due':>12} Cur")
    for i in response.invoices:
        start = i.period_start.ToDatetime().strftime("%Y-%m-%d")
        print(f"{i.invoice_id:<22}{i.number or '-':<12}{i.customer_id[:19]:<20}{pb.InvoiceStatus.Name(i.status):<14}"
              f"{start:<14}{i.subtotal:>12}{i.amount_due:>12} {i.currency}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from credits.invoice.v1 import invoice_pb2 as pb

    request = pb.RenderInvoiceRequest(invoice_id=args.invoice_id, format=pb.JSON if args.json else pb.TEXT)
    response = _call(lambda stub, md: stub.RenderInvoice(request, metadata=md))
    print(response.content, end="" if response.content.endswith("\n") else "\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = bench_subparsers(sub).add_parser(
        "ingest", help="usage events/s through IngestEvents vs one-per-transaction inserts; 1M-event draft time",
        description="Starts an embedded Postgres (fsync on) in a temporary directory and the invoice server "
                    "in-process, then measures batch ingestion, the one-event-per-transaction baseline, and "
                    "CreateDraft over 1,000,000 events.")
    p.add_argument("--events", type=int, default=200_000, help="events sent through IngestEvents (default 200000)")
    p.add_argument("--baseline-events", type=int, default=20_000, help="events for the baseline (default 20000)")
    p.add_argument("--draft-events", type=int, default=1_000_000, help="events in the drafted period")
    p.add_argument("--concurrency", type=int, default=4, help="batches in flight / baseline connections")
    p.add_argument("--check", action="store_true", help="exit 3 when a target is missed")
    p.add_argument("--json", action="store_true", help="print one JSON object with the figures")
    p.set_defaults(func=_cmd_bench_ingest)

    invoices = sub.add_parser("invoices", help="read invoices (CREDITS_INVOICE_ADDR, CREDITS_API_KEY)")
    isub = invoices.add_subparsers(dest="invoices_command", required=True)
    statuses = ("DRAFT", "PREPARED", "FINALIZED", "VOID_PENDING", "VOIDED")
    ls = isub.add_parser("list", help="invoices, oldest first")
    ls.add_argument("--customer", default="")
    ls.add_argument("--status", action="append", default=[], choices=statuses)
    ls.add_argument("--limit", type=int, default=100)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_cmd_list)
    show = isub.add_parser("show", help="one invoice with line items, credits applied and amount due")
    show.add_argument("invoice_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=_cmd_show)
