"""Usage prices that depend on the event: by property value (dimensional), by time of use, with
meter filters. Pure: the storage layer aggregates usage per (meter, variant) in Postgres.

A usage component may carry `Dimensions`:
- `filters`: only events whose property `key` has one of the listed values count (all filters must
  match; an event without the property never matches a filter);
- `group_by`: one line item per value of that event property (`model=large`, `model=small`); each
  value listed in `prices` is priced by its own price, any other value (or a missing property, shown
  as `model=`) by the component's price;
- `time_of_use`: two line items, `peak` (events whose local hour in the plan's time zone is one of
  `peak_hours`, on one of `peak_days`, ISO 1 = Monday .. 7 = Sunday, none = every day) priced by
  `peak_price`, and `off_peak` (every other event) priced by the component's price.
`group_by` and `time_of_use` exclude each other. Each variant's line is priced like any usage line:
on its own period total, rounded half-up once to the minor unit.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from invoice_service.domain.pricing import Price
from service_runtime.rejections import invalid

PEAK = "peak"
OFF_PEAK = "off_peak"


@dataclass(frozen=True)
class TimeOfUse:
    time_zone: str
    peak_hours: tuple[int, ...]
    peak_days: tuple[int, ...]  # ISO weekdays; () = every day
    peak_price: Price

    def is_peak(self, local_hour: int, iso_weekday: int) -> bool:
        return local_hour in self.peak_hours and (not self.peak_days or iso_weekday in self.peak_days)


@dataclass(frozen=True)
class Dimensions:
    group_by: str = ""
    filters: tuple[tuple[str, tuple[str, ...]], ...] = ()
    prices: tuple[tuple[str, Price], ...] = ()  # group value -> its price (in the plan's order)
    time_of_use: TimeOfUse | None = None

    def filters_json(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.filters}

    def to_json(self) -> dict[str, Any]:
        tou = self.time_of_use
        return {
            "group_by": self.group_by, "filters": self.filters_json(),
            "prices": [[v, p.to_json()] for v, p in self.prices],
            "time_of_use": None if tou is None else {
                "time_zone": tou.time_zone, "peak_hours": list(tou.peak_hours), "peak_days": list(tou.peak_days),
                "peak_price": tou.peak_price.to_json()},
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> Dimensions:
        t = data["time_of_use"]
        tou = None if t is None else TimeOfUse(t["time_zone"], tuple(t["peak_hours"]), tuple(t["peak_days"]),
                                               Price.from_json(t["peak_price"]))
        return Dimensions(data["group_by"], tuple((k, tuple(v)) for k, v in data["filters"].items()),
                          tuple((v, Price.from_json(p)) for v, p in data["prices"]), tou)


def group_variant(group_by: str, value: str) -> str:
    return f"{group_by}={value}"


def usage_key(code: str, variant: str) -> str:
    """The key of a (meter, variant) usage total: the meter code alone when there is no variant."""
    return f"{code}[{variant}]" if variant else code


def variants(dims: Dimensions, default: Price, seen: Collection[str]) -> list[tuple[str, Price]]:
    """The line variants of a component, in a stable order, each with its price: time of use gives
    peak then off-peak; group-by gives the priced values in the plan's order, then the other values
    that occur in `seen` (sorted); neither gives one line without a variant."""
    if dims.time_of_use is not None:
        return [(PEAK, dims.time_of_use.peak_price), (OFF_PEAK, default)]
    if not dims.group_by:
        return [("", default)]
    listed = [(group_variant(dims.group_by, v), p) for v, p in dims.prices]
    names = {name for name, _ in listed}
    return listed + [(name, default) for name in sorted(seen) if name not in names]


def check_time_zone(name: str, field: str) -> str:
    if not name:
        raise invalid(field, "is required (an IANA time zone, e.g. Europe/Berlin)")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise invalid(field, f"unknown time zone {name[:64]!r} (an IANA name, e.g. Europe/Berlin)") from exc
    return name
