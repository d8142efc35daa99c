"""creditctl bench ledger|ingest|saga|billing|gate|alerts|finance|watch|statement|pricing: benchmarks on the
embedded defaults.

The benches are proving code, imported only inside the command that runs one (one import line
per command names where it lives).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import click

from creditctl.help_listing import Group
from creditctl.output import note, print_json

CHECK_MISSED = 3  # --check: a target was missed

# `bench ingest` targets on 2 cores (the bar); --check exits 3 when one is missed.
INGEST_TARGETS = {"events_per_s": 20_000, "ratio_vs_baseline": 3, "draft_1m_events_s": 3.0}


@click.group("bench", cls=Group, help="benchmarks that start what they need on the embedded defaults")
def command() -> None:
    pass


@command.command(
    "ledger", short_help="durable debits/s on one hot account vs a naive SQL baseline and a gRPC echo",
    help="Starts an embedded Postgres (fsync on) in a temporary directory, the ledger server and a gRPC echo "
         "server in their own processes, and drives each phase for --seconds.")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=10.0,
              help="measured seconds per phase (default 10)")
@click.option("--quick", is_flag=True, help="1 second per phase (a smoke run)")
@click.option("--concurrency", type=int, default=64, help="requests in flight (default 64)")
@click.option("--batch-size", type=int, default=1000, help="debits per BatchDebitCredits call (default 1000)")
@click.option("--batch-concurrency", type=int, default=4, help="batch calls in flight (default 4)")
@click.option("--no-uvloop", is_flag=True, help="plain asyncio loops instead of uvloop")
@click.option("--verify", is_flag=True, help="run VerifyJournal after the debit phases")
@click.option("--profile", default="", help="write a cProfile of the ledger server process to this file")
@click.option("--as-of-entries", type=click.IntRange(min=1000), default=1_000_000,
              help="journal entries of the as-of account, and as many in other tenants (default 1,000,000)")
@click.option("--check", is_flag=True, help="exit 3 when a target is missed")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object with the figures")
def ledger(seconds: float, quick: bool, concurrency: int, batch_size: int, batch_concurrency: int, no_uvloop: bool,
           verify: bool, profile: str, as_of_entries: int, check: bool, as_json: bool) -> int:
    from harness.benches import ledger as bench

    report = bench.run_bench(bench.BenchOptions(
        seconds=1.0 if quick else seconds, concurrency=concurrency, batch_size=batch_size,
        batch_concurrency=batch_concurrency, use_uvloop=not no_uvloop, verify_journal=verify, profile=profile,
        as_of_entries=as_of_entries, progress=None if as_json else note))
    figures = report.figures()
    if as_json:
        print_json(figures, indent=None)
    else:
        click.echo(bench.format_report(report))
    for phase in (report.echo, report.debit, report.batch, report.baseline):
        if phase.errors:
            click.echo(f"bench: {phase.name} had {phase.errors} failed calls, first: {phase.first_error}", err=True)
    if not report.consistent:
        click.echo(f"bench: INCONSISTENT: ledger consumed {report.ledger_consumed} vs acknowledged "
                   f"{report.ledger_acknowledged}; baseline {report.baseline_consumed} vs "
                   f"{report.baseline_acknowledged}; journal ok {report.journal_ok}", err=True)
    if report.errors or not report.consistent:
        return 1
    if check and not all(bench.meets(k, v) is not False for k, v in figures.items()):
        return CHECK_MISSED
    return 0


@command.command(
    "ingest", short_help="usage events/s through IngestEvents vs plain batched inserts; 1M-event draft time",
    help="Starts an embedded Postgres (fsync on) in a temporary directory and the invoice server in-process, then "
         "measures batch ingestion (every batch fully accepted, rows counted after), the baseline of plain "
         "multi-row INSERTs of the same batch size, and CreateDraft over 1,000,000 events.")
@click.option("--events", type=int, default=200_000, help="events sent through IngestEvents (default 200000)")
@click.option("--baseline-events", type=int, default=0, help="events for the baseline (default: as many as --events)")
@click.option("--draft-events", type=int, default=1_000_000, help="events in the drafted period")
@click.option("--concurrency", type=int, default=4, help="batches in flight / baseline connections")
@click.option("--check", is_flag=True, help="exit 3 when a target is missed")
@click.option("--json", "as_json", is_flag=True,
              help="print one JSON object: events, events_stored, events_per_s, baseline_events_stored, "
                   "baseline_events_per_s, ratio_vs_baseline, draft_1m_events_s")
def ingest(events: int, baseline_events: int, draft_events: int, concurrency: int, check: bool,
           as_json: bool) -> int:
    from harness.benches import ingest as bench

    result = asyncio.run(bench.run(events=events, baseline_events=baseline_events, draft_events=draft_events,
                                   concurrency=concurrency))
    figures = bench.as_dict(result)
    if as_json:
        print_json(figures, indent=None)
    else:
        click.echo(bench.describe(result))
    missed = [k for k, target in INGEST_TARGETS.items()
              if (figures[k] > target if k.endswith("_s") else figures[k] < target)]
    if check and missed:
        click.echo(f"bench: missed targets: {', '.join(missed)}", err=True)
        return CHECK_MISSED
    return 0


@command.command(
    "saga", short_help="finalized invoices/s through the real saga vs a bare workflow",
    help="Postgres, Temporal dev server, ledger, invoice and the worker each in their own process; this process "
         "keeps --concurrency sagas in flight.")
@click.option("--invoices", type=int, default=300)
@click.option("--concurrency", type=int, default=40, help="workflows in flight (default 40)")
@click.option("--rounds", type=int, default=3, help="interleaved saga/bare rounds, order alternating (default 3)")
@click.option("--temporal-db-file", is_flag=True,
              help="Temporal dev server on a database file (as `creditctl up`) instead of in memory")
@click.option("--json", "as_json", is_flag=True)
def saga(invoices: int, concurrency: int, rounds: int, temporal_db_file: bool, as_json: bool) -> int:
    from harness.benches import saga as bench

    result = asyncio.run(bench.run_bench(invoices, concurrency, temporal_db_file=temporal_db_file, rounds=rounds,
                                         progress=None if as_json else note))
    if as_json:
        print_json(result, indent=None)
    else:
        for k, v in result.items():
            click.echo(f"{k:<22} {v}")
    return 0


@command.command(
    "billing", short_help="month-end billing cycles (small, large) on the stack as `up` runs it vs a bare baseline",
    help="Postgres, the Temporal dev server on its database file (as `creditctl up`), ledger, invoice and the worker "
         "each in their own process; seeds a small and a large tenant, runs each one's BillingCycle, then as many bare "
         "workflows (7 regular activities), and reconciles.")
@click.option("--customers", type=click.IntRange(min=1), default=2000, show_default=True,
              help="customers of the large cycle")
@click.option("--small", type=click.IntRange(min=0), default=0,
              help="customers of the small cycle (default: a quarter)")
@click.option("--concurrency", type=click.IntRange(min=1, max=64), default=16, show_default=True,
              help="sagas in flight")
@click.option("--child-sagas", is_flag=True,
              help="each invoice's saga as a FinalizeInvoice child workflow (the cycle's option), not inline")
@click.option("--check", is_flag=True, help="exit 3 when a target is missed")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object with the figures")
def billing(customers: int, small: int, concurrency: int, child_sagas: bool, check: bool, as_json: bool) -> int:
    from harness.benches import billing as bench

    result = asyncio.run(bench.run_bench(customers, concurrency, small, progress=None if as_json else note,
                                         child_sagas=child_sagas))
    if as_json:
        print_json(result, indent=None)
    else:
        for k, v in result.items():
            click.echo(f"{k:<26} {v}")
    if result["failed"] or result["reconcile_violations"]:
        return 1
    if check and any(bench.meets(k, float(result[k])) is False for k in bench.JSON_KEYS):
        return CHECK_MISSED
    return 0


@command.command(
    "gate", short_help="gateway leases in 8 gate processes: exact spend of 500 credits, authorizations/s vs reserves",
    help="Starts an embedded Postgres (fsync on) and the ledger server in its own process, then gate processes "
         "(gateway.gate.Gate) on one account: exactly 500 credits spent across them, authorize throughput and p99 "
         "from leases on a large balance, and per-request ReserveCredits+CommitHold in the same processes as the "
         "baseline.")
@click.option("--gates", type=int, default=8, show_default=True, help="gate processes")
@click.option("--concurrency", type=int, default=8, show_default=True, help="closed-loop clients per gate process")
@click.option("--seconds", type=float, default=5.0, show_default=True, help="length of the lease and baseline phases")
@click.option("--check", is_flag=True, help="exit 3 when a target is missed")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object with the figures")
def gate(gates: int, concurrency: int, seconds: float, check: bool, as_json: bool) -> int:
    from harness.benches import gate as bench

    report = bench.run_bench(gates=gates, concurrency=concurrency, seconds=seconds)
    figures = bench.as_dict(report)
    if as_json:
        print_json(figures, indent=None)
    else:
        click.echo(bench.describe(report))
    if check and any(bench.meets(k, float(v)) is False for k, v in figures.items()):
        return CHECK_MISSED
    return 0


@command.command(
    "alerts", short_help="accounts crossing thresholds under debit load: change -> webhook latency, exactness",
    help="Starts an embedded Postgres (fsync on) in a temporary directory, the ledger server, its webhook delivery "
         "loop and a local receiver verifying signatures; debits --accounts accounts across a LOW_BALANCE rule's "
         "thresholds (and back) and compares every received event with the model's; the same load on as many "
         "accounts without rules is the baseline.")
@click.option("--accounts", type=int, default=1000, help="accounts crossing thresholds (default 1000)")
@click.option("--concurrency", type=int, default=64, help="debits in flight (default 64)")
@click.option("--check", is_flag=True, help="exit 3 when alert_p99_ms > 1000 or any duplicate or miss")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object with the figures")
def alerts(accounts: int, concurrency: int, check: bool, as_json: bool) -> int:
    from harness.benches import alerts as bench

    result = asyncio.run(bench.run(accounts=accounts, concurrency=concurrency))
    if as_json:
        print_json(result.figures(), indent=None)
    else:
        click.echo(bench.describe(result))
    if result.duplicates or result.missed:
        return 1
    if check and result.alert_p99_ms > 1000:
        return CHECK_MISSED
    return 0


@command.command(
    "finance", short_help="the books over 1M ledger entries: monthly report, projection rate and lag vs a naive scan",
    help="Starts an embedded Postgres (fsync on) and the ledger server, loads ENTRIES ledger entries through "
         "BatchDebitCredits, then measures the books' catch-up as the ledger server's background projector runs "
         "it (entries/s; the owner's session: COPY), the monthly revenue report against a naive full scan of the "
         "journal (same run), exactness (mismatch_minor: must be 0) and the projection lag while debits keep "
         "arriving. Baseline for the projector, same run: the first --baseline-entries entries projected by the "
         "earlier per-entry path, by the current one, and by the current one in a service session (row "
         "security: JSON statements), each rolled back, with the CPU per entry of each (baseline_projection_cpu_us, "
         "prefix_projection_cpu_us, prefix_service_projection_cpu_us: [this process, postgres]).")
@click.option("--entries", type=int, default=1_000_000, show_default=True, help="ledger entries to load")
@click.option("--customers", type=int, default=200, show_default=True, help="accounts the debits spread over")
@click.option("--lag-seconds", type=float, default=10.0, show_default=True, help="length of the lag phase")
@click.option("--baseline-entries", type=click.IntRange(min=0), default=200_000, show_default=True,
              help="entries the earlier per-entry projector path and the current one project (rolled back)")
@click.option("--check", is_flag=True, help="exit 3 when a target is missed")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object with the figures")
def finance(entries: int, customers: int, lag_seconds: float, baseline_entries: int, check: bool,
            as_json: bool) -> int:
    from harness.benches import finance as bench

    report = bench.run(bench.Options(entries=entries, customers=customers, lag_seconds=lag_seconds,
                                     baseline_entries=baseline_entries, progress=None if as_json else note))
    figures = report.figures()
    if as_json:
        print_json(figures, indent=None)
    else:
        click.echo(bench.describe(report))
    if report.mismatch_minor or report.violations:
        return 1
    if check and any(bench.meets(k, float(v)) is False for k, v in figures.items() if k in bench.TARGETS):
        return CHECK_MISSED
    return 0


@command.command(
    "watch", short_help="WatchBalance: commit → client latency, gaps and duplicates for many watchers under load",
    help="Starts an embedded Postgres (fsync on) and the ledger server in its own process; opens --watchers "
         "WatchBalance streams on one account while DebitCredits runs at --concurrency for --seconds; baseline: "
         "one watcher under the same load. Latency is receipt minus the change's recorded_at (before COMMIT).")
@click.option("--watchers", type=int, default=1000, help="concurrent streams on the account (default 1000)")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=10.0, help="debit load (default 10)")
@click.option("--concurrency", type=int, default=16, help="debits in flight (default 16)")
@click.option("--check", is_flag=True, help="exit 3 when a target is missed")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object with the figures")
@click.option("--profile", default="", help="write a cProfile of the ledger server process to this path")
def watch(watchers: int, seconds: float, concurrency: int, check: bool, as_json: bool, profile: str) -> int:
    from harness.benches import transparency as bench

    figures = asyncio.run(bench.bench_watch(watchers, seconds, concurrency, lambda m: None if as_json else note(m),
                                            profile))
    return _report(figures, bench.meets, check, as_json)


@command.command(
    "statement", short_help="GetStatement on a long account vs paging the raw journal; a 1M-entry export's RSS",
    help="Starts an embedded Postgres (fsync on) and the ledger server in its own process; fills an account with "
         "--entries journal entries and times GetStatement (median of 5) against paging ListEntries; then exports "
         "an account of --export-entries entries through ExportStatement from a fresh server process on the same "
         "database (restarted after the fill), sampling that process's peak RSS.")
@click.option("--entries", type=int, default=100_000, help="entries of the statement's account (default 100000)")
@click.option("--export-entries", type=int, default=1_000_000, help="entries exported (default 1000000; 0: skip)")
@click.option("--check", is_flag=True, help="exit 3 when a target is missed")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object with the figures")
def statement(entries: int, export_entries: int, check: bool, as_json: bool) -> int:
    from harness.benches import transparency as bench

    figures = asyncio.run(bench.bench_statement(entries, export_entries, lambda m: None if as_json else note(m)))
    return _report(figures, bench.meets, check, as_json)


@command.command(
    "pricing", short_help="draft time by price kind: plain vs price per property (+ filter) vs time of use",
    help="Starts an embedded Postgres and the invoice server in-process, loads the same events for three customers "
         "(plain per-unit price, a price per model with a region filter, peak/off-peak in Europe/Berlin) and times "
         "CreateDraft for each; the plain draft is the baseline.")
@click.option("--events", type=click.IntRange(min=1), default=200_000, show_default=True, help="events per customer")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True, help="drafts per kind (best)")
@click.option("--json", "as_json", is_flag=True,
              help="print one JSON object: events, draft_plain_s, draft_group_by_s, draft_time_of_use_s, "
                   "group_by_vs_plain, time_of_use_vs_plain")
def pricing(events: int, rounds: int, as_json: bool) -> int:
    from harness.benches import pricing_draft as bench

    figures = asyncio.run(bench.run(events=events, rounds=rounds))
    if as_json:
        print_json(figures, indent=None)
    else:
        click.echo(bench.describe(figures))
    return 0


def _report(figures: dict[str, float], meets: Callable[[str, float], bool | None], check: bool,
            as_json: bool) -> int:
    if as_json:
        print_json(figures, indent=None)
    else:
        for name, value in figures.items():
            verdict = {True: " ✓", False: " ✗", None: ""}[meets(name, value)]
            click.echo(f"{name:<28} {value:,}{verdict}")
    return CHECK_MISSED if check and any(meets(k, v) is False for k, v in figures.items()) else 0
