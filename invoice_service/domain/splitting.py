"""Cutting a line item into pieces at instants, and apportioning an amount so pieces sum exactly.

Apportioning uses the largest-remainder method on integer minor units: each piece first gets
floor(total * w / W); the minor units left over go one each to the pieces with the largest
remainders (ties: the earlier piece). The pieces therefore always sum to the line item exactly.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime, timedelta

from service_runtime.rejections import invalid

_MICROSECOND = timedelta(microseconds=1)


def normalize_instants(instants: Sequence[datetime], start: datetime, end: datetime,
                       field: str = "split_at") -> list[datetime]:
    """Sorted, deduplicated instants; each must lie strictly inside (start, end)."""
    for i, instant in enumerate(instants):
        if not start < instant < end:
            raise invalid(f"{field}[{i}]", f"{instant.isoformat()} is not strictly inside the period "
                                           f"[{start.isoformat()}, {end.isoformat()})")
    if len(instants) > 1000:
        raise invalid(field, "at most 1000 instants")
    return sorted(set(instants))


def intervals(start: datetime, end: datetime, instants: Sequence[datetime]) -> list[tuple[datetime, datetime]]:
    """[start, t1), [t1, t2), ..., [tk, end) for normalized instants t1 < ... < tk."""
    edges = [start, *instants, end]
    return list(itertools.pairwise(edges))


def duration_us(interval: tuple[datetime, datetime]) -> int:
    return (interval[1] - interval[0]) // _MICROSECOND


def apportion(total: int, weights: Sequence[int]) -> list[int]:
    """Splits `total` minor units in proportion to non-negative integer `weights`; sums exactly.

    All-zero weights are a caller bug (there is nothing to be proportional to).
    """
    assert total >= 0 and weights and all(w >= 0 for w in weights)
    weight_sum = sum(weights)
    assert weight_sum > 0, "apportion needs a positive weight"
    shares = [total * w // weight_sum for w in weights]
    remainders = [total * w % weight_sum for w in weights]
    left = total - sum(shares)
    order = sorted(range(len(weights)), key=lambda i: (-remainders[i], i))
    for i in order[:left]:
        shares[i] += 1
    return shares
