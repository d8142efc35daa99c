"""A short seeded crash campaign on the real multi-process stack (CI): nothing the reconciler or the
bank-style reader can see may be wrong, and every kind of fault was actually applied (counted by its effect)."""

from __future__ import annotations

from harness.chaos.campaign import (
    FAULT_KINDS,
    WAITS_FOR_TRAFFIC,
    CampaignConfig,
    make_plan,
    plan_digest,
    run_campaign,
)

CI_SAGAS, CI_SEED = 30, 1788  # a seed whose 30-saga plan has every fault kind (one of each)


def test_same_seed_same_schedule_other_seed_other_schedule() -> None:
    assert plan_digest(make_plan(30, 11)) == plan_digest(make_plan(30, 11))
    assert plan_digest(make_plan(30, 11)) != plan_digest(make_plan(30, 12))


def test_every_plan_leaves_work_in_doubt_both_ways_on_sagas_of_its_own() -> None:
    for sagas, seed in ((30, 49), (5, 1), (200, 7)):
        plan = make_plan(sagas, seed)
        doubt = [f for batch in plan.faults for f in batch if f.kind.startswith("in_doubt_")]
        assert {f.kind for f in doubt} == {"in_doubt_commit", "in_doubt_abort"}
        batched = {ref for batch in plan.batches for _op, ref in batch}
        targets = [f.target for f in doubt]
        assert len(set(targets)) == len(targets) and not set(targets) & batched
        for ref in targets:
            tenant, _, index = ref.partition("/")
            assert plan.customers[tenant][int(index)][0].startswith("doubt-")


def test_the_ci_seed_plans_every_fault_kind() -> None:
    planned = {f.kind for batch in make_plan(CI_SAGAS, CI_SEED).faults for f in batch}
    assert planned == {kind for kind, _weight in FAULT_KINDS}


async def test_campaign_of_30_sagas_ends_without_violations() -> None:
    result = await run_campaign(CampaignConfig(sagas=CI_SAGAS, seed=CI_SEED))
    print(result.render())
    assert not result.violations, "\n".join(v.line() for v in result.violations)
    assert result.sagas == CI_SAGAS
    # Every planned fault did what it is for (killed a live process, cut connections, lost responses, ...).
    assert set(result.faults_planned) == {kind for kind, _weight in FAULT_KINDS}
    assert result.faults_applied == result.faults_planned, [r.line() for r in result.faults_not_applied]
    assert result.all_faults_applied and result.faults_total == sum(result.faults_planned.values())
    # The background checkers ran (their own failures would be violations).
    assert result.bank_reads > 0 and result.traffic.get("reserve", 0) > 0 and result.traffic.get("commit", 0) > 0
    # The sagas lost in doubt (one each way here, applied above) ended settled as decided, as the databases show
    # it after the resolver: compared with the sagas actually terminated, not with a count that may be 0.
    lost = result.in_doubt_lost
    assert lost.get("commit", 0) >= 1 and lost.get("abort", 0) >= 1, lost
    assert result.in_doubt_settled == lost, (lost, result.in_doubt_settled)
    rec = result.recoveries
    assert rec.get("resolved_commit", 0) >= lost["commit"] and rec.get("resolved_abort", 0) >= lost["abort"], rec


def test_every_proxy_fault_that_waits_for_traffic_has_a_spare_of_its_own() -> None:
    """A delay, drop or lost response in the last batch may find the batch's sagas past the proxied steps: its
    spare customer (outside the batches, one per fault) is finalized then. The spares draw nothing from the
    seed's random stream, so the batches and the fault schedule are those of the plan without them."""
    for sagas, seed in ((CI_SAGAS, CI_SEED), (200, 7), (5, 1)):
        plan = make_plan(sagas, seed)
        waiting = [f for batch in plan.faults for f in batch if f.kind in WAITS_FOR_TRAFFIC]
        assert waiting and all(f.spare for f in waiting)
        spares = [f.spare for f in waiting]
        batched = {ref for batch in plan.batches for _op, ref in batch}
        assert len(set(spares)) == len(spares) and not set(spares) & batched
        for ref in spares:
            tenant, _, index = ref.partition("/")
            assert plan.customers[tenant][int(index)][0].startswith("traffic-")
    assert [[(f.at_s, f.kind, f.target) for f in b] for b in make_plan(CI_SAGAS, CI_SEED).faults][-1] == [
        (2.27, "proxy_delay", "ledger"), (2.34, "proxy_reset", "ledger"), (3.91, "kill_front_door", "")]
