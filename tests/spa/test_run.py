"""``python -m spa.run``: flags, table and CSV, and one-line errors with exit code 2."""

from __future__ import annotations

import csv

import pytest

from spa.run import CSV_COLUMNS, build_parser, config_from_args, main


def test_original_flags_map_onto_the_config() -> None:
    args = build_parser().parse_args(
        "--train --prune --splora --splora-rank 16 --splora-init-range 1e-4 --method-type taylor --norm "
        "--arch resnet34 --dataset digits --lr 0.0025 --batch-size 64 --epochs 30 --recovery-epochs 20 "
        "--seed 3".split()
    )
    config = config_from_args(args)
    assert (config.learner.learner, config.learner.rank, config.learner.init_range) == ("splora", 16, 1e-4)
    assert (config.prune.criterion, config.prune.norm, config.model.arch) == ("taylor", True, "resnet34")
    assert (config.optim.lr, config.data.batch_size, config.optim.epochs, config.optim.recovery_epochs) == (
        0.0025,
        64,
        30,
        20,
    )
    assert config.runtime.seed == 3


def test_train_only_and_prune_only() -> None:
    train_only = config_from_args(build_parser().parse_args(["--train", "--epochs", "5"]))
    assert (train_only.optim.epochs, train_only.prune.steps) == (5, 0)
    prune_only = config_from_args(build_parser().parse_args(["--prune", "--epochs", "5"]))
    assert (prune_only.optim.epochs, prune_only.prune.steps) == (0, 3)
    defaults = config_from_args(build_parser().parse_args([]))
    assert (defaults.data.dataset, defaults.optim.epochs, defaults.prune.steps) == ("digits", 6, 3)


def test_help_explains_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for action in build_parser()._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, action.dest
    assert "--method-type" in text and "default: lrp" in text


def test_table_and_csv(tmp_path, spa_cache_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "out" / "steps.csv"
    code = main(
        [
            "--splora", "--splora-rank", "2", "--method-type", "weight", "--epochs", "1", "--densities", "0.6",
            "--batch-size", "64", "--max-score-batches", "2", "--threads", "1", "--cache-dir", spa_cache_dir,
            "--csv", str(path), "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header == list(CSV_COLUMNS)
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [0, 1]
    assert float(rows[0]["density"]) == 1.0 and abs(float(rows[1]["density"]) - 0.6) < 0.02
    assert int(rows[1]["learned_params"]) < int(rows[0]["learned_params"])
    assert list(rows[0]) == list(CSV_COLUMNS)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "mnist-3d"], "unknown dataset 'mnist-3d'; allowed:"),
        (["--splora", "--splora-rank", "0"], "rank=0 is not allowed; allowed: an integer >= 1"),
        (["--final-density", "1.5"], "final_density=1.5 is not allowed; allowed: a number in (0, 1]"),
        (["--final-density", "0"], "final_density=0.0 is not allowed; allowed: a number in (0, 1]"),
        (["--dataset", "cifar10", "--data-dir", "/nonexistent/data"], "'/nonexistent/data' does not exist"),
        (["--device", "cuda"], "asked for a CUDA GPU but none is available"),
        (["--densities", "0.5,0.7"], "strictly decreasing"),
        (  # refused before any training: 8 channels in each of resnet18's 20 convs are 160 of 4,800
            ["--weights", "none", "--epochs", "50", "--final-density", "0.03"],
            "final density 0.03 is below the 0.0333 that min_channels=8 leaves (160 of 4800 conv channels)",
        ),
    ],
)
def test_bad_input_one_line_exit_2(argv: list[str], message: str, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    csv_path = tmp_path / "never.csv"
    code = main([*argv, "--csv", str(csv_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not csv_path.exists()  # nothing half-written


def test_imagenet_weights_without_network_one_line_before_the_data(
    tmp_path, monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Offline and not cached, --weights imagenet was a urllib traceback (exit 1) after the data were loaded."""
    import urllib.error

    import torch.hub

    from spa import experiment

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    def no_data(*args, **kwargs):
        raise AssertionError("the data were loaded before the weights were checked")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "urlopen", no_network)
    monkeypatch.setattr(experiment, "_load_data", no_data)
    csv_path = tmp_path / "never.csv"
    code = main(["--weights", "imagenet", "--arch", "resnet50", "--csv", str(csv_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    cached = tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    assert err.startswith(
        f"error: weights='imagenet': the resnet50 ImageNet weights are not in the torch hub cache ({cached})"
    )
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth ([Errno -2] Name or service not known)" in err
    assert err.rstrip().endswith("put resnet50-0676ba61.pth there")
    assert not csv_path.exists() and not cached.exists()
