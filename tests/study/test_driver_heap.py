"""study.driver_heap: the driver's heap frozen for the study's length and given back at its end."""

from __future__ import annotations

import gc

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
