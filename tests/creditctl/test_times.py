"""The one date parser: ISO 8601, `now`, relative forms, and `--since 24h` as before; the same on every flag."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta

import click
import pytest
from click.testing import CliRunner

from creditctl.times import INSTANT, SINCE, parse_duration, parse_instant

NOW = datetime(2026, 8, 15, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-12-31T00:00:00Z", datetime(2026, 12, 31, tzinfo=UTC)),
    ("2026-12-31T02:00:00+02:00", datetime(2026, 12, 31, tzinfo=UTC)),
    ("2026-12-31", datetime(2026, 12, 31, tzinfo=UTC)),          # a date is its midnight, UTC
    ("2026-12-31T09:30", datetime(2026, 12, 31, 9, 30, tzinfo=UTC)),  # no offset: UTC
    ("now", NOW), ("NOW", NOW),
    ("+30d", NOW + timedelta(days=30)), ("-24h", NOW - timedelta(hours=24)),
    ("+1w2d", NOW + timedelta(days=9)), ("-90s", NOW - timedelta(seconds=90)), ("+15m", NOW + timedelta(minutes=15)),
])
def test_forms(text: str, expected: datetime) -> None:
    assert parse_instant(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["next tuesday", "30d", "+30y", "+", "", "2026-13-01", "+-1d", "1d ago"])
def test_what_is_not_an_instant_says_what_is(text: str) -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_instant(text, now=NOW)


def test_a_bare_duration_counts_back_only_where_asked() -> None:
    assert parse_instant("24h", now=NOW, bare_duration_ago=True) == NOW - timedelta(hours=24)
    assert parse_instant("2026-08-01T00:00:00Z", now=NOW, bare_duration_ago=True) == datetime(2026, 8, 1, tzinfo=UTC)


def test_relative_forms_agree_with_durations_seeded() -> None:
    rng = random.Random(15)
    for _ in range(500):
        parts = {u: rng.randrange(0, 50) for u in "wdhms" if rng.random() < 0.5} or {"s": 1}
        text = "".join(f"{n}{u}" for u, n in parts.items())
        delta = parse_duration(text)
        assert delta == timedelta(weeks=parts.get("w", 0), days=parts.get("d", 0), hours=parts.get("h", 0),
                                  minutes=parts.get("m", 0), seconds=parts.get("s", 0))
        assert parse_instant(f"+{text}", now=NOW) - NOW == delta == NOW - parse_instant(f"-{text}", now=NOW)


def test_a_bad_value_is_a_usage_error_naming_the_flag() -> None:
    @click.command()
    @click.option("--at", type=INSTANT)
    @click.option("--since", type=SINCE)
    def cmd(at: datetime | None, since: datetime | None) -> None:
        click.echo(f"{at.isoformat() if at else ''} {since.isoformat() if since else ''}")

    ok = CliRunner().invoke(cmd, ["--at", "2026-01-01", "--since", "2026-01-02T00:00:00Z"])
    assert ok.exit_code == 0 and ok.output.split() == ["2026-01-01T00:00:00+00:00", "2026-01-02T00:00:00+00:00"]
    bad = CliRunner().invoke(cmd, ["--at", "24h"])
    assert bad.exit_code == 2 and "--at" in bad.output and "ISO 8601" in bad.output


def test_every_instant_flag_of_every_command_uses_the_one_parser() -> None:
    """`audit --since` and `statements --since` (and every --at, --as-of, --expires-at ...) parse alike."""
    from creditctl.main import cli

    def options(cmd: click.Command, path: str) -> list[tuple[str, click.Option]]:
        if isinstance(cmd, click.Group):
            return [o for name, sub in cmd.commands.items() for o in options(sub, f"{path} {name}".strip())]
        return [(path, p) for p in cmd.params if isinstance(p, click.Option)]

    timed = re.compile(r"(since|until|_at|as_of|containing|anchor|from|^to|_before|_start)$")
    found = [(path, o) for path, o in options(cli, "") if o.name and timed.search(o.name)]
    assert len(found) >= 20
    assert {path for path, o in found if o.name == "since"} == {"audit", "statements", "usage series", "usage top"}
    for path, option in found:
        assert option.type in (INSTANT, SINCE), (path, option.opts)
