"""creditctl bench ledger: the hot-account debit benchmark (see harness/benches/ledger.py)."""

from __future__ import annotations

import argparse
import json
import sys


def bench_subparsers(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    """The `bench` command's sub-subparsers, shared by every module that adds a benchmark.

    The first module to get here creates `bench` and stores its subparsers on the parser as
    `_credits_sub`; later ones reuse it (or find the subparsers action if it was not stored).
    """
    bench = sub.choices.get("bench")
    if bench is None:
        bench = sub.add_parser("bench", help="benchmarks that start what they need on the embedded defaults")
    found = getattr(bench, "_credits_sub", None)
    if found is None:
        found = next((a for a in bench._actions if isinstance(a, argparse._SubParsersAction)), None)
    if found is None:
        found = bench.add_subparsers(dest="bench_command", required=True)
    bench._credits_sub = found  # type: ignore[attr-defined]
    return found  # type: ignore[no-any-return]


def _positive(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return number


def _cmd_bench_ledger(args: argparse.Namespace) -> int:
    from harness.benches.ledger import BenchOptions, format_report, meets, run_bench

    seconds = 1.0 if args.quick else args.seconds
    opts = BenchOptions(
        seconds=seconds, concurrency=args.concurrency, batch_size=args.batch_size,
        batch_concurrency=args.batch_concurrency, use_uvloop=not args.no_uvloop, verify_journal=args.verify,
        profile=args.profile,
        progress=None if args.json else (lambda msg: print(f"… {msg}", file=sys.stderr, flush=True)),
    )
    report = run_bench(opts)
    figures = report.figures()
    if args.json:
        print(json.dumps(figures))
    else:
        print(format_report(report))
    for phase in (report.echo, report.debit, report.batch, report.baseline):
        if phase.errors:
            print(f"bench: {phase.name} had {phase.errors} failed calls, first: {phase.first_error}",
                  file=sys.stderr)
    if report.errors or not report.consistent:
        if not report.consistent:
            print(f"bench: INCONSISTENT: ledger consumed {report.ledger_consumed} vs acknowledged "
                  f"{report.ledger_acknowledged}; baseline {report.baseline_consumed} vs "
                  f"{report.baseline_acknowledged}; journal ok {report.journal_ok}", file=sys.stderr)
        return 1
    if args.check and not all(meets(k, v) is not False for k, v in figures.items()):
        return 3
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = bench_subparsers(sub).add_parser(
        "ledger", help="durable debits/s on one hot account vs a naive SQL baseline and a gRPC echo",
        description="Starts an embedded Postgres (fsync on) in a temporary directory, the ledger server and a "
                    "gRPC echo server in their own processes, and drives each phase for --seconds.")
    p.add_argument("--seconds", type=_positive, default=10.0, help="measured seconds per phase (default 10)")
    p.add_argument("--quick", action="store_true", help="1 second per phase (a smoke run)")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight (default 64)")
    p.add_argument("--batch-size", type=int, default=1000, help="debits per BatchDebitCredits call (default 1000)")
    p.add_argument("--batch-concurrency", type=int, default=4, help="batch calls in flight (default 4)")
    p.add_argument("--no-uvloop", action="store_true", help="plain asyncio loops instead of uvloop")
    p.add_argument("--verify", action="store_true", help="run VerifyJournal after the debit phases")
    p.add_argument("--profile", default="", help="write a cProfile of the ledger server process to this file")
    p.add_argument("--check", action="store_true", help="exit 3 when a target is missed")
    p.add_argument("--json", action="store_true", help="print one JSON object with the figures")
    p.set_defaults(func=_cmd_bench_ledger)
