"""``python -m tests.study.lagging_tune ARGS``: ``python -m study.tune ARGS`` whose Tune stops uploading its experiment
state once it holds a second trial, as when the head is lost while Tune's upload (asynchronous, and skipped while the
previous one runs) has not landed: Tune's state at the storage path lags the driver's snapshot by a trial.

Once a snapshot that holds the second trial's first step is written, the driver hangs (as a head that is about to die)
until the test kills it: no later snapshot can replace that one before the test sees it, however loaded the machine.

Tune still saves on the head, so the driver's snapshot is still taken inside each save (``study.snapshots``). A fault
injected for tests/study/test_head_loss.py only: it patches a private Ray class, which no ``study`` module does.
"""

from __future__ import annotations

import time

from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

from study.snapshots import DriverStateSnapshots
from study.tune import main

HANG_AFTER = "trial-001 reported step 0"  # tests/study/test_head_loss.py waits for this reason in latest.json

_upload_and_save = _ExperimentCheckpointManager.sync_up_experiment_state


def _lagging(self, save_fn, force: bool = False, wait: bool = False) -> None:
    if len(save_fn.__self__.get_trials()) > 1:  # save_fn is the TuneController's save_to_dir
        save_fn()  # saved on the head only
        return
    _upload_and_save(self, save_fn, force=force, wait=wait)


def _snapshot_then_hang(self: DriverStateSnapshots) -> bool:
    pending = list(self._reasons)
    taken = _snapshot(self)
    if taken and HANG_AFTER in pending:
        self.writer.flush(600)  # written beside the trials
        while True:  # the head is lost here; the test kills this process
            time.sleep(60)
    return taken


_snapshot = DriverStateSnapshots.snapshot
_ExperimentCheckpointManager.sync_up_experiment_state = _lagging
DriverStateSnapshots.snapshot = _snapshot_then_hang

if __name__ == "__main__":
    raise SystemExit(main())
