"""``study.snapshots``: the Tune callback marks the driver's state dirty at every event that changes it, never
waits for a snapshot (but the final one), and pickles (inside Tune's tuner.pkl) without its thread."""

from __future__ import annotations

import pickle
import sqlite3
from types import SimpleNamespace

from study import driver_state
from study.driver_state import read_latest, restore_snapshot
from study.names import TRIAL_NUMBER
from study.snapshots import DriverStateSnapshots


def trial(number: int) -> SimpleNamespace:
    return SimpleNamespace(trial_id=f"id{number}", config={TRIAL_NUMBER: number})


def test_tune_events_mark_the_state_dirty_and_the_end_takes_the_final_snapshot(tmp_path, monkeypatch) -> None:
    db = tmp_path / "optuna.db"
    sqlite3.connect(db).execute("create table t (x)").connection.commit()
    (tmp_path / "study.json").write_text("{}")
    location = f"file://{tmp_path / 'bucket'}"
    reasons: list[str] = []
    real = driver_state.write_snapshot

    def recording(*args, **kwargs):
        reasons.extend(kwargs["reasons"])
        return real(*args, **kwargs)

    monkeypatch.setattr(driver_state, "write_snapshot", recording)
    callback = DriverStateSnapshots(
        location, databases={"optuna.db": db}, files={"study.json": tmp_path / "study.json"}
    )
    assert pickle.loads(pickle.dumps(callback)).location == location  # before setup: settings only

    callback.setup()
    trials = [trial(0)]
    callback.on_step_end(iteration=1, trials=trials)  # Tune added trial-000 in this step
    callback.on_step_end(iteration=2, trials=trials)  # nothing new: no mark
    callback.on_trial_start(iteration=2, trials=trials, trial=trials[0])
    callback.on_trial_result(iteration=3, trials=trials, trial=trials[0], result={"step": 0})
    assert callback.writer.flush(timeout=60)
    clone = pickle.loads(pickle.dumps(callback))  # while its thread runs: the pickle holds no thread
    assert clone._writer is None and clone.databases == {"optuna.db": str(db)}
    with sqlite3.connect(db) as connection:
        connection.execute("insert into t values (1)")
    callback.on_trial_error(iteration=4, trials=trials, trial=trials[0])
    callback.on_experiment_end(trials=trials)  # waits for the final snapshot
    assert callback._writer is None

    assert reasons == [
        "the study starts",
        "trial-000 added",
        "trial-000 started",
        "trial-000 reported step 0",
        "trial-000 failed",
        "the driver stopped",
    ]
    latest = read_latest(location)
    assert latest.reasons[-1] == "the driver stopped"
    restore_snapshot(latest, {"optuna.db": tmp_path / "restored.db"})
    assert sqlite3.connect(tmp_path / "restored.db").execute("select x from t").fetchall() == [(1,)]
