"""``python -m tests.study.lagging_tune ARGS``: ``python -m study.tune ARGS`` whose Tune stops uploading its experiment
state once it holds a second trial, as when the head is lost while Tune's upload (asynchronous, and skipped while the
previous one runs) has not landed: Tune's state at the storage path lags the driver's snapshot by a trial.

Tune still saves on the head, so the driver's snapshot is still taken inside each save (``study.snapshots``). A fault
injected for tests/study/test_head_loss.py only: it patches a private Ray class, which no ``study`` module does.
"""

from __future__ import annotations

from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

from study.tune import main

_upload_and_save = _ExperimentCheckpointManager.sync_up_experiment_state


def _lagging(self, save_fn, force: bool = False, wait: bool = False) -> None:
    if len(save_fn.__self__.get_trials()) > 1:  # save_fn is the TuneController's save_to_dir
        save_fn()  # saved on the head only
        return
    _upload_and_save(self, save_fn, force=force, wait=wait)


_ExperimentCheckpointManager.sync_up_experiment_state = _lagging

if __name__ == "__main__":
    raise SystemExit(main())
