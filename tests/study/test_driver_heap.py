"""study.driver_heap: the driver's heap frozen for the study's length and given back at its end, or when it raises."""

from __future__ import annotations

import gc

import pytest

from study import run
from study.driver_heap import FrozenHeap


def _collected(marker: object) -> bool:
    """Whether the collector's generations (not the permanent one) hold ``marker``."""
    return any(item is marker for item in gc.get_objects())


def test_frozen_heap_freezes_what_lives_at_setup_and_unfreezes_at_the_end() -> None:
    assert gc.get_freeze_count() == 0
    before = [0]  # a list: tracked by the collector
    assert _collected(before)
    heap = FrozenHeap()
    try:
        heap.setup()
        assert gc.get_freeze_count() > 0 and not _collected(before)  # skipped by every collection now
        after = [1]
        assert _collected(after)  # what the study creates is collected as usual
    finally:
        heap.on_experiment_end(trials=[])
    assert gc.get_freeze_count() == 0 and _collected(before)


class _RaisingTuner:
    """A tuner whose fit freezes the heap as the study's FrozenHeap does at setup, then raises before the end."""

    def fit(self) -> None:
        FrozenHeap().setup()
        raise RuntimeError("a callback failed mid-study")


def test_a_study_that_raises_leaves_the_heap_unfrozen(monkeypatch: pytest.MonkeyPatch) -> None:
    class _Ray:
        def nodes(self) -> list[dict]:
            return [{"Alive": True, "Resources": {"CPU": 2.0}}]

    monkeypatch.setattr(run, "connect", lambda address: (_Ray(), False))
    monkeypatch.setattr(run, "check_resources", lambda nodes, settings: 1)
    monkeypatch.setattr(run, "pretrain", lambda space, settings: None)
    monkeypatch.setattr(run, "build_tuner", lambda *args, **kwargs: _RaisingTuner())
    assert gc.get_freeze_count() == 0
    try:
        with pytest.raises(RuntimeError, match="mid-study"):
            run.run_study(None, None, resume=False, address=None)
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()  # a failure here must not leave the rest of the session's heap frozen
