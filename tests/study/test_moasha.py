"""study.moasha: the ranking on hand-made rungs, the scheduler on synthetic result streams with known curves, its
rung records across pickling and across a driver resume (the journal), and one real Tune run with null trials."""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from ray.tune.schedulers import TrialScheduler

from study.moasha import (
    MOASHAScheduler,
    crowding_distances,
    dominated_by,
    nondominated_fronts,
    rung_milestones,
    rung_order,
    survives,
)

NAN, INF = math.nan, math.inf
CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


# --- the ranking ---------------------------------------------------------------------------------------------------


def test_rung_milestones() -> None:
    assert rung_milestones(1, 2, 19) == [1, 2, 4, 8, 16]
    assert rung_milestones(0, 2, 19) == [0, 1, 2, 4, 8, 16]  # step 0 first, then grace period 1's
    assert rung_milestones(0, 3, 2) == [0, 1]
    assert rung_milestones(0, 2, 0) == [0]
    assert rung_milestones(2, 3, 18) == [2, 6, 18]
    assert rung_milestones(1, 2, 1) == [1]
    with pytest.raises(ValueError, match="reduction_factor"):
        rung_milestones(1, 1, 4)


def test_nondominated_fronts_peel_layers() -> None:
    losses = [(1, 5), (2, 2), (5, 1), (3, 3), (4, 4), (6, 6), (2, 2), (NAN, 0)]
    # NaN counts as the worst value: (inf, 0) is not dominated by a point with a larger second loss.
    assert nondominated_fronts(losses).tolist() == [0, 0, 0, 1, 2, 3, 0, 0]


def test_crowding_distance_extremes_infinite_middle_by_gaps() -> None:
    distance = crowding_distances([(0, 4), (1, 2), (2, 1), (4, 0)])
    assert distance[0] == distance[3] == INF
    assert distance[1] == pytest.approx(2 / 4 + 3 / 4)  # gaps (2 - 0) / 4 and (4 - 1) / 4
    assert distance[2] == pytest.approx(3 / 4 + 2 / 4)


@pytest.mark.parametrize(
    ("losses", "index", "eta", "expected"),
    [
        ([(1, 1)], 0, 2, True),  # the first at a rung continues
        ([(-0.9, 100), (-0.8, 50)], 1, 2, True),  # both on the front, both extremes: a tie goes to the newcomer
        ([(-0.9, 100), (-0.8, 50), (-0.7, 120)], 2, 2, False),  # dominated by two of three: outside the top 2
        ([(-0.9, 100), (-0.7, 120)], 1, 2, False),  # dominated by the one other: outside the top 1
        ([(-0.9, 100), (-0.7, 120)], 1, 1.5, True),  # top ceil(2 / 1.5) = 2: both continue
        # a front of three, then the middle of it arrives: the two extremes rank ahead, ceil(4 / 2) = 2
        ([(-0.9, 100), (-0.6, 20), (-0.5, 150), (-0.8, 50)], 3, 2, False),
        ([(-0.9, 100), (-0.6, 20), (-0.5, 150), (-0.8, 50)], 3, 4, False),
        ([(-0.9, 100), (-0.6, 20), (-0.5, 150), (-0.8, 50)], 3, 1.3, True),
    ],
)
def test_survives(losses, index, eta, expected) -> None:
    assert survives(losses, index, eta) is expected


def test_rung_order_ranks_fronts_then_crowding() -> None:
    fronts, crowding = rung_order([(0, 4), (1, 2), (2, 1), (4, 0), (3, 3)])
    assert fronts.tolist() == [0, 0, 0, 0, 1]
    assert crowding[0] == crowding[3] == INF and np.isfinite(crowding[1])


# --- synthetic result streams with known curves --------------------------------------------------------------------


def curve(accuracy: float, params: float, steps: int) -> list[dict]:
    """A trial's results over pruning steps 0..steps: accuracy falls by 0.02 and parameters by 30% per step.

    The same monotone change for every trial, so which trial dominates which is the same at every step."""
    return [
        {"step": s, "val_accuracy": accuracy - 0.02 * s, "learned_params": params * 0.7**s, "final_step": steps}
        for s in range(steps + 1)
    ]


# Four trials on the front, each more accurate and more expensive than the ones before it (each arrives as an
# extreme of the front: nobody ranks strictly ahead of it), then four dominated ones.
FRONT = {"f1": (0.60, 20), "f2": (0.70, 40), "f3": (0.80, 80), "f4": (0.90, 160)}
DOMINATED = {"d1": (0.65, 50), "d2": (0.55, 30), "d3": (0.85, 200), "d4": (0.50, 170)}


def run_stream(scheduler: MOASHAScheduler, trials: dict[str, tuple[float, float]], steps: int = 8) -> dict[str, int]:
    """Feed every trial's results in arrival order (one trial after the other, as with one worker); return the
    step at which each was stopped, or -1."""
    stopped = {}
    for trial_id, (accuracy, params) in trials.items():
        stopped[trial_id] = -1
        for result in curve(accuracy, params, steps):
            if scheduler.decide(trial_id, result) == STOP:
                stopped[trial_id] = result["step"]
                break
    return stopped


def make(journal: Path | None = None, eta: float = 2, grace_period: float = 0) -> MOASHAScheduler:
    return MOASHAScheduler(
        metrics=["val_accuracy", "learned_params"],
        modes=["max", "min"],
        max_t=8,
        grace_period=grace_period,
        reduction_factor=eta,
        final_attr="final_step",
        journal=journal,
    )


def test_stops_exactly_the_dominated_trials() -> None:
    stopped = run_stream(make(), {**FRONT, **DOMINATED})
    assert {t for t, step in stopped.items() if step >= 0} == set(DOMINATED)
    assert all(stopped[t] == 0 for t in DOMINATED)  # at the first rung: step 0, before any pruning
    stopped = run_stream(make(grace_period=1), {**FRONT, **DOMINATED})
    assert {t for t, step in stopped.items() if step >= 0} == set(DOMINATED)
    assert all(stopped[t] == 1 for t in DOMINATED)  # grace period 1: a whole step later


def test_accuracy_alone_would_stop_the_cheap_end() -> None:
    """What ASHA on val_accuracy does to the same stream: the cheapest front member is stopped; MOASHA keeps it."""
    cheap_first = {"f4": FRONT["f4"], "f3": FRONT["f3"], "f1": FRONT["f1"]}
    assert run_stream(make(), cheap_first)["f1"] == -1
    accuracy_only = MOASHAScheduler(metrics=["val_accuracy"], modes=["max"], max_t=8, final_attr="final_step")
    assert run_stream(accuracy_only, cheap_first)["f1"] == 0


def test_a_trial_at_its_final_step_is_never_stopped() -> None:
    scheduler = make(grace_period=1)
    run_stream(scheduler, FRONT)
    assert run_stream(scheduler, {"short": (0.1, 1000)}, steps=1) == {"short": -1}  # dominated, but done
    assert "short" in scheduler.rungs[1.0]  # and recorded
    scheduler = make()
    run_stream(scheduler, FRONT)
    assert run_stream(scheduler, {"unpruned": (0.1, 1000)}, steps=0) == {"unpruned": -1}  # its step 0 is its end
    assert "unpruned" in scheduler.rungs[0.0]
    assert run_stream(scheduler, {"one_step": (0.1, 1000)}, steps=1) == {"one_step": 0}  # not at its end yet


def test_results_without_the_metrics_or_before_the_grace_period_continue() -> None:
    scheduler = make(grace_period=1)
    assert scheduler.decide("a", {"step": 3}) == CONTINUE
    assert scheduler.decide("a", {"step": 0, "val_accuracy": 0.1, "learned_params": 9}) == CONTINUE
    assert all(not recorded for recorded in scheduler.rungs.values())


def test_rung_records_survive_pickling() -> None:
    trials = {**FRONT, **DOMINATED}
    first, second = dict(list(trials.items())[:5]), dict(list(trials.items())[5:])
    whole = make()
    expected = run_stream(whole, trials)
    scheduler = make()
    run_stream(scheduler, first)
    restored = pickle.loads(pickle.dumps(scheduler))
    assert restored.rungs == scheduler.rungs
    assert run_stream(restored, second) == {t: expected[t] for t in second}
    assert restored.rungs == whole.rungs


def test_rung_records_survive_a_driver_resume(tmp_path: Path) -> None:
    """Tune brings the scheduler back as pickled when the study began (empty rungs): the journal refills them."""
    journal = tmp_path / "moasha_rungs.jsonl"
    trials = {**FRONT, **DOMINATED}
    first, second = dict(list(trials.items())[:5]), dict(list(trials.items())[5:])
    expected = run_stream(make(), trials)
    as_pickled_at_start = pickle.dumps(make(journal))
    run_stream(pickle.loads(as_pickled_at_start), first)  # the first driver, then killed
    resumed = pickle.loads(as_pickled_at_start)
    assert run_stream(resumed, second) == {t: expected[t] for t in second}
    assert set(resumed.rungs[0.0]) == set(trials) and set(resumed.rungs[1.0]) == set(FRONT)
    # a trial that continues after the resume repeats no judgement at a rung it was already recorded at
    assert resumed.decide("f1", curve(*FRONT["f1"], 8)[1]) == CONTINUE
    assert set(resumed.finals) == set(FRONT)  # the trials that reached their final step, before or after
    assert len(journal.read_text().splitlines()) == sum(len(r) for r in resumed.rungs.values()) + len(resumed.finals)


def test_save_and_restore(tmp_path: Path) -> None:
    scheduler = make()
    run_stream(scheduler, FRONT)
    scheduler.save(str(tmp_path / "scheduler.pkl"))
    other = make()
    other.restore(str(tmp_path / "scheduler.pkl"))
    assert other.rungs == scheduler.rungs and other.num_stopped == scheduler.num_stopped


def test_on_trial_result_and_complete_use_the_trial_id() -> None:
    scheduler = make()
    trial = SimpleNamespace(trial_id="t1")
    for result in curve(0.5, 10, 2)[:2]:
        assert scheduler.on_trial_result(None, trial, result) == CONTINUE
    scheduler.on_trial_complete(None, trial, curve(0.5, 10, 2)[2])
    assert all(set(scheduler.rungs[rung]) == {"t1"} for rung in (0.0, 1.0, 2.0))


def test_the_study_schedulers_first_rungs(tmp_path: Path) -> None:
    """moasha judges at step 0 (trained, unpruned: every trial at the same density, the least compute spent), then 1,
    2, 4; Ray's asha cannot start at 0 and keeps step 1."""
    from study.schedulers import MOASHA_RULE, make_scheduler

    objectives = {"metrics": ["val_accuracy", "learned_params"], "modes": ["max", "min"], "study_dir": tmp_path}
    assert make_scheduler("moasha", max_t=4, **objectives).milestones == [0, 1, 2, 4]
    assert make_scheduler("moasha", max_t=4, grace_period=1, **objectives).milestones == [1, 2, 4]
    moasha = make_scheduler("moasha", max_t=4, **objectives)
    assert (moasha.rule, moasha.rung_metrics) == (MOASHA_RULE, ["val_accuracy", "projected_learned_params"])
    halving = make_scheduler("moasha-halving", max_t=4, **objectives)  # the paper's rule, by name
    assert (halving.rule, halving.milestones, halving.rung_metrics) == ("halving", [0, 1, 2, 4], moasha.rung_metrics)
    assert make_scheduler("asha", max_t=4, **objectives)._brackets[0]._rungs[-1][0] == 1  # Ray's lowest rung
    with pytest.raises(ValueError, match="max_t=0 < 1"):
        make_scheduler("moasha", max_t=0, **objectives)


def test_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="one mode per metric"):
        MOASHAScheduler(metrics=["a", "b"], modes=["max"], max_t=4)
    with pytest.raises(ValueError, match="one rung metric per metric"):
        MOASHAScheduler(metrics=["a", "b"], modes=["max", "min"], max_t=4, rung_metrics=["a"])
    with pytest.raises(ValueError, match="rule='bound'; allowed: halving, dominated"):
        MOASHAScheduler(metrics=["a"], modes=["max"], max_t=4, rule="bound")
    with pytest.raises(ValueError, match="allowed: max, min"):
        MOASHAScheduler(metrics=["a"], modes=["maximize"], max_t=4)


# --- rung metrics and the dominated rule ---------------------------------------------------------------------------


def test_dominated_by() -> None:
    finals = [[-0.9, 100.0], [-0.7, 10.0]]  # losses: -accuracy, params
    assert dominated_by(finals, [-0.85, 150.0])  # beaten by the first in both
    assert dominated_by(finals, [-0.7, 10.0])  # equal to the second: it could add nothing
    assert not dominated_by(finals, [-0.95, 150.0]) and not dominated_by(finals, [-0.8, 50.0])
    assert dominated_by(finals, [NAN, 500.0]) and not dominated_by(finals, [NAN, 5.0])  # NaN: the worst value
    assert not dominated_by([], [-0.1, 1e9])


def results(accuracy: float, params: float, *, projected: float | None = None, final_step: int = 2) -> dict:
    """A result at step 0 of a trial ending at ``final_step``, optionally with projected learned params."""
    result = {"step": 0, "val_accuracy": accuracy, "learned_params": params, "final_step": final_step}
    return result if projected is None else {**result, "projected_learned_params": projected}


def make_rule(rule: str, journal: Path | None = None) -> MOASHAScheduler:
    return MOASHAScheduler(
        metrics=["val_accuracy", "learned_params"],
        modes=["max", "min"],
        max_t=8,
        final_attr="final_step",
        rung_metrics=["val_accuracy", "projected_learned_params"],
        rule=rule,
        journal=journal,
    )


def test_dominated_rule_stops_only_what_a_finished_trial_beats() -> None:
    """A rung vector is (accuracy now, learned params projected to the end); it stops when a finished trial's final
    point is no worse in both. Trials at step 0 of 2 with no finished trial yet all continue; so does one dominated
    by a trial still running."""
    scheduler = make_rule("dominated")
    assert scheduler.decide("early", results(0.1, 1e6, projected=1e6)) == CONTINUE  # nothing finished yet
    assert scheduler.decide("running", results(0.95, 5, projected=5)) == CONTINUE
    for trial_id, (accuracy, params) in {"a": (0.9, 100), "b": (0.7, 10)}.items():  # two finished trials
        assert scheduler.decide(trial_id, results(accuracy, params, projected=params, final_step=0)) == CONTINUE
    assert scheduler.finals == {"a": [-0.9, 100], "b": [-0.7, 10]}
    expected = {
        "x": ((0.85, 150, 150), STOP),  # beaten by a
        "tie": ((0.7, 10, 10), STOP),  # equal to b
        "y": ((0.95, 150, 150), CONTINUE),  # more accurate than either
        "z": ((0.8, 50, 50), CONTINUE),  # between them
        "cheap_at_the_end": ((0.75, 1000, 5), CONTINUE),  # costly now, cheaper than b where it ends
        "unprojected": ((0.75, 1000, None), STOP),  # without a projection, its cost now
    }
    for trial_id, ((accuracy, params, projected), decision) in expected.items():
        assert scheduler.decide(trial_id, results(accuracy, params, projected=projected)) == decision, trial_id
    assert scheduler.rungs[0.0]["cheap_at_the_end"] == [-0.75, 5]
    assert scheduler.num_stopped == 3


def test_halving_ranks_on_the_projected_cost() -> None:
    """Two trials equal at step 0 (same accuracy, same rank: same learned params) tie under halving, so both go on;
    projected to where they end, the one headed for more parameters is dominated and stops."""
    plain = MOASHAScheduler(metrics=["val_accuracy", "learned_params"], modes=["max", "min"], max_t=8)
    projected = make_rule("halving")
    for scheduler, decisions in ((plain, [CONTINUE, CONTINUE]), (projected, [CONTINUE, STOP])):
        got = [scheduler.decide(t, results(0.9, 100, projected=p)) for t, p in (("cheap", 20), ("dear", 50))]
        assert got == decisions


def test_finished_trials_survive_a_driver_resume(tmp_path: Path) -> None:
    journal = tmp_path / "moasha_rungs.jsonl"
    as_pickled_at_start = pickle.dumps(make_rule("dominated", journal))
    first = pickle.loads(as_pickled_at_start)
    assert first.decide("a", results(0.9, 100, projected=100, final_step=0)) == CONTINUE
    assert first.decide("x", results(0.8, 150, projected=150)) == STOP
    resumed = pickle.loads(as_pickled_at_start)  # the first driver killed; Tune restores the scheduler as at start
    assert resumed.decide("x2", results(0.85, 120, projected=120)) == STOP
    assert resumed.finals == {"a": [-0.9, 100]} and resumed.num_stopped == 2


# --- one real Tune run ---------------------------------------------------------------------------------------------


def null_trial(config: dict) -> None:
    from ray import tune

    _, accuracy, params = config["trial"]
    for result in curve(accuracy, params, 4):
        tune.report(result)


def test_tune_run_stops_the_dominated_trials(ray_cluster, tmp_path: Path) -> None:
    from ray import tune

    trials = {**FRONT, **DOMINATED}
    scheduler = MOASHAScheduler(
        metrics=["val_accuracy", "learned_params"],
        modes=["max", "min"],
        max_t=4,
        final_attr="final_step",
        journal=tmp_path / "rungs.jsonl",
    )
    tuner = tune.Tuner(
        tune.with_resources(null_trial, {"cpu": 1}),
        # one trial at a time, in this order: the arrival order the stream test uses
        param_space={"trial": tune.grid_search([(name, *curve) for name, curve in trials.items()])},
        tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=1),
        run_config=tune.RunConfig(name="moasha", storage_path=str(tmp_path), verbose=0),
    )
    last_step = {result.config["trial"][0]: result.metrics["step"] for result in tuner.fit()}
    assert {name for name, step in last_step.items() if step < 4} == set(DOMINATED)
    assert len((tmp_path / "rungs.jsonl").read_text().splitlines()) > len(trials)
