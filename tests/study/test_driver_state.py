"""``study.driver_state``: consistent, atomic snapshots of the driver's SQLite stores and files at a storage URI,
and their restore on a machine that has none of them."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path

import optuna
import pytest

from study import driver_state
from study.driver_state import (
    LATEST,
    SnapshotError,
    SnapshotWriter,
    read_latest,
    restore_snapshot,
    snapshot_location,
    sqlite_path,
    write_snapshot,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def dump(path: Path) -> list[str]:
    connection = sqlite3.connect(path)
    try:
        return list(connection.iterdump())
    finally:
        connection.close()


def make_db(path: Path, rows: int) -> None:
    connection = sqlite3.connect(path)
    connection.execute("create table if not exists t (i integer primary key, pair integer)")
    connection.executemany("insert into t (pair) values (?)", [(i // 2,) for i in range(rows)])
    connection.commit()
    connection.close()


def optuna_study(path: Path, trials: int) -> optuna.Study:
    study = optuna.create_study(
        study_name="s", storage=f"sqlite:///{path}", directions=["maximize", "minimize"], load_if_exists=True
    )
    for _ in range(trials):
        trial = study.ask()
        x = trial.suggest_float("x", 0, 1)
        study.tell(trial, [x, 1 - x])
    study.ask()  # one trial left RUNNING, as a live study has
    return study


def test_a_snapshot_at_a_file_uri_restores_identical_databases_in_a_fresh_place(tmp_path) -> None:
    driver = tmp_path / "driver"
    driver.mkdir()
    optuna_study(driver / "optuna.db", trials=3)
    make_db(driver / "mlflow.db", rows=10)
    (driver / "study.json").write_text('{"name": "s"}\n')
    location = snapshot_location(f"file://{tmp_path / 'bucket' / 's'}")
    assert location == f"file://{tmp_path}/bucket/s/driver_state"

    snapshot = write_snapshot(
        location,
        databases={"optuna.db": driver / "optuna.db", "mlflow.db": driver / "mlflow.db"},
        files={"study.json": driver / "study.json", "absent.toml": driver / "absent.toml"},
    )
    assert snapshot.generation == 1 and set(snapshot.files) == {"optuna.db", "mlflow.db", "study.json"}
    assert read_latest(location) == snapshot

    fresh = tmp_path / "elsewhere"
    targets = {"optuna.db": fresh / "a" / "optuna.db", "mlflow.db": fresh / "mlflow.db", "study.json": fresh / "j"}
    assert sorted(restore_snapshot(snapshot, targets)) == sorted(targets.values())
    assert dump(fresh / "a" / "optuna.db") == dump(driver / "optuna.db")
    assert dump(fresh / "mlflow.db") == dump(driver / "mlflow.db")
    assert (fresh / "j").read_text() == '{"name": "s"}\n'
    restored = optuna.load_study(study_name="s", storage=f"sqlite:///{fresh / 'a' / 'optuna.db'}")
    original = optuna.load_study(study_name="s", storage=f"sqlite:///{driver / 'optuna.db'}")
    assert [(t.number, t.state, t.values, t.params) for t in restored.trials] == [
        (t.number, t.state, t.values, t.params) for t in original.trials
    ]
    assert [t.state.name for t in restored.trials] == ["COMPLETE"] * 3 + ["RUNNING"]
    # No leftovers: only the snapshot's files beside latest.json.
    assert sorted(p.name for p in (tmp_path / "bucket" / "s" / "driver_state").iterdir()) == ["gen-000001", LATEST]


def test_a_backup_of_a_database_being_written_is_one_committed_state(tmp_path) -> None:
    db = tmp_path / "live.db"
    make_db(db, rows=0)
    stop = threading.Event()

    def write_pairs() -> None:  # every transaction adds two rows: a committed state holds an even count
        connection = sqlite3.connect(db, timeout=30)
        pair = 0
        while not stop.is_set():
            with connection:
                connection.executemany("insert into t (pair) values (?)", [(pair,), (pair,)])
            pair += 1
        connection.close()

    writer = threading.Thread(target=write_pairs)
    writer.start()
    try:
        counts = []
        for generation in range(1, 6):
            snapshot = write_snapshot(str(tmp_path / "store"), databases={"db": db}, files={}, generation=generation)
            copy = tmp_path / f"copy{generation}.db"
            restore_snapshot(snapshot, {"db": copy})
            (count,) = sqlite3.connect(copy).execute("select count(*) from t").fetchone()
            (check,) = sqlite3.connect(copy).execute("pragma integrity_check").fetchone()
            assert check == "ok" and count % 2 == 0, (count, check)
            counts.append(count)
    finally:
        stop.set()
        writer.join()
    assert counts == sorted(counts) and counts[-1] > 0


def test_an_interrupted_snapshot_leaves_the_previous_one_whole(tmp_path, monkeypatch) -> None:
    db = tmp_path / "optuna.db"
    make_db(db, rows=4)
    location = f"file://{tmp_path / 'bucket'}"
    first = write_snapshot(location, databases={"optuna.db": db}, files={})
    make_db(db, rows=4)  # now 8 rows

    def broken_upload(fs, local, path):
        raise OSError("connection reset")

    monkeypatch.setattr(driver_state, "_upload", broken_upload)
    with pytest.raises(OSError):
        write_snapshot(location, databases={"optuna.db": db}, files={})
    monkeypatch.undo()
    assert read_latest(location) == first  # latest.json still names generation 1
    restore_snapshot(read_latest(location), {"optuna.db": tmp_path / "restored.db"})
    assert sqlite3.connect(tmp_path / "restored.db").execute("select count(*) from t").fetchone() == (4,)


def test_old_generations_go_and_a_damaged_file_is_refused(tmp_path) -> None:
    db = tmp_path / "optuna.db"
    make_db(db, rows=2)
    location = str(tmp_path / "bucket")
    (tmp_path / "study.json").write_text("{}")
    for _ in range(4):
        snapshot = write_snapshot(location, databases={"optuna.db": db}, files={"study.json": tmp_path / "study.json"})
    assert snapshot.generation == 4
    assert sorted(p.name for p in (tmp_path / "bucket").iterdir()) == ["gen-000003", "gen-000004", LATEST]

    stored = tmp_path / "bucket" / "gen-000004" / "optuna.db"
    stored.write_bytes(stored.read_bytes()[:-10] + b"0123456789")
    restored = tmp_path / "restored"
    with pytest.raises(SnapshotError, match="optuna.db does not match latest.json"):
        restore_snapshot(snapshot, {"study.json": restored / "study.json", "optuna.db": restored / "optuna.db"})
    assert not restored.exists()  # all or nothing: the sound study.json is not written either

    (tmp_path / "bucket" / LATEST).write_text("{not json")
    with pytest.raises(SnapshotError, match="latest.json is unreadable"):
        read_latest(location)
    assert read_latest(str(tmp_path / "nothing-here")) is None


def test_restore_leaves_existing_files_alone_unless_told(tmp_path) -> None:
    (tmp_path / "study.json").write_text("snapshotted")
    snapshot = write_snapshot(str(tmp_path / "bucket"), databases={}, files={"study.json": tmp_path / "study.json"})
    target = tmp_path / "local" / "study.json"
    target.parent.mkdir()
    target.write_text("local")
    assert restore_snapshot(snapshot, {"study.json": target}) == []
    assert target.read_text() == "local"
    assert restore_snapshot(snapshot, {"study.json": target}, overwrite=True) == [target]
    assert target.read_text() == "snapshotted"


def test_the_writer_coalesces_marks_keeps_one_snapshot_in_flight_and_flushes_at_close(tmp_path, monkeypatch) -> None:
    db = tmp_path / "optuna.db"
    make_db(db, rows=2)
    real = driver_state.write_snapshot
    in_flight, most, calls = [0], [0], []

    def slow_snapshot(*args, **kwargs):
        in_flight[0] += 1
        most[0] = max(most[0], in_flight[0])
        time.sleep(0.2)
        try:
            snapshot = real(*args, **kwargs)
            calls.append(snapshot.reasons)
            return snapshot
        finally:
            in_flight[0] -= 1

    monkeypatch.setattr(driver_state, "write_snapshot", slow_snapshot)
    writer = SnapshotWriter(str(tmp_path / "bucket"), databases={"optuna.db": db}, files={}).start()
    began = time.perf_counter()
    for i in range(20):
        writer.mark_dirty(f"trial {i} ended")
    assert time.perf_counter() - began < 0.1, "mark_dirty must return at once"
    make_db(db, rows=2)  # written after the marks: the final snapshot at close holds it
    writer.close()
    assert most[0] == 1
    assert 2 <= len(calls) <= 4, calls  # 21 marks (20 + the close) in a few snapshots
    assert [r for reasons in calls for r in reasons] == [f"trial {i} ended" for i in range(20)] + ["driver ends"]
    latest = read_latest(str(tmp_path / "bucket"))
    assert latest.generation == len(calls) and latest.reasons == ("driver ends",)
    restore_snapshot(latest, {"optuna.db": tmp_path / "final.db"})
    assert dump(tmp_path / "final.db") == dump(db)
    # A resumed study's writer continues the generation count.
    monkeypatch.undo()
    again = SnapshotWriter(str(tmp_path / "bucket"), databases={"optuna.db": db}, files={}).start()
    again.close()
    assert read_latest(str(tmp_path / "bucket")).generation == len(calls) + 1


def test_a_failed_snapshot_is_logged_and_the_next_mark_retries(tmp_path, monkeypatch, caplog) -> None:
    db = tmp_path / "optuna.db"
    make_db(db, rows=2)
    failures = [1]
    real = driver_state.write_snapshot

    def flaky(*args, **kwargs):
        if failures[0]:
            failures[0] -= 1
            raise OSError("bucket unreachable")
        return real(*args, **kwargs)

    monkeypatch.setattr(driver_state, "write_snapshot", flaky)
    writer = SnapshotWriter(str(tmp_path / "bucket"), databases={"optuna.db": db}, files={}).start()
    writer.mark_dirty("first")
    assert writer.flush(timeout=30)
    assert writer.last_error == "OSError: bucket unreachable" and "bucket unreachable" in caplog.text
    writer.close()
    assert writer.last_error is None and read_latest(str(tmp_path / "bucket")).generation == 1


def test_sqlite_paths_of_urls() -> None:
    assert sqlite_path("sqlite:////abs/mlflow.db") == Path("/abs/mlflow.db")
    assert sqlite_path("sqlite:///rel.db?timeout=5") == Path("rel.db")
    assert sqlite_path("http://127.0.0.1:5000") is None
    assert sqlite_path("postgresql://u@h/db") is None
    assert sqlite_path("sqlite:///:memory:") is None


def test_latest_json_is_plain_data(tmp_path) -> None:
    (tmp_path / "f").write_text("x")
    write_snapshot(str(tmp_path / "b"), databases={}, files={"f": tmp_path / "f"}, reasons=("why",))
    manifest = json.loads((tmp_path / "b" / LATEST).read_text())
    assert manifest["generation"] == 1 and manifest["reasons"] == ["why"]
    assert manifest["files"]["f"] == {
        "size": 1,
        "sha256": hashlib.sha256(b"x").hexdigest(),
        "sqlite": False,
    }
