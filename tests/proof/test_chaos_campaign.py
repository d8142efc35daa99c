"""A short seeded crash campaign on the real multi-process stack (CI): nothing the reconciler or the
bank-style reader can see may be wrong, and every kind of fault was actually injected."""

from __future__ import annotations

from coordinator.chaos.campaign import CampaignConfig, make_plan, plan_digest, run_campaign


def test_same_seed_same_schedule_other_seed_other_schedule() -> None:
    assert plan_digest(make_plan(30, 11)) == plan_digest(make_plan(30, 11))
    assert plan_digest(make_plan(30, 11)) != plan_digest(make_plan(30, 12))


async def test_campaign_of_30_sagas_ends_without_violations() -> None:
    result = await run_campaign(CampaignConfig(sagas=30, seed=49))
    print(result.render())
    assert not result.violations, "\n".join(v.line() for v in result.violations)
    assert result.sagas == 30
    faults = result.faults_injected
    assert sum(faults.values()) > 0
    assert any(k.startswith("kill_") for k in faults), faults
    assert any(k.startswith(("proxy_", "lose_response")) for k in faults), faults
