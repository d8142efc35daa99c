"""A short seeded top-up campaign (CI): ledger kills and payment faults, then money against credit."""

from __future__ import annotations

from harness.chaos import topups


async def test_topups_under_kills_and_payment_faults_stay_exact() -> None:
    result = await topups.run(topups=8, seed=7)
    assert result.violations == [], result.render()
    assert result.crossings == 8 and result.unsettled == 0
    assert result.topups_granted + result.topups_declined == 8
    assert result.faults_total > 0, result.render()
