from __future__ import annotations

import math

import pytest

from spa.schedules import density_schedule, explicit_schedule


@pytest.mark.parametrize(
    ("final_density", "steps", "shape", "expected"),
    [
        (0.5, 4, "linear", [0.875, 0.75, 0.625, 0.5]),
        (0.4, 3, "linear", [0.8, 0.6, 0.4]),
        (0.25, 2, "geometric", [0.5, 0.25]),
        (0.125, 3, "geometric", [0.5, 0.25, 0.125]),
        (0.01, 2, "geometric", [0.1, 0.01]),
        (0.3, 1, "linear", [0.3]),
        (0.3, 1, "geometric", [0.3]),
        (0.3, 0, "geometric", []),
        (1.0, 0, "linear", []),
    ],
)
def test_density_schedule_values(final_density: float, steps: int, shape: str, expected: list[float]) -> None:
    densities = density_schedule(final_density, steps, shape)
    assert densities == pytest.approx(expected, rel=1e-12, abs=0)
    if densities:
        assert densities[-1] == final_density  # exact, not approximately
        assert all(a > b for a, b in zip(densities, densities[1:], strict=False))


def test_reference_protocol_is_linear_five_percent_steps() -> None:
    # The reference removes 5% of all filters per step, 19 steps down to 5%.
    densities = density_schedule(0.05, 19, "linear")
    assert densities == pytest.approx([1 - 0.05 * k for k in range(1, 20)], rel=1e-12)
    assert densities[-1] == 0.05


def test_geometric_removes_a_constant_fraction_of_what_is_left() -> None:
    densities = density_schedule(0.1, 5)  # geometric is the default
    ratios = [b / a for a, b in zip([1.0, *densities], densities, strict=False)]
    assert ratios == pytest.approx([0.1**0.2] * 5, rel=1e-12)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((0.0, 3, "linear"), "final_density=0.0"),
        ((-0.5, 3, "linear"), "final_density=-0.5"),
        ((1.5, 3, "linear"), "final_density=1.5"),
        ((math.nan, 3, "linear"), "final_density=nan"),
        ((True, 3, "linear"), "final_density=True"),
        (("0.3", 3, "linear"), "final_density='0.3'"),
        ((1.0, 3, "linear"), "final_density=1"),
        ((0.3, -1, "linear"), "steps=-1"),
        ((0.3, 2.5, "linear"), "steps=2.5"),
        ((0.3, True, "linear"), "steps=True"),
        ((0.3, 3, "cosine"), "shape='cosine'"),
    ],
)
def test_density_schedule_rejects(args: tuple, needle: str) -> None:
    with pytest.raises(ValueError) as error:
        density_schedule(*args)
    message = str(error.value)
    assert needle in message and "allowed" in message and "\n" not in message


def test_explicit_schedule_accepts_and_normalises() -> None:
    assert explicit_schedule((0.9, 0.5, 0.1)) == [0.9, 0.5, 0.1]
    assert explicit_schedule([1, 0.5]) == [1.0, 0.5]
    assert all(type(d) is float for d in explicit_schedule([1, 0.5]))
    assert explicit_schedule([]) == []


@pytest.mark.parametrize(
    ("densities", "needle"),
    [
        ([0.5, 0.5], "strictly decreasing"),
        ([0.5, 0.7], "strictly decreasing"),
        ([1.2, 0.5], "1.2"),
        ([0.5, 0.0], "0.0"),
        ([0.5, -0.1], "-0.1"),
        ([0.5, math.nan], "nan"),
        ([0.5, None], "None"),
        ([True], "True"),
    ],
)
def test_explicit_schedule_rejects(densities: list, needle: str) -> None:
    with pytest.raises(ValueError) as error:
        explicit_schedule(densities)
    message = str(error.value)
    assert needle in message and "allowed" in message and "\n" not in message
