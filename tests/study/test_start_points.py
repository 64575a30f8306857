"""study.start_points: a space's [[start_points]], as the files declare them, validated, merged and trimmed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from study.settings import SMOKE_BUDGET
from study.spaces import SPACES_DIR, SpaceError, list_spaces, load_space
from study.start_points import inherited, without

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SPLORA_POINTS = tomllib.loads((SPACES_DIR / "_splora.toml").read_text())["start_points"]
FINETUNE_POINTS = tomllib.loads((SPACES_DIR / "_finetune.toml").read_text())["start_points"]


def test_the_embedded_task_spaces_start_at_the_two_ends_of_the_front() -> None:
    assert [(point["rank"], point["final_density"]) for point in SPLORA_POINTS] == [(1, 0.05), (64, 0.6)]
    assert [point["final_density"] for point in FINETUNE_POINTS] == [0.05, 0.6]
    for name in list_spaces():
        space = load_space(name)
        expected = {"splora": SPLORA_POINTS, "finetune": FINETUNE_POINTS}.get(name.split("_")[0], [])
        assert [dict(point) for point in space.start_points] == expected, name
        # every point is a trial the space could have drawn
        params = {param.name: param for param in space.params}
        for point in space.start_points:
            assert all(params[key].refusal(value) is None for key, value in point.items())


def test_a_resolved_copy_keeps_the_points(tmp_path: Path) -> None:
    space = load_space("splora_lrp")
    path = tmp_path / "copy.toml"
    path.write_text(space.to_toml(header="copy"))
    assert load_space(path).start_points == space.start_points


def test_the_smoke_budget_leaves_the_points_what_it_does_not_pin() -> None:
    smoke = load_space("splora_lrp").with_overrides(SMOKE_BUDGET)
    assert [dict(point) for point in smoke.start_points] == [
        {key: value for key, value in point.items() if key not in SMOKE_BUDGET} for point in SPLORA_POINTS
    ]
    assert {key for point in smoke.start_points for key in point} == {"rank", "lr", "init_range"}


def test_an_overlay_that_fixes_a_key_takes_it_out_of_the_inherited_points(tmp_path: Path) -> None:
    path = tmp_path / "overlay.toml"
    path.write_text('extends = "splora_lrp"\n[fixed]\nrecovery_epochs = 1\nsteps = 3\n')
    points = [dict(point) for point in load_space(path).start_points]
    assert points == [{k: v for k, v in p.items() if k not in ("recovery_epochs", "steps")} for p in SPLORA_POINTS]
    # points of its own replace the inherited ones whole
    path.write_text(path.read_text() + "[[start_points]]\nrank = 2\n")
    assert [dict(point) for point in load_space(path).start_points] == [{"rank": 2}]


def test_a_copied_space_that_narrows_a_range_drops_only_the_inherited_values_outside_it(tmp_path: Path) -> None:
    """README's way to a space of one's own: copy splora_lrp.toml (it extends the bases) and narrow rank. The bases'
    points chose rank 1 and 64 for rank in [1, 64]: the copy keeps the rest of them and draws rank; before, it was
    refused over start points it never wrote."""
    (tmp_path / "mine.toml").write_text((SPACES_DIR / "splora_lrp.toml").read_text())
    narrowed = tmp_path / "narrowed.toml"
    narrowed.write_text('extends = "mine"\n[params.rank]\ntype = "int"\nlow = 2\nhigh = 8\n')
    rest = [{key: value for key, value in point.items() if key != "rank"} for point in SPLORA_POINTS]
    assert [dict(point) for point in load_space(narrowed).start_points] == rest
    # a range that still holds a value keeps it: only rank 64 leaves
    narrowed.write_text('extends = "mine"\n[params.rank]\ntype = "int"\nlow = 1\nhigh = 32\n')
    assert [dict(point) for point in load_space(narrowed).start_points] == [SPLORA_POINTS[0], rest[1]]
    # a bad range is named as such, not as a start point it happens to exclude
    narrowed.write_text('extends = "mine"\n[params.rank]\ntype = "int"\nlow = 0\nhigh = 8\n')
    with pytest.raises(
        SpaceError, match=r"narrowed\.toml: params\.rank\.low=0 is not allowed; allowed: an integer >= 1"
    ):
        load_space(narrowed)
    # the file's own points are checked, never trimmed
    narrowed.write_text(narrowed.read_text().replace("low = 0", "low = 2") + "[[start_points]]\nrank = 1\n")
    with pytest.raises(SpaceError, match=r"start_points\[0\]\.rank=1 is not allowed; allowed: an integer in \[2, 8\]"):
        load_space(narrowed)


def test_inherited_drops_fixed_keys_and_values_the_new_table_refuses() -> None:
    points = [{"rank": 1, "lr": 0.01}, {"rank": 64, "lr": 0.02}, {"rank": 64}]

    def takes(name: str, spec: dict, value: int) -> bool:
        return spec["low"] <= value <= spec["high"]

    assert inherited(points, ["lr"], {"rank": {"low": 2, "high": 8}}, takes) == ()
    assert inherited(points, [], {"rank": {"low": 2, "high": 8}}, takes) == ({"lr": 0.01}, {"lr": 0.02})
    assert inherited(points, [], {"rank": {"low": 1, "high": 8}}, takes) == ({"rank": 1, "lr": 0.01}, {"lr": 0.02})
    assert inherited(points, [], {}, takes) == tuple(points)


def test_without_drops_the_keys_then_empty_and_repeated_points() -> None:
    points = [{"rank": 1, "lr": 0.01}, {"rank": 1, "lr": 0.02}, {"lr": 0.03}, {"rank": 2}]
    assert without(points, ["lr"]) == ({"rank": 1}, {"rank": 2})
    assert without(points, []) == tuple(points)


SPACE = """
[fixed]
learner = "splora"
[params.rank]
type = "int"
low = 1
high = 64
log = true
[params.lr]
type = "float"
low = 0.004
high = 0.02
[params.steps]
type = "int"
low = 2
high = 4
step = 2
[params.shape]
type = "categorical"
choices = ["linear", "geometric"]
"""
REFUSED = {
    "not a list of tables": ("start_points = 3\n", "start_points=3 is not allowed; allowed: [[start_points]] tables"),
    "an empty point": ("[[start_points]]\n", "start_points[0] is empty; allowed: a table setting at least one"),
    "a list as a value": ("[[start_points]]\nrank = [1, 2]\n", "start_points[0].rank=[1, 2] is not allowed;"),
    "an unknown parameter": (
        "[[start_points]]\nrnk = 2\n",
        "start_points[0].rnk is not a searched parameter; allowed: rank, lr, steps, shape",
    ),
    "a fixed setting": (
        '[[start_points]]\nlearner = "finetune"\n',
        "start_points[0].learner is a fixed setting, not a searched one; allowed: rank, lr, steps, shape",
    ),
    "below the range": (
        "[[start_points]]\nrank = 0\n",
        "start_points[0].rank=0 is not allowed; allowed: an integer in [1, 64]",
    ),
    "above the range": (
        "[[start_points]]\nrank = 1\n[[start_points]]\nlr = 0.03\n",
        "start_points[1].lr=0.03 is not allowed; allowed: a number in [0.004, 0.02]",
    ),
    "a float for an int": ("[[start_points]]\nrank = 2.0\n", "start_points[0].rank=2.0 is not allowed; allowed: an"),
    "a bool for an int": ("[[start_points]]\nrank = true\n", "start_points[0].rank=True is not allowed; allowed: an"),
    "a string for a float": ('[[start_points]]\nlr = "0.01"\n', "start_points[0].lr='0.01' is not allowed; allowed: a"),
    "off the step": (
        "[[start_points]]\nsteps = 3\n",
        "start_points[0].steps=3 is not allowed; allowed: an integer in [2, 4] on steps of 2 from 2",
    ),
    "not a choice": (
        '[[start_points]]\nshape = "cubic"\n',
        "start_points[0].shape='cubic' is not allowed; allowed: one of 'linear', 'geometric'",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_bad_point_is_one_line_naming_its_key(case: str, tmp_path: Path) -> None:
    text, expected = REFUSED[case]
    path = tmp_path / "bad.toml"
    path.write_text(text + SPACE)  # a top-level key before the tables
    with pytest.raises(SpaceError) as caught:
        load_space(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: ") and expected in message, message


def test_a_point_the_experiment_refuses_is_refused(tmp_path: Path) -> None:
    """Each value a trial could draw alone (the ends of every parameter load), but not the two together."""
    path = tmp_path / "together.toml"
    both = '[params.compile]\ntype = "categorical"\nchoices = [false, true]\n'
    path.write_text(both + both.replace("compile", "cuda_graphs") + "[[start_points]]\ncompile = true\n")
    assert [dict(point) for point in load_space(path).start_points] == [{"compile": True}]
    path.write_text(path.read_text() + "cuda_graphs = true\n")
    with pytest.raises(SpaceError) as caught:
        load_space(path)
    assert str(caught.value) == (
        f"{path}: start_points[0] is not allowed: cuda_graphs=True is not allowed; allowed: false when compile is true "
        "(a compiled step manages its own graphs: mode='reduce-overhead')"
    )


def test_a_partial_point_loads_and_a_point_in_a_base_names_the_base(tmp_path: Path) -> None:
    path = tmp_path / "partial.toml"
    path.write_text(SPACE + '[[start_points]]\nrank = 1\n[[start_points]]\nlr = 0.01\nshape = "linear"\n')
    assert [dict(point) for point in load_space(path).start_points] == [{"rank": 1}, {"lr": 0.01, "shape": "linear"}]
    base = tmp_path / "_base.toml"
    base.write_text("[[start_points]]\nrank = [1]\n")
    top = tmp_path / "top.toml"
    top.write_text('extends = "_base"\n' + SPACE)
    with pytest.raises(SpaceError, match=r"_base\.toml: start_points\[0\]\.rank=\[1\] is not allowed"):
        load_space(top)
