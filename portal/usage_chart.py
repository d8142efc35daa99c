"""Usage per meter per day as server-rendered SVG bar charts (no script, no CDN), with the numbers
also given as a table for screen readers."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from html import escape
from typing import Any, Protocol

WIDTH, HEIGHT, PAD = 640, 180, 28


@dataclass(frozen=True)
class MeterSeries:
    meter: str
    days: list[tuple[date, Decimal]]  # every day of the window, oldest first (zero when unused)

    @property
    def total(self) -> Decimal:
        return sum((v for _, v in self.days), Decimal(0))


def per_meter_per_day(points: Iterable[tuple[date, str, Decimal]], first: date, last: date) -> list[MeterSeries]:
    """(day, meter, amount) points → one full series per meter, days with no use at zero."""
    acc: dict[str, dict[date, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for day, meter, amount in points:
        acc[meter or "(unnamed)"][day] += amount
    span = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    return [MeterSeries(m, [(d, acc[m].get(d, Decimal(0))) for d in span]) for m in sorted(acc)]


class UsagePoint(Protocol):  # credits.invoice.v1.UsagePoint, as GetUsageSeries returns it
    meter_code: str
    value: str
    events: int
    cost: str
    credits_applied: str
    currency: str

    @property
    def bucket_start(self) -> Any: ...


@dataclass(frozen=True)
class BilledDay:
    day: date
    usage: str
    events: int
    cost: str             # "" while the day's period is not invoiced yet
    credits_applied: str
    currency: str


def billed_by_meter(points: Iterable[UsagePoint]) -> list[tuple[str, list[BilledDay]]]:
    """GetUsageSeries points → per meter, the days with usage: usage, cost and the credits that paid it."""
    out: dict[str, list[BilledDay]] = defaultdict(list)
    for p in points:
        out[p.meter_code].append(BilledDay(p.bucket_start.ToDatetime().date(), p.value, p.events, p.cost,
                                           p.credits_applied, p.currency))
    return sorted(out.items())


def svg(series: MeterSeries, unit: str) -> str:
    """A bar chart of one meter; `role="img"` with a text alternative."""
    top = max((v for _, v in series.days), default=Decimal(0)) or Decimal(1)
    n = max(len(series.days), 1)
    slot = (WIDTH - 2 * PAD) / n
    bars = []
    for i, (day, value) in enumerate(series.days):
        h = float(value / top) * (HEIGHT - 2 * PAD)
        x, y = PAD + i * slot, HEIGHT - PAD - h
        bars.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(slot - 2, 1):.1f}" height="{h:.1f}" class="bar">'
                    f"<title>{day.isoformat()}: {value} {escape(unit)}</title></rect>")
    first, last = series.days[0][0].isoformat(), series.days[-1][0].isoformat()
    label = f"{escape(series.meter)}: {series.total} {escape(unit)} used from {first} to {last}, peak {top} a day"
    return (f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{label}" class="chart" '
            f'xmlns="http://www.w3.org/2000/svg">'
            f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" class="axis"/>'
            f'<text x="{PAD}" y="{PAD - 8}" class="tick">{top} {escape(unit)}</text>'
            f'<text x="{PAD}" y="{HEIGHT - 8}" class="tick">{first}</text>'
            f'<text x="{WIDTH - PAD}" y="{HEIGHT - 8}" class="tick" text-anchor="end">{last}</text>'
            + "".join(bars) + "</svg>")
