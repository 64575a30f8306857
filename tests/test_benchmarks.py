"""benchmarks/: the scripts' pure helpers against hand-computed values, and every script's command line.

No timing is asserted: the timings depend on the machine; only what is computed from them is checked.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import statistics
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = (
    "adapter_step", "adapter_account", "pruned_inference", "criteria_cost", "claim", "convergence", "gpu", "shared_gpu",
    "harness_scale", "search_quality",
)  # fmt: skip


def load(name: str) -> ModuleType:
    """A script as a module (benchmarks/ is no package; scripts run as ``python benchmarks/NAME.py``)."""
    module_name = f"_benchmark_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


# --- claim.py: the Table-1 aggregation and the verdict -------------------------------------------------------------


def run_rows(learner: str, criterion: str, seed: int, accuracies: tuple[float, float], learned: tuple[int, ...]):
    """One run's rows: step 0 (unpruned), then target densities 0.6, 0.3, 0.1 (the last two read by the table)."""
    rows = [
        {
            "learner": learner,
            "criterion": criterion,
            "seed": seed,
            "step": 0,
            "target_density": 1.0,
            "test_accuracy": 0.5 + seed / 100,
            "learned_params": learned[0],
            "flops": 40e6,
        }
    ]
    for step, (target, accuracy, count) in enumerate(
        zip((0.6, 0.3, 0.1), (0.0, *accuracies), learned[1:], strict=True), 1
    ):
        rows.append(
            {
                "learner": learner,
                "criterion": criterion,
                "seed": seed,
                "step": step,
                "target_density": target,
                "test_accuracy": accuracy,
                "learned_params": count,
                "flops": target * 40e6 + seed * 1e6,
            }
        )
    return rows


@pytest.fixture(scope="module")
def claim_runs() -> list[dict]:
    # criterion "weight", two seeds; accuracies at densities (0.3, 0.1) in 0..1, learned params at (1.0, 0.6, 0.3, 0.1).
    rows = []
    for seed, (fp, r32, r8) in enumerate(
        [((0.90, 0.80), (0.89, 0.86), (0.88, 0.84)), ((0.92, 0.70), (0.91, 0.82), (0.90, 0.80))]
    ):
        rows += run_rows("finetune", "weight", seed, fp, (11_000_000, 4_000_000, 1_000_000, 100_000))
        rows += run_rows("splora_r32", "weight", seed, r32, (290_000, 150_000, 90_000, 30_000 + seed * 2_000))
        rows += run_rows("splora_r8", "weight", seed, r8, (81_000, 50_000, 25_000, 9_000))
    # The same runs for "lrp": the unpruned rows repeat (same learner and seed) and must be counted once.
    rows += [{**row, "criterion": "lrp"} for row in rows]
    return rows


def test_claim_table_means_stds_and_order(claim_runs: list[dict]) -> None:
    claim = load("claim")
    table = claim.claim_table(claim_runs)
    keys = [(row["criterion"], row["learner"], row["density"]) for row in table]
    assert keys[:3] == [("none", "finetune", 1.0), ("none", "lora_r32", 1.0), ("none", "lora_r8", 1.0)]
    assert keys[3:9] == [
        ("weight", "finetune", 0.3),
        ("weight", "finetune", 0.1),
        ("weight", "splora_r32", 0.3),
        ("weight", "splora_r32", 0.1),
        ("weight", "splora_r8", 0.3),
        ("weight", "splora_r8", 0.1),
    ]
    assert [k[0] for k in keys[9:]] == ["lrp"] * 6
    cells = {key: row for key, row in zip(keys, table, strict=True)}
    fp10 = cells["weight", "finetune", 0.1]
    assert fp10["n"] == 2
    assert fp10["digits"] == pytest.approx(75.0)
    assert fp10["digits_std"] == pytest.approx(statistics.stdev([80.0, 70.0]))  # sample std: 7.07
    assert fp10["learned_params_k"] == pytest.approx(100.0) and fp10["learned_params_k_std"] == pytest.approx(0.0)
    assert fp10["flops_m"] == pytest.approx(4.5) and fp10["flops_m_std"] == pytest.approx(math.sqrt(0.5))
    r32_10 = cells["weight", "splora_r32", 0.1]
    assert r32_10["learned_params_k"] == pytest.approx(31.0)
    assert r32_10["learned_params_k_std"] == pytest.approx(statistics.stdev([30.0, 32.0]))
    unpruned = cells["none", "finetune", 1.0]
    assert unpruned["n"] == 2  # one per seed, although two criteria ran
    assert unpruned["digits"] == pytest.approx(50.5)


def test_claim_numbers_headline_and_verdict(claim_runs: list[dict]) -> None:
    claim = load("claim")
    numbers = claim.claim_numbers(claim.claim_table(claim_runs))
    assert set(numbers["per_criterion"]) == {"weight", "lrp"}
    weight = numbers["per_criterion"]["weight"]
    assert weight["high_minus_fp_at_0.1"] == pytest.approx(84.0 - 75.0)
    assert weight["low_minus_fp_at_0.1"] == pytest.approx(82.0 - 75.0)
    assert weight["learned_ratio_high_over_fp_at_0.1"] == pytest.approx(31.0 / 100.0)
    assert weight["low_minus_fp_at_0.3"] == pytest.approx(89.0 - 91.0)
    assert weight["learned_ratio_fp_over_low_at_0.3"] == pytest.approx(1000.0 / 25.0)
    values = claim.headline(numbers)
    assert list(values) == [
        "splora_minus_fp_at_0.1",
        "r8_minus_fp_at_0.3",
        "learned_ratio_fp_over_r8_at_0.3",
        "learned_ratio_r32_over_fp_at_0.1",
    ]
    assert values["splora_minus_fp_at_0.1"] == pytest.approx(9.0)
    assert values["r8_minus_fp_at_0.3"] == pytest.approx(-2.0)
    text = claim.verdict(numbers)
    assert "SPLoRA r32 beats fine-pruning: +9.00 points" in text
    assert "First claim holds" in text
    assert "-2.00 points" in text and "40.0x fewer" in text and "Second claim holds" in text


def test_claim_verdict_says_when_a_claim_fails(claim_runs: list[dict]) -> None:
    claim = load("claim")
    worse = [
        {**row, "test_accuracy": 0.5} if row["learner"] == "splora_r32" and row["step"] == 3 else row
        for row in claim_runs
    ]
    text = claim.verdict(claim.claim_numbers(claim.claim_table(worse)))
    assert "does not beat" in text and "First claim does not hold" in text


def test_claim_numbers_need_both_learners_and_densities(claim_runs: list[dict]) -> None:
    claim = load("claim")
    only_fp = [row for row in claim_runs if row["learner"] == "finetune"]
    with pytest.raises(ValueError, match="no criterion"):
        claim.claim_numbers(claim.claim_table(only_fp))


def test_claim_csv_round_trip(tmp_path: Path, claim_runs: list[dict]) -> None:
    claim = load("claim")
    runs_path = tmp_path / "claim_runs.csv"
    claim.write_runs([{**row, "wall_s": 1.0} for row in claim_runs], runs_path)
    table = claim.claim_table(claim.read_runs(runs_path))  # values come back as strings
    assert table == claim.claim_table(claim_runs)
    single = claim.claim_table([row for row in claim_runs if row["seed"] == 0])
    table_path = tmp_path / "claim.csv"
    claim.write_table(single, table_path)
    with table_path.open() as handle:
        written = list(csv.DictReader(handle))
    assert list(written[0]) == list(claim.TABLE_COLUMNS)
    fp10 = next(r for r in written if (r["criterion"], r["learner"], r["density"]) == ("weight", "finetune", "0.10"))
    assert (fp10["digits"], fp10["digits_std"], fp10["learned_params_k"], fp10["n"]) == ("80.00", "", "100.0", "1")


def test_claim_main_reaggregates_runs(tmp_path: Path, claim_runs: list[dict], capsys: pytest.CaptureFixture) -> None:
    claim = load("claim")
    runs_path = tmp_path / "claim_runs.csv"
    claim.write_runs(claim_runs, runs_path)
    assert claim.main(["--from-runs", str(runs_path), "--out", str(tmp_path / "table.csv")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert claim.parse_last_line(last) == pytest.approx(
        {
            "splora_minus_fp_at_0.1": 9.0,
            "r8_minus_fp_at_0.3": -2.0,
            "learned_ratio_fp_over_r8_at_0.3": 40.0,
            "learned_ratio_r32_over_fp_at_0.1": 0.31,
        }
    )
    assert (tmp_path / "table.csv").is_file()


def test_mean_std() -> None:
    claim = load("claim")
    assert claim.mean_std([2.0, 4.0, 6.0]) == (4.0, 2.0)
    mean, std = claim.mean_std([3.0])
    assert mean == 3.0 and math.isnan(std)
    with pytest.raises(ValueError):
        claim.mean_std([])


# --- convergence.py: step-0 accuracy at the default and the doubled epochs -------------------------------------------


def test_convergence_summary_pairs_seeds_and_measures_noise() -> None:
    convergence = load("convergence")
    rows = [
        {"learner": "splora", "seed": 0, "epochs": 6, "val_accuracy": 0.95, "test_accuracy": 0.90},
        {"learner": "splora", "seed": 1, "epochs": 6, "val_accuracy": 0.97, "test_accuracy": 0.94},
        {"learner": "splora", "seed": 0, "epochs": 12, "val_accuracy": 0.96, "test_accuracy": 0.90},
        {"learner": "splora", "seed": 1, "epochs": 12, "val_accuracy": 1.00, "test_accuracy": 0.96},
        {"learner": "splora", "seed": 2, "epochs": 12, "val_accuracy": 0.10, "test_accuracy": 0.10},  # unpaired
        {"learner": "finetune", "seed": 0, "epochs": 6, "val_accuracy": 0.99, "test_accuracy": 0.98},
    ]
    summary = convergence.summarise(rows, epochs=6, longer=12, n_val=100, n_test=50)
    splora = summary["splora"]
    assert splora["val_min"] == 0.95 and splora["val_mean"] == pytest.approx(0.96)
    assert splora["val_std"] == pytest.approx(100 * statistics.stdev([0.95, 0.97]))
    assert splora["test_mean"] == pytest.approx(0.92)
    # sqrt(0.96 * 0.04 / 100) = 0.019596 -> 1.9596 points; sqrt(0.92 * 0.08 / 50) = 0.03837 -> 3.837.
    assert splora["val_binomial_std"] == pytest.approx(1.9596, abs=1e-4)
    assert splora["test_binomial_std"] == pytest.approx(3.8367, abs=1e-4)
    # Paired gains, seeds 0 and 1 only: val +1 and +3 points, test 0 and +2.
    assert splora["val_gain"] == pytest.approx(2.0) and splora["val_gain_se"] == pytest.approx(1.0)
    assert splora["test_gain"] == pytest.approx(1.0) and splora["test_gain_se"] == pytest.approx(1.0)
    finetune = summary["finetune"]  # one seed, no longer run: no std, no gain
    assert finetune["val_min"] == 0.99 and math.isnan(finetune["val_std"]) and math.isnan(finetune["val_gain"])
    line = convergence.last_line(convergence.headline(summary))
    assert line == (
        "step0_val_min_splora=0.950 step0_val_min_finetune=0.990 doubling_gain_splora=2.000 doubling_gain_finetune=nan"
    )
    with pytest.raises(ValueError, match="no finetune run at the default 6 epochs"):
        convergence.summarise([{**rows[-1], "epochs": 12}], epochs=6, longer=12, n_val=100, n_test=50)
    with pytest.raises(ValueError, match="n >= 1"):
        convergence.binomial_std(0.5, 0)


# --- ratios and last lines --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pruned_inference", "claim"])
def test_last_line_round_trips(name: str) -> None:
    module = load(name)
    values = {"time_over_flops_0.5": 1.0449, "b": -2.5, "c": 31.625}
    line = module.last_line(values)
    assert line == "time_over_flops_0.5=1.04 b=-2.50 c=31.62"
    assert module.parse_last_line(line) == {"time_over_flops_0.5": 1.04, "b": -2.5, "c": 31.62}
    with pytest.raises(ValueError):
        module.parse_last_line("a=1 b")


def test_pruned_inference_ratios() -> None:
    pruned = load("pruned_inference")
    times = {"unpruned": [2.0, 4.0, 3.0], "finetune@0.5": [1.0, 2.0, 9.0], "splora@0.5": [1.8, 1.8, 1.8]}
    ratios = pruned.median_ratios(times, "unpruned")
    assert ratios == pytest.approx({"unpruned": 1.0, "finetune@0.5": 2.0 / 3.0, "splora@0.5": 0.6})
    flop_counts = {"unpruned": 1000, "finetune@0.5": 500, "splora@0.5": 400, "finetune@0.1": 100}
    ratios["finetune@0.1"] = 0.13
    quotients = pruned.time_over_flops(ratios, flop_counts)
    # The worst learner per density: splora 0.6 / 0.4 = 1.5 beats finetune (2/3) / 0.5 = 1.33.
    assert quotients == pytest.approx({"time_over_flops_0.5": 1.5, "time_over_flops_0.1": 1.3})


def test_round_robin_interleaves_and_skips_warmup() -> None:
    order: list[str] = []
    for name in ("pruned_inference", "criteria_cost"):
        order.clear()
        times = load(name).round_robin({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 3, 2)
        assert order == ["a", "b"] * 5
        assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}


def test_criteria_cost_ratios() -> None:
    cost = load("criteria_cost")
    times = {"train": [1.0, 3.0, 2.0], "weight": [0.1, 0.1, 0.1], "lrp": [5.0, 4.0, 7.0]}
    assert cost.cost_ratios(times) == pytest.approx({"weight": 0.05, "lrp": 2.5})


def test_gpu_throughput_helpers() -> None:
    gpu = load("gpu")
    assert gpu.throughput(640, [2.0, 1.0, 4.0]) == pytest.approx(320.0)
    # 45,000 images x 410 epochs at 15,375 images/s = 20 min, plus 20 eval passes of 15,000 at 3x the rate.
    assert gpu.paper_trial_minutes(15_375.0) == pytest.approx(20.0 + 20 * 15_000 / (3 * 15_375.0) / 60)
    rates = {
        "end_to_end_gpu_resident_splora": 900.0,
        "model_only_splora": 1000.0,
        "end_to_end_gpu_resident_finetune": 600.0,
    }
    figures = gpu.summary(rates)
    assert figures["end_to_end_over_model_only"] == pytest.approx(0.9)
    assert figures["splora_over_finetune"] == pytest.approx(1.5)
    assert "paper_trial_minutes" not in figures  # no pruned density timed: only the unpruned-rate figure
    assert figures["paper_trial_minutes_unpruned"] == pytest.approx(gpu.paper_trial_minutes(900.0))
    assert gpu.last_line(figures).startswith("end_to_end_over_model_only=0.90 splora_over_finetune=1.50 ")


def test_gpu_paper_trial_integrates_the_pruned_rates() -> None:
    gpu = load("gpu")
    schedule = gpu.paper_schedule()
    assert len(schedule) == 19 and schedule[0] == pytest.approx(0.95) and schedule[-1] == 0.05
    assert schedule == pytest.approx([1 - 0.05 * k for k in range(1, 20)])
    # 750 images/s unpruned: a 45,000-image epoch is 1 min, an eval pass (15,000 at 3x) 1/9 min. Every pruned step
    # at 1,500 (measured at 0.95 and 0.05, so constant between): 0.5 min an epoch, 1/18 min an eval pass.
    # 30 x 1 + 19 x 20 x 0.5 = 220 min of training, 1/9 + 19/18 = 7/6 min of evaluation.
    assert gpu.paper_trial_minutes_pruned({1.0: 750.0, 0.95: 1500.0, 0.05: 1500.0}) == pytest.approx(220 + 7 / 6)
    # Seconds per image linear in density from 1/750 at 1 to 1/1500 at 0.05: over the 19 steps (densities 1 - 0.05k)
    # they sum to 19/750 - (1/750 - 1/1500) x (0.05 x 190 / 0.95) = 14/750 s. Training: 30 min + 45,000 x 20 x
    # 14/750 s = 280 min; evaluation: 5,000 x 15/750 s = 100 s.
    linear = {1.0: 750.0, 0.05: 1500.0}
    assert gpu.seconds_per_image(0.525, linear) == pytest.approx((1 / 750 + 1 / 1500) / 2)
    assert gpu.paper_trial_minutes_pruned(linear) == pytest.approx(30 + 280 + 100 / 60)
    # Extra measured points on the same line change nothing; a measured point is returned as measured.
    on_the_line = {**linear, 0.5: 1 / gpu.seconds_per_image(0.5, linear)}
    assert gpu.paper_trial_minutes_pruned(on_the_line) == pytest.approx(30 + 280 + 100 / 60)
    assert gpu.seconds_per_image(0.5, {1.0: 750.0, 0.5: 1200.0, 0.05: 1500.0}) == pytest.approx(1 / 1200)
    # The unpruned-rate figure is the same integral at one rate: an upper bound where pruned networks run faster.
    assert gpu.paper_trial_minutes(750.0) == pytest.approx(410 + 20 / 9)
    assert gpu.paper_trial_minutes_pruned(linear) < gpu.paper_trial_minutes(750.0)
    with pytest.raises(ValueError, match="outside"):
        gpu.paper_trial_minutes_pruned({1.0: 750.0, 0.25: 900.0})  # nothing measured down to 0.05
    # The summary: pruned model-only rates scaled by the unpruned end-to-end / model-only ratio (0.9 here).
    rates = {
        "end_to_end_gpu_resident_splora_graphed": 675.0,
        "model_only_splora_graphed": 750.0,
        "model_only_splora_graphed@0.05": 1500.0 / 0.9,
        "end_to_end_gpu_resident_finetune_graphed": 600.0,
        "model_only_splora@0.05": 1.0,  # the eager path's: not read for the graphed figures
    }
    assert gpu.pruned_rates(rates, "_graphed") == pytest.approx({1.0: 675.0, 0.05: 1500.0})
    figures = gpu.summary(rates, "_graphed")
    assert list(figures) == [
        "end_to_end_over_model_only", "splora_over_finetune", "paper_trial_minutes", "paper_trial_minutes_unpruned"
    ]  # fmt: skip
    assert figures["paper_trial_minutes"] == pytest.approx(gpu.paper_trial_minutes_pruned({1.0: 675.0, 0.05: 1500.0}))
    assert figures["paper_trial_minutes_unpruned"] == pytest.approx(gpu.paper_trial_minutes(675.0))


@pytest.mark.parametrize("densities", ["0.5,0.25", "0.5,1.0,0.05", "0.05,x", "0.01,0.05"])
def test_gpu_refuses_densities_that_do_not_span_the_schedule(densities: str, capsys) -> None:
    gpu = load("gpu")
    assert gpu.main(["--densities", densities]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and densities in err and "including 0.05" in err
    assert gpu.parse_densities("0.05, 0.5,0.75") == [0.75, 0.5, 0.05]


def test_shared_gpu_reads_trial_spans_and_their_overlap() -> None:
    shared = load("shared_gpu")
    rows = [
        {"timestamp": 110.0, "time_this_iter_s": 10.0, "peak_gpu_mib": 300.0},
        {"timestamp": 130.0, "time_this_iter_s": 20.0, "peak_gpu_mib": 420.5},
    ]
    span = shared.trial_span("trial-000", rows)
    assert (span.start, span.end, span.peak_gpu_mib) == (100.0, 130.0, 420.5)
    later = shared.TrialSpan("trial-001", 125.0, 150.0, 0.0)
    after = shared.TrialSpan("trial-002", 130.0, 150.0, 0.0)
    assert shared.overlapped([span, later])
    assert not shared.overlapped([span, after])  # one ended as the other began: never at once
    assert not shared.overlapped([])


def test_gpu_measurement_runs_on_cpu_tensors() -> None:
    """Every code path of gpu.py's measurement, at toy size on the CPU (main refuses without CUDA)."""
    gpu = load("gpu")
    setting = gpu.Setting("cifar32", 32, True, 2)
    logged: list[str] = []
    rates = gpu.measure_setting(
        setting,
        arch="resnet18",
        rank=2,
        images=8,
        workers=0,
        steps=1,
        rounds=1,
        warmup=1,
        compile_models=False,
        device=torch.device("cpu"),
        densities=(0.05,),
        log=logged.append,
    )
    names = ("loader_pil_w0", "loader_gpu_resident", "model_only_splora", "end_to_end_gpu_resident_finetune")
    for name in (*names, "model_only_splora@0.05"):
        assert rates[name] > 0, name
    # Physically pruned to 5 % of ResNet-18's 4,800 conv channels (240), SPLoRA-wrapped as a trial prunes it.
    assert "cifar32: SPLoRA pruned to 0.05: 240 conv channels" in logged
    figures = gpu.summary(rates)
    assert set(figures) == {
        "end_to_end_over_model_only", "splora_over_finetune", "paper_trial_minutes", "paper_trial_minutes_unpruned"
    }  # fmt: skip
    assert figures["paper_trial_minutes"] > 0


def test_harness_scale_helpers() -> None:
    scale = load("harness_scale")
    points = scale.synthetic_points(800)
    assert len(points) == 800 and points["step"].max() == 18
    assert points["val_accuracy"].duplicated().any()  # ties, as rounded accuracies give
    from study.pareto import front_frame

    assert front_frame(points, scale.METRICS, scale.MODES).equals(scale.pairwise_front_frame(points))
    assert scale.book_add_seconds(points, last=100) > 0


def test_harness_scale_loop_gaps_count_the_timed_hooks_inside_the_longest_gap() -> None:
    import time

    from ray.tune import Callback

    class Slow(Callback):
        def on_trial_result(self, *args, **kwargs) -> None:
            time.sleep(0.2)

    scale = load("harness_scale")
    loop, slow = scale.LoopGaps(), Slow()
    loop.time_hooks(slow)
    loop.on_step_begin(0, [])
    time.sleep(0.05)  # a short gap with no hook in it
    loop.on_step_begin(1, [])
    slow.on_trial_result(1, [], None, {})  # the long gap: 0.2 s of it in the hook
    loop.on_step_begin(2, [])
    loop.stop()
    assert 0.2 <= loop.longest < 0.2 + 0.15
    assert 0.2 <= loop.hooks_in_longest <= loop.longest
    assert len(loop.hook_seconds["on_trial_result"]) == 1 and loop.hook_seconds["on_trial_result"][0] >= 0.2


def test_search_quality_helpers() -> None:
    import numpy as np
    import pandas as pd

    quality = load("search_quality")
    # Two points, minimised, reference (4, 4): (1, 3) and (2, 1) dominate 3x1 + 2x2 (the overlap counted once).
    assert quality.hypervolume_2d(np.array([[1.0, 3.0], [2.0, 1.0]]), (4.0, 4.0)) == pytest.approx(3.0 + 4.0)
    # A dominated point, a duplicate, one beyond the reference and a NaN add nothing.
    extra = [[1.0, 3.0], [2.0, 1.0], [3.0, 3.0], [2.0, 1.0], [5.0, 0.0], [math.nan, 0.0]]
    assert quality.hypervolume_2d(np.array(extra), (4.0, 4.0)) == pytest.approx(7.0)
    assert quality.hypervolume_2d(np.empty((0, 2)), (1.0, 1.0)) == 0.0
    finals = pd.DataFrame({"val_accuracy": [0.9, 0.5], "learned_params": [1000.0, 10.0]})
    assert quality.study_losses(finals).tolist() == [[-0.9, 3.0], [-0.5, 1.0]]
    trials = pd.DataFrame({"trial_number": [2, 0, 1], "epochs": [5.0, 3.0, 4.0]})
    assert list(quality.cut_at_compute(trials, 7.0)["trial_number"]) == [0, 1]
    assert list(quality.cut_at_compute(trials, 12.0)["trial_number"]) == [0, 1, 2]
    ratio, spread = quality.ratio_and_spread([2.0, 4.0], [2.0, 2.0])
    assert ratio == pytest.approx(1.5) and spread == pytest.approx(statistics.stdev([1.0, 2.0]))
    assert quality.ratio_and_spread([1.0], [0.0])[0] != quality.ratio_and_spread([1.0], [0.0])[0]  # NaN
    line = quality.ratios_line({"moasha_over_fifo": 1.0, "gp_over_random": 0.95, "tpe_over_random": 1.1, "x": 2.0})
    assert line == "tpe_over_random=1.100 gp_over_random=0.950 moasha_over_fifo=1.000"
    assert quality.ratios_line({"moasha_over_fifo": 0.9}) == "moasha_over_fifo=0.900"  # --moasha-only


def test_search_quality_medium_space_keeps_the_start_points_it_does_not_fix(tmp_path: Path) -> None:
    """Start points are part of the space, so every arm runs them first; --medium fixes recovery epochs, which leave
    them, and its 2-4 steps still hold theirs."""
    from study.spaces import load_space

    quality = load("search_quality")
    medium = load_space(quality.medium_space("splora_lrp", tmp_path))
    expected = [
        {key: value for key, value in point.items() if key not in quality.MEDIUM_FIXED}
        for point in load_space("splora_lrp").start_points
    ]
    assert [dict(point) for point in medium.start_points] == expected and len(expected) == 2
    assert all("recovery_epochs" not in point for point in expected)


def _curve(accuracy: float, params: float, *, steps: int = 2, feasible: bool = True) -> list[dict]:
    """A trial's results by step: one epoch per step (step 0 at epoch 1), accuracy and parameters as given."""
    return [
        {"step": step, "epoch": step + 1.0, "final_step": steps, "feasible": feasible,
         "val_accuracy": accuracy, "learned_params": params}
        for step in range(steps + 1)
    ]  # fmt: skip


class _StopsAtStep:
    """A scheduler that stops the named trials at ``step``."""

    def __init__(self, names: set[str], step: int) -> None:
        self.names, self.step = names, step

    def decide(self, trial_id: str, result: dict) -> str:
        return "STOP" if trial_id in self.names and result["step"] == self.step else "CONTINUE"


def test_search_quality_replay() -> None:
    quality = load("search_quality")
    curves = {"a": _curve(0.9, 100.0), "b": _curve(0.5, 1000.0), "c": _curve(0.8, 10.0), "d": _curve(0.7, 1.0, steps=0)}
    curves["e"] = _curve(0.99, 1.0, feasible=False)
    # Stopped at step 0, b costs 1 epoch instead of 3: c (3 more) then fits a budget of 7, d does not.
    losses = quality.replay_finals(curves, ["a", "b", "c", "d"], 7.0, _StopsAtStep({"b"}, 0))
    assert losses.tolist() == [[-0.9, 2.0], [-0.8, 1.0]]
    # Never stopping: only a and b fit; an infeasible trial spends its epochs and adds no final.
    never = _StopsAtStep(set(), 0)
    assert quality.replay_finals(curves, ["a", "b", "c"], 7.0, never).tolist() == [[-0.9, 2.0], [-0.5, 3.0]]
    assert quality.replay_finals(curves, ["e", "a"], 6.0, never).tolist() == [[-0.9, 2.0]]
    reference = (0.0, 3.5)
    ratio, error = quality.replayed_ratio(curves, lambda: never, trials=2, reference=reference, orders=50)
    assert ratio == 1.0 and error == 0.0
    # Stopping the worst trial at step 0 frees epochs for others: never a smaller hypervolume, in some orders larger.
    # b is dominated (by a and c): stopping it never costs a front point, and where its 2 freed epochs let d (one
    # epoch, cheapest) in, the hypervolume grows.
    ratio, error = quality.replayed_ratio(curves, lambda: _StopsAtStep({"b"}, 0), trials=2, reference=reference)
    assert ratio > 1.0 and error > 0.0


def test_adapter_account_subtracts_per_round() -> None:
    account = load("adapter_account")
    times = {"floor": [1.0, 2.0, 4.0], "splora": [1.1, 2.4, 4.4], "neither": [1.0, 2.1, 4.0]}
    assert account.per_round(times, "splora") == pytest.approx(1.1)  # rounds: 1.1, 1.2, 1.1
    assert account.per_round(times, "splora", "neither") == pytest.approx(0.1)  # 0.1, 0.15, 0.1


def test_adapter_account_split_workers_sum_the_parts_exactly() -> None:
    """The batch split over one-thread workers gives dA = B^T dW_c and dB = dW_c A^T, dW_c by einsum."""
    account = load("adapter_account")
    torch.manual_seed(0)
    x = torch.randn(5, 6, 9, 9, dtype=torch.double)
    grad_output = torch.randn(5, 7, 5, 5, dtype=torch.double)
    lora_a = torch.randn(3, 6, 1, 1, dtype=torch.double)
    lora_b = torch.randn(7, 3, 1, 1, dtype=torch.double)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        split = account.SplitWorkers(2)
        assert torch.get_num_threads() == 2
        assert split.pool.submit(torch.get_num_threads).result() == 1
        with torch.no_grad():
            grad_a, grad_b = split(grad_output, x, lora_a, lora_b, (2, 2))
        split.pool.shutdown()
    finally:
        torch.set_num_threads(threads)
    centre = torch.einsum("nohw,nihw->oi", grad_output, x[:, :, ::2, ::2])
    torch.testing.assert_close(grad_a.flatten(1), lora_b.flatten(1).t() @ centre)
    torch.testing.assert_close(grad_b.flatten(1), centre @ lora_a.flatten(1).t())


# --- command lines ------------------------------------------------------------------------------------------------


def test_every_script_has_help() -> None:
    # Started together: each pays for importing torch, and they need not wait for each other.
    processes = {
        name: subprocess.Popen(
            [sys.executable, str(BENCHMARKS / f"{name}.py"), "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in SCRIPTS
    }
    for name, process in processes.items():
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, f"{name}: {err}"
        assert out.startswith("usage:"), name
        assert "(default:" in out, name


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("script", ["gpu", "shared_gpu"])
def test_gpu_without_cuda_exits_2_with_one_line(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{script}.py")], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "CUDA" in result.stderr
