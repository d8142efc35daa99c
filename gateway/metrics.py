"""Per-gate Prometheus series on the default registry: leases taken, authorizations by path, local hit
rate and denials by reason. The gate counts in plain integers on its hot path and exports the deltas
at each report interval (a Prometheus call per authorization would cost more than the authorization)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge

if TYPE_CHECKING:
    from gateway.gate import GateStats

LEASES = Counter("credits_gate_leases_total", "Leases (ledger holds) a gate took", ["gate"])
AUTHORIZATIONS = Counter("credits_gate_authorizations_total", "Requests a gate allowed, by how",
                         ["gate", "path"])
DENIALS = Counter("credits_gate_denials_total", "Requests a gate denied, by reason", ["gate", "reason"])
LOCAL_HIT_RATE = Gauge("credits_gate_local_hit_ratio", "Share of a gate's authorizations answered from a lease",
                       ["gate"])
LOST = Counter("credits_gate_lost_usage_minor_total",
               "Usage a gate could not commit because the ledger had given its lease back (TTL)", ["gate"])


def export(gate_id: str, stats: GateStats, exported: GateStats) -> None:
    """Adds what changed since the last export; `exported` is updated to `stats`."""
    for path, now, before in (("local", stats.local, exported.local), ("reserve", stats.reserved, exported.reserved),
                              ("fail_open", stats.fail_open, exported.fail_open)):
        if now > before:
            AUTHORIZATIONS.labels(gate_id, path).inc(now - before)
    if stats.leases > exported.leases:
        LEASES.labels(gate_id).inc(stats.leases - exported.leases)
    if stats.lost > exported.lost:
        LOST.labels(gate_id).inc(stats.lost - exported.lost)
    for reason, count in stats.denials.items():
        if count > exported.denials.get(reason, 0):
            DENIALS.labels(gate_id, reason).inc(count - exported.denials.get(reason, 0))
    if stats.authorized:
        LOCAL_HIT_RATE.labels(gate_id).set(stats.local / stats.authorized)
    exported.local, exported.reserved, exported.fail_open = stats.local, stats.reserved, stats.fail_open
    exported.leases, exported.lost, exported.denials = stats.leases, stats.lost, dict(stats.denials)
