"""creditctl grants create|void, balances <account>, statements <account>: the ledger for people.

Talks gRPC to CREDITS_LEDGER_ADDR with CREDITS_API_KEY. Tables for humans, `--json` for scripts.
Mutations take an --idempotency-key; without one a fresh key is generated and printed, so a retry
after a lost reply can reuse it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
from credits.ledger.v1 import ledger_pb2 as lpb
from credits.ledger.v1 import ledger_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from service_runtime.settings import Settings
from service_runtime.tls import open_channel

BALANCE_COLUMNS = ("available", "held", "consumed", "expired", "voided", "granted", "reinstated",
                   "transferred_out", "upcoming")


def _ts(iso: str) -> Timestamp:
    out = Timestamp()
    value = datetime.fromisoformat(iso)
    out.FromDatetime(value if value.tzinfo else value.replace(tzinfo=UTC))
    return out


def _iso(ts: Timestamp) -> str:
    return "" if ts.seconds == 0 and ts.nanos == 0 else ts.ToDatetime(tzinfo=UTC).isoformat()


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _lot_dict(lot: lpb.Lot) -> dict[str, Any]:
    return {"lot_id": lot.lot_id, "account_id": lot.account_id, "type": lpb.LotType.Name(lot.type),
            "unit": lot.unit, "amount": lot.amount, "priority": lot.priority,
            "effective_at": _iso(lot.effective_at), "expires_at": _iso(lot.expires_at),
            "source": lot.source, "reason_code": lot.reason_code, "campaign_id": lot.campaign_id,
            "incident_id": lot.incident_id, "voided_at": _iso(lot.voided_at),
            "available": lot.balance.available if lot.HasField("balance") else ""}


def _print_lot(lot: lpb.Lot, as_json: bool, extra: dict[str, Any]) -> None:
    d = {**_lot_dict(lot), **extra}
    if as_json:
        print(json.dumps(d, indent=2))
        return
    for k, v in d.items():
        if v not in ("", None):
            print(f"{k:<16} {v}")


async def _ledger(fn: Callable[[ledger_pb2_grpc.LedgerServiceStub, list[tuple[str, str]]], Awaitable[int]]) -> int:
    settings = Settings.from_env()
    if not settings.api_key:
        print("CREDITS_API_KEY is not set", file=sys.stderr)
        return 2
    async with open_channel(settings.ledger_addr) as channel:
        try:
            return await fn(ledger_pb2_grpc.LedgerServiceStub(channel), [("x-api-key", settings.api_key)])
        except grpc.aio.AioRpcError as err:
            print(f"{err.code().name}: {err.details()}", file=sys.stderr)
            return 2


def _key(args: argparse.Namespace) -> str:
    if args.idempotency_key:
        return str(args.idempotency_key)
    key = f"cli-{uuid.uuid4()}"
    if not args.json:
        print(f"idempotency key  {key}  (pass --idempotency-key {key} to retry safely)", file=sys.stderr)
    return key


def _cmd_grant_create(args: argparse.Namespace) -> int:
    key = _key(args)

    async def run(stub: ledger_pb2_grpc.LedgerServiceStub, md: list[tuple[str, str]]) -> int:
        req = lpb.GrantCreditsRequest(
            idempotency_key=key, account_id=args.account, type=lpb.LotType.Value(args.type.upper()),
            unit=args.unit, amount=args.amount, priority=args.priority, source=args.source,
            reason_code=args.reason, campaign_id=args.campaign, incident_id=args.incident,
            cost_basis=args.cost_basis)
        if args.effective_at:
            req.effective_at.CopyFrom(_ts(args.effective_at))
        if args.expires_at:
            req.expires_at.CopyFrom(_ts(args.expires_at))
        _print_lot(await stub.GrantCredits(req, metadata=md), args.json, {"idempotency_key": key})
        return 0

    return asyncio.run(_ledger(run))


def _cmd_grant_void(args: argparse.Namespace) -> int:
    key = _key(args)

    async def run(stub: ledger_pb2_grpc.LedgerServiceStub, md: list[tuple[str, str]]) -> int:
        resp = await stub.VoidGrant(lpb.VoidGrantRequest(idempotency_key=key, lot_id=args.lot_id,
                                                         reason=args.reason), metadata=md)
        _print_lot(resp.lot, args.json, {"voided_amount": resp.voided_amount, "idempotency_key": key})
        return 0

    return asyncio.run(_ledger(run))


def _bucket(b: lpb.BalanceBucket) -> dict[str, str]:
    return {"unit": b.unit, **({"type": lpb.LotType.Name(b.type)} if b.type else {}),
            **{c: getattr(b, c) for c in BALANCE_COLUMNS}}


def _cmd_balances(args: argparse.Namespace) -> int:
    async def run(stub: ledger_pb2_grpc.LedgerServiceStub, md: list[tuple[str, str]]) -> int:
        req = lpb.GetBalanceRequest(account_id=args.account)
        if args.as_of:
            req.as_of.CopyFrom(_ts(args.as_of))
        bal = await stub.GetBalance(req, metadata=md)
        totals, by_type = [_bucket(b) for b in bal.totals], [_bucket(b) for b in bal.by_type]
        if args.json:
            print(json.dumps({"account_id": bal.account_id, "as_of": _iso(bal.as_of), "totals": totals,
                              "by_type": by_type}, indent=2))
            return 0
        print(f"account {bal.account_id}, as of {_iso(bal.as_of)}")
        cols: tuple[str, ...] = ("unit", *BALANCE_COLUMNS)
        print(table(cols, [[t[c] for c in cols] for t in totals]) if totals else "(no credits)")
        if by_type:
            print()
            cols = ("unit", "type", *BALANCE_COLUMNS)
            print(table(cols, [[t.get(c, "") for c in cols] for t in by_type]))
        return 0

    return asyncio.run(_ledger(run))


def _cmd_statements(args: argparse.Namespace) -> int:
    async def run(stub: ledger_pb2_grpc.LedgerServiceStub, md: list[tuple[str, str]]) -> int:
        entries: list[lpb.Entry] = []
        token = ""
        while len(entries) < args.limit:
            req = lpb.ListEntriesRequest(account_id=args.account, page_size=min(1000, args.limit - len(entries)),
                                         page_token=token)
            if args.since:
                getattr(req, "from").CopyFrom(_ts(args.since))  # `from` is a Python keyword
            if args.until:
                req.to.CopyFrom(_ts(args.until))
            resp = await stub.ListEntries(req, metadata=md)
            entries.extend(resp.entries)
            token = resp.next_page_token
            if not token:
                break
        rows = [{"entry_id": e.entry_id, "recorded_at": _iso(e.recorded_at), "effective_at": _iso(e.effective_at),
                 "kind": lpb.EntryKind.Name(e.kind), "amount": e.amount, "unit": e.unit, "lot_id": e.lot_id,
                 "reference": e.reference or e.hold_key, "actor": e.actor, "reason": e.reason} for e in entries]
        if args.json:
            print(json.dumps({"account_id": args.account, "entries": rows, "more": bool(token)}, indent=2))
            return 0
        cols = ("entry_id", "recorded_at", "kind", "amount", "unit", "lot_id", "reference", "reason")
        print(f"statement of {args.account}: {len(rows)} entries" + (" (more: raise --limit)" if token else ""))
        if rows:
            print(table(cols, [[r[c] for c in cols] for r in rows]))
        return 0

    return asyncio.run(_ledger(run))


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    if "grants" in sub.choices:  # registered already (by creditctl.main or coordinator_commands)
        return
    grants = sub.add_parser("grants", help="grant or void credit lots (CREDITS_LEDGER_ADDR, CREDITS_API_KEY)")
    gsub = grants.add_subparsers(dest="grants_command", required=True)
    c = gsub.add_parser("create", help="grant a lot of credits to an account")
    c.add_argument("account")
    c.add_argument("--amount", required=True)
    c.add_argument("--unit", default="USD")
    c.add_argument("--type", default="PROMOTIONAL", choices=["PURCHASED", "PROMOTIONAL", "COMPENSATORY", "ROLLOVER",
                                                            "purchased", "promotional", "compensatory", "rollover"])
    c.add_argument("--priority", type=int, default=0)
    c.add_argument("--effective-at", default="", help="ISO instant; default now")
    c.add_argument("--expires-at", default="", help="ISO instant; default never")
    c.add_argument("--source", default="cli")
    c.add_argument("--reason", default="")
    c.add_argument("--campaign", default="")
    c.add_argument("--incident", default="", help="required for COMPENSATORY")
    c.add_argument("--cost-basis", default="")
    c.add_argument("--idempotency-key", default="")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_cmd_grant_create)
    v = gsub.add_parser("void", help="void the unused rest of a lot")
    v.add_argument("lot_id")
    v.add_argument("--reason", default="")
    v.add_argument("--idempotency-key", default="")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=_cmd_grant_void)

    b = sub.add_parser("balances", help="an account's balance per unit and per lot type")
    b.add_argument("account")
    b.add_argument("--as-of", default="")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=_cmd_balances)

    s = sub.add_parser("statements", help="an account's journal entries, oldest first")
    s.add_argument("account")
    s.add_argument("--since", default="", help="recorded at or after this ISO instant")
    s.add_argument("--until", default="", help="recorded before this ISO instant")
    s.add_argument("--limit", type=int, default=1000)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_statements)
