"""The driver's heap, frozen once the study is set up, so Python's garbage collector never stalls Tune's event loop.

Why: the driver holds millions of long-lived objects (Ray, Tune, Optuna, MLflow's SQLAlchemy models, pandas,
matplotlib), and CPython's full (generation 2) collection walks all of them whenever the survivors have grown by a
quarter. ``benchmarks/harness_scale.py`` measured those pauses on the driver: 5 full collections in a study of 200
null trials, up to 2.1 s each, and the study's longest event-loop gap (2.48 s) was one of them (2026-11-26, load
12-16). ``gc.freeze()`` moves every object alive at that moment to a permanent generation the collector skips, so a
full collection walks only what the study itself created since. Freezing after the other callbacks' ``setup`` (this
callback goes last) also catches what they import there (MLflow's store). The heap is unfrozen at the experiment's
end, so a process that runs several studies (``benchmarks/search_quality.py``) does not keep each one's garbage;
a study that raises (an error in a callback, Ctrl-C in Tune's loop) never reaches that end, so ``study.run`` also
unfreezes it on the way out (``heap_unfrozen_after``).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

from ray.tune import Callback

__all__ = ["FrozenHeap", "heap_unfrozen_after"]


class FrozenHeap(Callback):
    """Collect, then freeze the driver's heap when the experiment is set up; unfreeze it when it ends. Put it last
    in the callbacks, after those that import or build much in their ``setup``."""

    def setup(self, **info) -> None:
        gc.collect()  # garbage now, not frozen for the study's length
        gc.freeze()

    def on_experiment_end(self, trials, **info) -> None:
        gc.unfreeze()


@contextmanager
def heap_unfrozen_after() -> Iterator[None]:
    """Run the block (a study's fit), then unfreeze the heap however the block leaves it: raising skips Tune's
    ``on_experiment_end``, and a frozen heap would keep everything the process allocates after that."""
    try:
        yield
    finally:
        gc.unfreeze()
