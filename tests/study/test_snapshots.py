"""``study.snapshots``: Tune's events only say why; the snapshot is taken inside Tune's save of its experiment state
(``get_state``), complete before that returns, and only when something changed; the end takes the final one; the
callback pickles (inside Tune's tuner.pkl) without its thread or connections."""

from __future__ import annotations

import pickle
import sqlite3
from types import SimpleNamespace

from study import driver_state
from study.driver_state import read_latest, restore_snapshot
from study.names import TRIAL_NUMBER
from study.snapshots import Commits, DriverStateSnapshots


def trial(number: int) -> SimpleNamespace:
    return SimpleNamespace(trial_id=f"id{number}", config={TRIAL_NUMBER: number})


def insert(db, value: int) -> None:
    with sqlite3.connect(db) as connection:
        connection.execute("insert into t values (?)", (value,))
    connection.close()


def rows(db) -> list[tuple[int]]:
    connection = sqlite3.connect(db)
    try:
        return connection.execute("select x from t order by x").fetchall()
    finally:
        connection.close()


def test_snapshots_are_taken_inside_tunes_saves_when_something_changed(tmp_path, monkeypatch) -> None:
    db = tmp_path / "optuna.db"
    sqlite3.connect(db).execute("create table t (x)").connection.commit()
    (tmp_path / "study.json").write_text("{}")
    location = f"file://{tmp_path / 'bucket'}"
    taken: list[tuple[str, ...]] = []
    real = driver_state.write_snapshot

    def recording(*args, **kwargs):
        taken.append(tuple(kwargs["reasons"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(driver_state, "write_snapshot", recording)
    callback = DriverStateSnapshots(
        location, databases={"optuna.db": db}, files={"study.json": tmp_path / "study.json"}
    )
    assert pickle.loads(pickle.dumps(callback)).location == location  # before setup: settings only

    callback.setup()
    trials = [trial(0)]
    callback.on_trial_start(iteration=1, trials=trials, trial=trials[0])
    callback.on_trial_result(iteration=2, trials=trials, trial=trials[0], result={"step": 0})
    assert taken == []  # events take no snapshot
    assert callback.get_state() is None  # Tune saves: nothing of ours in its state, and the snapshot is done
    assert taken == [("the study starts", "trial-000 started", "trial-000 reported step 0")]
    assert read_latest(location).generation == 1

    callback.get_state()  # Tune saves again (its periodic save): nothing changed, no snapshot
    assert len(taken) == 1
    insert(db, 1)  # e.g. the searcher asked Optuna for a trial in this step: a commit, no event
    callback.get_state()
    assert taken[-1] == ("the study's databases changed",)
    restore_snapshot(read_latest(location), {"optuna.db": tmp_path / "second.db"})
    assert rows(tmp_path / "second.db") == [(1,)]

    clone = pickle.loads(pickle.dumps(callback))  # while its thread runs: the pickle holds no thread
    assert clone._writer is None and clone._commits is None and clone.databases == {"optuna.db": str(db)}
    insert(db, 2)
    callback.on_trial_error(iteration=4, trials=trials, trial=trials[0])
    callback.on_experiment_end(trials=trials)  # waits for the final snapshot
    assert callback._writer is None and callback._commits is None
    assert taken[-1] == ("trial-000 failed", "the driver stopped")
    latest = read_latest(location)
    assert latest.generation == 3 and latest.reasons == ("trial-000 failed", "the driver stopped")
    restore_snapshot(latest, {"optuna.db": tmp_path / "restored.db"})
    assert rows(tmp_path / "restored.db") == [(1,), (2,)]


def test_a_failed_snapshot_is_retried_at_the_next_save_even_with_nothing_new(tmp_path, monkeypatch) -> None:
    db = tmp_path / "optuna.db"
    sqlite3.connect(db).execute("create table t (x)").connection.commit()
    failures = [1]
    real = driver_state.write_snapshot

    def flaky(*args, **kwargs):
        if failures[0]:
            failures[0] -= 1
            raise OSError("bucket unreachable")
        return real(*args, **kwargs)

    monkeypatch.setattr(driver_state, "write_snapshot", flaky)
    callback = DriverStateSnapshots(str(tmp_path / "bucket"), databases={"optuna.db": db}, files={})
    callback.setup()
    assert callback.snapshot() and read_latest(str(tmp_path / "bucket")) is None
    assert callback.snapshot() and read_latest(str(tmp_path / "bucket")).generation == 1
    assert not callback.snapshot()
    callback.close()


def test_commits_sees_every_commit_from_any_connection_and_a_database_appearing(tmp_path) -> None:
    db = tmp_path / "mlflow.db"
    commits = Commits([db])
    assert commits.changed()  # the first look
    assert not commits.changed()  # still missing
    sqlite3.connect(db).execute("create table t (x)").connection.commit()
    assert commits.changed() and not commits.changed()
    for value in range(3):  # no size or timestamp tricks: each commit is seen, even one page rewritten in place
        insert(db, value)
        assert commits.changed(), value
        assert not commits.changed()
    commits.close()
