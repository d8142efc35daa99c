"""creditctl alerts create|list|disable|events: alert rules on ledger changes and the events they fired
(CreateAlertRule, ListAlertRules, DisableAlertRule, ListAlertEvents)."""

from __future__ import annotations

import click
from credits.alerts.v1 import alerts_pb2 as apb

from creditctl.connection import paged, rpc
from creditctl.errors import USAGE, UserError
from creditctl.help_listing import Group
from creditctl.output import Format, emit_record, emit_rows, format_options
from creditctl.records import idempotency_option, key_for, record, records, short_instant

KINDS = {"low-balance": apb.LOW_BALANCE, "depleted": apb.DEPLETED, "expiring": apb.EXPIRING,
         "usage-spike": apb.USAGE_SPIKE, "large-adjustment": apb.LARGE_ADJUSTMENT,
         "compensatory-burst": apb.COMPENSATORY_BURST}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(text: str, flag: str) -> int:
    """`90`, `30m`, `24h`, `7d` -> seconds; anything else is one clear line."""
    number, unit = (text[:-1], text[-1]) if text and text[-1] in _UNITS else (text, "s")
    if not number.isdigit():
        raise UserError(f"{flag}: expected a duration like 3600, 30m, 24h or 7d, got {text!r}", USAGE)
    return int(number) * _UNITS[unit]


@click.group("alerts", cls=Group, help="alert rules on balances, expiry, usage spikes and adjustments")
def command() -> None:
    pass


@command.command("create", help="a rule: fires once per crossing, re-arms on recovery (README: Alerts)")
@click.argument("rule_id")
@click.option("--kind", type=click.Choice(list(KINDS), case_sensitive=False), required=True)
@click.option("--unit", required=True)
@click.option("--account", default="", help="default: every account of the tenant without its own rule")
@click.option("--threshold", "thresholds", multiple=True, help="low-balance: an amount (repeatable)")
@click.option("--percent", "percents", type=int, multiple=True,
              help="low-balance: a %% of the credit granted to lots in their window (repeatable)")
@click.option("--amount", default="", help="expiring: more than this; large-adjustment: above this")
@click.option("--within-days", type=int, default=0, help="expiring")
@click.option("--window", default="", help="usage-spike, compensatory-burst: 1h, 1d ...")
@click.option("--factor", default="", help="usage-spike: window consumption > FACTOR x trailing average")
@click.option("--trailing", type=int, default=0, help="usage-spike: how many earlier windows to average")
@click.option("--count", type=int, default=0, help="compensatory-burst: grants by one key within the window")
@idempotency_option
@format_options()
def create(rule_id: str, kind: str, unit: str, account: str, thresholds: tuple[str, ...], percents: tuple[int, ...],
           amount: str, within_days: int, window: str, factor: str, trailing: int, count: int,
           idempotency_key: str, fmt: Format) -> int:
    rule = apb.AlertRule(rule_id=rule_id, kind=KINDS[kind.lower()], unit=unit, account_id=account,
                         thresholds=list(thresholds), percent_thresholds=list(percents), amount=amount,
                         within_days=within_days, window_s=seconds(window, "--window") if window else 0,
                         factor=factor, trailing_windows=trailing, count=count)
    request = apb.CreateAlertRuleRequest(idempotency_key=key_for(idempotency_key), rule=rule)
    emit_record(record(rpc("alerts", "CreateAlertRule", request)), fmt, id_field="rule_id")
    return 0


@command.command("list", help="the tenant's rules (or one account's)")
@click.option("--account", default="")
@format_options(csv_=True, quiet=True)
def list_(account: str, fmt: Format) -> int:
    rules = paged("alerts", "ListAlertRules", apb.ListAlertRulesRequest(account_id=account), "rules")
    emit_rows(records(rules), ("rule_id", "kind", "account_id", "unit", "thresholds", "percent_thresholds", "enabled"),
              fmt, id_column="rule_id")
    return 0


@command.command("disable", help="stop evaluating a rule (its events stay)")
@click.argument("rule_id")
@idempotency_option
@format_options()
def disable(rule_id: str, idempotency_key: str, fmt: Format) -> int:
    request = apb.DisableAlertRuleRequest(idempotency_key=key_for(idempotency_key), rule_id=rule_id)
    emit_record(record(rpc("alerts", "DisableAlertRule", request)), fmt, id_field="rule_id")
    return 0


@command.command("events", help="the events the rules fired, oldest first")
@click.option("--account", default="")
@click.option("--rule", default="")
@click.option("--limit", type=int, default=0, help="at most this many (0 = all)")
@format_options(csv_=True, quiet=True)
def events(account: str, rule: str, limit: int, fmt: Format) -> int:
    found = paged("alerts", "ListAlertEvents", apb.ListAlertEventsRequest(account_id=account, rule_id=rule),
                  "events", limit=limit)
    rows = records(found)
    for row in rows:
        row["occurred_at"] = short_instant(row["occurred_at"]) if fmt is Format.TABLE else row["occurred_at"]
    emit_rows(rows, ("event_id", "event_type", "account_id", "crossing", "occurred_at"), fmt, id_column="event_id")
    return 0
