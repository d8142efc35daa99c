"""Where a unary debit's CPU goes: the ledger server process(es) vs Postgres vs the load generator (#17).

    python -m harness.benches.unary_cpu [SECONDS] [ROUNDS] [IN_FLIGHT]

Starts an embedded Postgres (fsync on) and the ledger server process as `creditctl bench ledger`
does, then runs only its DebitCredits phase (one account, IN_FLIGHT callers, 64 by default) for SECONDS per
round, and prints per round the debits/s, p50/p99, the CPU (user + system, psutil) per debit of the server
process, of Postgres (all its processes) and of this load generator, and the debits per committed
transaction (the group commit's batch). CPU per debit moves less with other work on the machine than
debits/s does.
Run it under the bench lock: `flock /tmp/bench.lock python -m harness.benches.unary_cpu 4 2`.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import asyncpg
import uvloop
from credits.ledger.v1 import ledger_pb2 as pb

from harness.benches import ledger as bench
from harness.benches.batch_cpu import _cpu, _postgres, hot_account, run_on_embedded_postgres

IN_FLIGHT = 64


async def _run(dsn: str, workdir: Path, pgdata: Path, seconds: float, rounds: int, in_flight: int) -> None:
    async with hot_account(dsn, workdir) as hot:
        call = hot.channel.unary_unary(bench.DEBIT_METHOD, response_deserializer=pb.Hold.FromString)
        srv, me = hot.server, hot.me

        phase_name = ["warm-up"]  # in each key: every phase's debits are fresh (a replay costs less)

        async def debit(w: int, seq: int) -> int:
            hold = await call(hot.encoder.debit(f"d-{phase_name[0]}-{w}-{seq}"), metadata=hot.md)
            if hold.status != pb.COMMITTED:
                raise RuntimeError(f"hold {hold.hold_key} is {pb.HoldStatus.Name(hold.status)}")
            return 1

        await bench.closed_loop("warm-up", debit, concurrency=in_flight, seconds=1, warmup_s=0.5)
        stats = await asyncpg.connect(dsn)
        xacts = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        for r in range(rounds):
            phase_name[0] = f"round-{r}"
            await stats.execute("SELECT pg_stat_clear_snapshot()")
            x0 = await stats.fetchval(xacts)
            pg = _postgres(pgdata)
            before = {p.pid: _cpu(p) for p in pg}
            s0, m0 = _cpu(srv), _cpu(me)
            phase = await bench.closed_loop(f"round-{r}", debit, concurrency=in_flight, seconds=seconds,
                                            warmup_s=0)
            n = max(phase.total_units, 1)
            await asyncio.sleep(0.6)  # the statistics collector's interval (500 ms)
            await stats.execute("SELECT pg_stat_clear_snapshot()")
            per_xact = n / max(1, await stats.fetchval(xacts) - x0 - 2)
            pg_us = sum(_cpu(p) - before.get(p.pid, 0.0) for p in pg) / n * 1e6
            print(f"round {r}: {phase.rate:,.0f} debits/s, p50 {phase.percentile(0.5):.1f} ms, "
                  f"p99 {phase.percentile(0.99):.1f} ms, {phase.errors} errors; CPU per debit: server "
                  f"{(_cpu(srv) - s0) / n * 1e6:.1f} µs, postgres {pg_us:.1f} µs, "
                  f"load generator {(_cpu(me) - m0) / n * 1e6:.1f} µs; {per_xact:.1f} debits per transaction",
                  flush=True)
        await stats.close()


def main(argv: list[str]) -> None:
    seconds = float(argv[0]) if argv else 4.0
    rounds = int(argv[1]) if len(argv) > 1 else 2
    in_flight = int(argv[2]) if len(argv) > 2 else IN_FLIGHT
    run_on_embedded_postgres("unary-cpu-", lambda dsn, workdir, pgdata: _run(dsn, workdir, pgdata, seconds, rounds,
                                                                            in_flight),
                             uvloop.run)  # as the bench's load generator runs


if __name__ == "__main__":
    main(sys.argv[1:])
