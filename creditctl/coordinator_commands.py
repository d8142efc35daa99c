"""creditctl up | demo | billing | operations | invoices finalize/void | bench saga.

Tables for people, `--json` for scripts. Commands that talk to a running stack read the addresses
and the API key from settings (CREDITS_BILLING_ADDR, CREDITS_API_KEY, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc
from credits.billing.v1 import billing_pb2 as bpb
from credits.billing.v1 import billing_pb2_grpc

from service_runtime.settings import Settings
from service_runtime.tls import open_channel

DEMO_GRACE_S = 400 * 24 * 3600  # the seed scenario bills August 2026 usage


def _billing(settings: Settings) -> tuple[grpc.aio.Channel, billing_pb2_grpc.BillingServiceStub, list[Any]]:
    channel = open_channel(settings.billing_addr)
    return channel, billing_pb2_grpc.BillingServiceStub(channel), [("x-api-key", settings.api_key)]


def _op_dict(op: bpb.Operation) -> dict[str, Any]:
    return {"operation_id": op.operation_id, "kind": op.kind, "status": bpb.OperationStatus.Name(op.status),
            "outcome": op.outcome, "progress": {"total": op.progress.total, "done": op.progress.done,
                                                "failed": op.progress.failed, "stage": op.progress.stage},
            "result": json.loads(op.result_json) if op.result_json else None, "error": op.error,
            "ui_url": op.ui_url}


def _print_op(op: bpb.Operation, as_json: bool) -> int:
    d = _op_dict(op)
    if as_json:
        print(json.dumps(d, indent=2))
    else:
        for k in ("operation_id", "status", "outcome", "ui_url", "error"):
            if d[k]:
                print(f"{k:<13} {d[k]}")
        p = d["progress"]
        if p["total"]:
            print(f"{'progress':<13} {p['done']}/{p['total']} done, {p['failed']} failed ({p['stage']})")
        if d["result"]:
            for k, v in d["result"].items():
                print(f"  {k:<16} {v}")
    return 0 if op.status in (bpb.RUNNING, bpb.COMPLETED) else 1


# --- up / demo ------------------------------------------------------------------------------


def _cmd_up(args: argparse.Namespace) -> int:
    import logging

    from stack.launcher import serve_forever

    logging.basicConfig(level=logging.WARNING)
    settings = Settings.from_env()
    if args.data_dir:
        settings = Settings(data_dir=Path(args.data_dir).resolve())
    asyncio.run(serve_forever(settings))
    return 0


async def _demo(verbose: bool) -> int:
    from credits.invoice.v1 import invoice_pb2 as ipb
    from credits.invoice.v1 import invoice_pb2_grpc
    from credits.ledger.v1 import ledger_pb2_grpc

    from service_runtime.api_keys import mint_key, store_tenant_key
    from service_runtime.embedded_postgres import free_port
    from service_runtime.postgres import create_pool
    from stack.launcher import running_stack
    from stack.scenario import Services, seed_catalog, seed_customer

    with tempfile.TemporaryDirectory(prefix="credits-demo-") as tmp:
        settings = Settings(data_dir=Path(tmp), ledger_dsn="", invoice_dsn="", embedded_pg_port=free_port(),
                            ledger_addr="127.0.0.1:0", invoice_addr="127.0.0.1:0", billing_addr="127.0.0.1:0",
                            temporal_addr="", temporal_ui_port=free_port(), task_queue="credits-demo")
        print("starting the stack in", tmp, "...", flush=True)
        async with running_stack(settings, usage_grace_s=DEMO_GRACE_S, schedules=False) as stack:
            for name, value in stack.addresses.items():
                print(f"  {name:<26} {value}")
            key_id, key, key_hash = mint_key()
            for dsn in (stack.ledger_dsn, stack.invoice_dsn):
                pool = await create_pool(dsn, min_size=1, max_size=1)
                try:
                    await store_tenant_key(pool, "chatppt", "ChatPPT", key_id, key_hash, "admin")
                finally:
                    await pool.close()
            lch = open_channel(stack.ledger_addr)
            ich = open_channel(stack.invoice_addr)
            bch = open_channel(stack.billing_addr)
            try:
                s = Services(ledger_pb2_grpc.LedgerServiceStub(lch), invoice_pb2_grpc.InvoiceServiceStub(ich), key)
                await seed_catalog(s)
                invoice_id = await seed_customer(s)
                print(f"seeded: John Wick on ChatPPT, Aug 2026 usage worth $100, $50 referral credit; "
                      f"draft {invoice_id}")
                op = await billing_pb2_grpc.BillingServiceStub(bch).FinalizeInvoice(
                    bpb.FinalizeInvoiceRequest(invoice_id=invoice_id, wait=True, wait_timeout_s=60), metadata=s.md)
                if op.status != bpb.COMPLETED:
                    print("finalization did not complete:", bpb.OperationStatus.Name(op.status), op.error)
                    return 1
                text = await s.invoice.RenderInvoice(ipb.RenderInvoiceRequest(invoice_id=invoice_id,
                                                                              format=ipb.TEXT), metadata=s.md)
                inv = await s.invoice.GetInvoice(ipb.GetInvoiceRequest(invoice_id=invoice_id), metadata=s.md)
            finally:
                for ch in (lch, ich, bch):
                    await ch.close()
            print()
            print(text.content)
            print(f"total {inv.subtotal}, credits {inv.credits_applied}, due {inv.amount_due}")
            print(f"saga workflow: {op.operation_id}")
            print(f"Temporal UI:   {op.ui_url}")
            ok = (inv.subtotal, inv.credits_applied, inv.amount_due) == ("100.00", "50.00", "50.00")
        print("stack stopped.")
        return 0 if ok else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    return asyncio.run(_demo(args.verbose))


# --- operations against a running stack ----------------------------------------------------


async def _call_op(method: str, request: Any, as_json: bool) -> int:
    channel, stub, md = _billing(Settings.from_env())
    try:
        op = await getattr(stub, method)(request, metadata=md)
    except grpc.aio.AioRpcError as err:
        print(f"{err.code().name}: {err.details()}", file=sys.stderr)
        return 2
    finally:
        await channel.close()
    return _print_op(op, as_json)


def _cmd_finalize(args: argparse.Namespace) -> int:
    return asyncio.run(_call_op("FinalizeInvoice", bpb.FinalizeInvoiceRequest(
        invoice_id=args.invoice_id, wait=not args.no_wait), args.json))


def _cmd_void(args: argparse.Namespace) -> int:
    return asyncio.run(_call_op("VoidInvoice", bpb.VoidInvoiceRequest(
        invoice_id=args.invoice_id, reason=args.reason, wait=not args.no_wait), args.json))


def _cmd_operation(args: argparse.Namespace) -> int:
    return asyncio.run(_call_op("GetOperation", bpb.GetOperationRequest(operation_id=args.operation_id,
                                                                       wait=args.wait), args.json))


def _cmd_compensate(args: argparse.Namespace) -> int:
    from coordinator.activities import to_ts

    req = bpb.CompensateOutageRequest(incident_id=args.incident, account_ids=args.accounts, amount=args.amount,
                                      unit=args.unit, reason=args.reason, wait=not args.no_wait)
    if args.expires_at:
        req.expires_at.CopyFrom(to_ts(args.expires_at))
    return asyncio.run(_call_op("CompensateOutage", req, args.json))


async def _billing_run(args: argparse.Namespace) -> int:
    from coordinator.activities import to_ts

    channel, stub, md = _billing(Settings.from_env())
    try:
        req = bpb.RunBillingCycleRequest(concurrency=args.concurrency)
        if args.as_of:
            req.as_of.CopyFrom(to_ts(args.as_of))
        op = await stub.RunBillingCycle(req, metadata=md)
        while op.status == bpb.RUNNING:
            if not args.json:
                p = op.progress
                width, total = 30, max(p.total, 1)
                filled = int(width * (p.done + p.failed) / total)
                print(f"\r[{'#' * filled}{'.' * (width - filled)}] {p.done + p.failed}/{p.total} "
                      f"({p.failed} failed) {p.stage[:40]:<40}", end="", flush=True)
            op = await stub.GetOperation(bpb.GetOperationRequest(operation_id=op.operation_id, wait=True,
                                                                 wait_timeout_s=1), metadata=md)
        if not args.json:
            print()
        return _print_op(op, args.json)
    except grpc.aio.AioRpcError as err:
        print(f"{err.code().name}: {err.details()}", file=sys.stderr)
        return 2
    finally:
        await channel.close()


def _cmd_billing_run(args: argparse.Namespace) -> int:
    return asyncio.run(_billing_run(args))


def _cmd_bench(args: argparse.Namespace) -> int:
    from harness.benches.saga import run_bench

    def say(msg: str) -> None:
        print(f"… {msg}", file=sys.stderr, flush=True)

    result = asyncio.run(run_bench(args.invoices, args.concurrency, temporal_db_file=args.temporal_db_file,
                                   rounds=args.rounds, progress=None if args.json else say))
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:<22} {v}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    up = sub.add_parser("up", help="run the whole stack in the foreground (Ctrl-C stops it)")
    up.add_argument("--data-dir", default="")
    up.set_defaults(func=_cmd_up)

    demo = sub.add_parser("demo", help="start a throw-away stack, finalize the seed invoice, print it")
    demo.add_argument("--verbose", action="store_true")
    demo.set_defaults(func=_cmd_demo)

    inv = sub.add_parser("sagas", help="finalize or void an invoice through the coordinator's sagas")
    isub = inv.add_subparsers(dest="sagas_command", required=True)
    f = isub.add_parser("finalize", help="finalize an invoice (credits leave the ledger iff it is finalized)")
    f.add_argument("invoice_id")
    f.add_argument("--no-wait", action="store_true")
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=_cmd_finalize)
    v = isub.add_parser("void", help="void a finalized invoice (its credits go back to their lots)")
    v.add_argument("invoice_id")
    v.add_argument("--reason", default="")
    v.add_argument("--no-wait", action="store_true")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=_cmd_void)
    c = isub.add_parser("compensate", help="grant compensatory credits for an incident to many accounts")
    c.add_argument("--incident", required=True)
    c.add_argument("--amount", required=True)
    c.add_argument("--unit", default="USD")
    c.add_argument("--expires-at", default="")
    c.add_argument("--reason", default="")
    c.add_argument("--no-wait", action="store_true")
    c.add_argument("--json", action="store_true")
    c.add_argument("accounts", nargs="+")
    c.set_defaults(func=_cmd_compensate)

    billing = sub.add_parser("billing", help="billing cycles")
    bsub = billing.add_subparsers(dest="billing_command", required=True)
    run = bsub.add_parser("run", help="draft and finalize every due invoice, with a progress bar")
    run.add_argument("--as-of", default="", help="ISO instant; default now")
    run.add_argument("--concurrency", type=int, default=8)
    run.add_argument("--json", action="store_true")
    run.set_defaults(func=_cmd_billing_run)

    ops = sub.add_parser("operation", help="status and result of a saga (its operation id)")
    ops.add_argument("operation_id")
    ops.add_argument("--wait", action="store_true")
    ops.add_argument("--json", action="store_true")
    ops.set_defaults(func=_cmd_operation)

    from creditctl import people_commands

    people_commands.register(sub)  # grants/balances/statements (a no-op if creditctl.main registered it)

    from creditctl.ledger_commands import bench_subparsers

    bsub2 = bench_subparsers(sub)
    saga = bsub2.add_parser("saga", help="finalized invoices/s through the real saga vs a bare workflow",
                            description="Postgres, Temporal dev server, ledger, invoice and the worker each in "
                                        "their own process; this process keeps --concurrency sagas in flight.")
    saga.add_argument("--invoices", type=int, default=300)
    saga.add_argument("--concurrency", type=int, default=40, help="workflows in flight (default 40)")
    saga.add_argument("--rounds", type=int, default=3,
                      help="interleaved saga/bare rounds, order alternating (default 3)")
    saga.add_argument("--temporal-db-file", action="store_true",
                      help="Temporal dev server on a database file (as `creditctl up`) instead of in memory")
    saga.add_argument("--json", action="store_true")
    saga.set_defaults(func=_cmd_bench)
