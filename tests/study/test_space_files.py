"""study.space_files: spaces built on bases (``extends``), resolved on load, and written back resolved."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from study import space_files
from study.spaces import SPACES_DIR, SpaceError, list_spaces, load_space

# Every shipped space as it loaded before the files were split into bases and overlays (captured from the flat
# files of commit 02e4353; since then, by issue 10, only the shared budget in _common.toml (epochs 3 -> 6, lr_schedule
# step -> cosine; final_density on a log scale, steps from 2) and the splora spaces' rank and lr ranges (rank from 1;
# lr 1e-3..5e-2 -> 4e-3..2e-2, as adapters learn at 100x the lr) changed): the overlays must resolve to exactly these
# values, parameter order included (Optuna samples in that order, so a seeded study depends on it).
RESOLVED_BEFORE = Path(__file__).with_name("spaces_resolved.json")


def resolved(space) -> str:
    data = {
        "description": space.description,
        "fixed": dict(space.fixed),
        "params": [dataclasses.asdict(param) for param in space.params],
        "objectives": [[objective.metric, objective.mode] for objective in space.objectives],
    }
    return json.dumps(data, sort_keys=True)  # JSON keeps 1 and 1.0 apart, and the parameters' order


BEFORE = json.loads(RESOLVED_BEFORE.read_text())
# Spaces that share no budget with the embedded task's, so they extend no base (the paper's GPU protocol).
FULL_FILES = ["paper_cifar10_splora_lrp"]


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_every_shipped_space_resolves_to_what_it_was(name: str) -> None:
    assert resolved(load_space(name)) == json.dumps(BEFORE[name], sort_keys=True)


def test_bases_are_not_spaces() -> None:
    bases = sorted(path.stem for path in SPACES_DIR.glob("_*.toml"))
    assert bases and not set(bases) & set(list_spaces())
    assert sorted(list_spaces()) == sorted([*BEFORE, *FULL_FILES])
    for base in bases:
        with pytest.raises(SpaceError, match="is a base for other spaces to extend, not a space; allowed: finetune_"):
            load_space(base)


def test_a_budget_change_is_one_edit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "spaces"
    shutil.copytree(SPACES_DIR, copy)
    common = copy / "_common.toml"
    common.write_text(common.read_text().replace("epochs = 6", "epochs = 5"))
    monkeypatch.setattr(space_files, "SPACES_DIR", copy)
    for name in sorted(set(list_spaces()) - set(FULL_FILES)):
        assert load_space(name).fixed["epochs"] == 5, name


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(text)
    return path


def test_an_overlay_of_a_shipped_space(tmp_path: Path) -> None:
    # Found in SPACES_DIR (nothing beside the file): my own budget on top of splora_lrp, rank pinned, shape searched
    # no more, and the learning rate narrowed.
    path = write(
        tmp_path,
        "mine",
        'extends = "splora_lrp"\n[fixed]\nepochs = 1\nrank = 8\nshape = "linear"\n'
        '[params.lr]\ntype = "float"\nlow = 0.01\nhigh = 0.02\n',
    )
    base, mine = load_space("splora_lrp"), load_space(path)
    assert mine.name == "mine" and mine.path == path and mine.description == base.description
    assert dict(mine.fixed) == {**base.fixed, "epochs": 1, "rank": 8, "shape": "linear"}
    names = [param.name for param in mine.params]
    assert names == [param.name for param in base.params if param.name not in ("rank", "shape")]
    (lr,) = [param for param in mine.params if param.name == "lr"]
    assert (lr.low, lr.high, lr.log) == (0.01, 0.02, False)  # a parameter is replaced whole, in its place
    # Searching what a base fixed: criterion leaves the fixed settings and is sampled after the base's parameters.
    searched = load_space(
        write(tmp_path, "any", 'extends = "splora_lrp"\n[params.criterion]\ntype = "categorical"\nchoices = ["lrp"]\n')
    )
    assert "criterion" not in searched.fixed and searched.params[-1].name == "criterion"


def test_a_cycle_is_one_line_naming_its_files(tmp_path: Path) -> None:
    write(tmp_path, "a", 'extends = "b"\n')
    write(tmp_path, "b", 'extends = ["splora_lrp", "a"]\n')
    with pytest.raises(SpaceError) as caught:
        load_space(tmp_path / "a.toml")
    message = str(caught.value)
    assert "\n" not in message and "extends makes a cycle" in message
    assert f"{tmp_path / 'a.toml'} -> {tmp_path / 'b.toml'} -> {tmp_path / 'a.toml'}" in message
    write(tmp_path, "self", 'extends = "self"\n')
    with pytest.raises(SpaceError, match="extends makes a cycle"):
        load_space(tmp_path / "self.toml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('extends = "nowhere"\n', "extends='nowhere': no file"),
        ("extends = 3\n", "extends=3 is not allowed; allowed: a space's name or file, or a list of them"),
        ("extends = []\n", "extends=[] is not allowed"),
        ('extends = "base"\n[fixed]\nepochs = 1\n', "base.toml: fixed.epoch is not a setting"),  # named in the base
        ('extends = "base"\n[fixed]\nepoch = 1\n', "top.toml: fixed.epoch is not a setting"),
    ],
)
def test_extends_errors_name_the_file(tmp_path: Path, text: str, expected: str) -> None:
    if "base" in text:
        write(tmp_path, "base", "[fixed]\nepoch = 3\n" if "epochs" in text else "[fixed]\nepochs = 3\n")
    with pytest.raises(SpaceError) as caught:
        load_space(write(tmp_path, "top", text))
    assert "\n" not in str(caught.value) and expected in str(caught.value), str(caught.value)


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_a_resolved_copy_loads_back_equal(tmp_path: Path, name: str) -> None:
    space = load_space(name)
    copy = write(tmp_path, name, space.to_toml(header=f"{name}, resolved"))
    assert "extends" not in copy.read_text()
    assert dataclasses.replace(load_space(copy), path=space.path) == space
