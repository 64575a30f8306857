"""``study.preflight``: each bad input is one line naming the value and what to do, found in seconds, leaving
nothing behind."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from torchvision import models as tv_models

from study.outcome import EVERY_TRIAL_FAILED, failures_verdict
from study.preflight import (
    PreflightError,
    check_address,
    check_imagenet_weights,
    check_optuna_storage,
    check_resume_state,
    check_tracking_uri,
    check_weights,
    check_writable_dir,
    hide_password,
)


def one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(PreflightError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and message, message
    return message


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Answer(BaseHTTPRequestHandler):
    status, body = 200, b'{"experiments": []}'

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_server():
    servers = []

    def serve(status: int, body: bytes) -> str:
        handler = type("Handler", (Answer,), {"status": status, "body": body})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


# --- tracking URI --------------------------------------------------------------------------------------------------


def test_a_tracking_server_that_never_answers_is_named_within_the_timeout() -> None:
    silent = socket.socket()  # accepts connections (the backlog) but never answers a request
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
    began = time.perf_counter()
    try:
        message = one_line_error(check_tracking_uri, uri, timeout_s=1.0)
    finally:
        silent.close()
    assert time.perf_counter() - began < 5
    assert message.startswith(f"--tracking-uri {uri} does not answer within 1 s; start the MLflow server")


def test_a_tracking_server_that_is_not_there_or_not_mlflow(http_server) -> None:
    refused = f"http://127.0.0.1:{free_port()}"
    message = one_line_error(check_tracking_uri, refused, timeout_s=5)
    assert message.startswith(f"--tracking-uri {refused} does not answer (") and "refused" in message.lower()
    assert "404" in one_line_error(check_tracking_uri, http_server(404, b"no"), timeout_s=5)
    assert "MLFLOW_TRACKING_USERNAME" in one_line_error(check_tracking_uri, http_server(401, b""), timeout_s=5)
    assert "not as an MLflow" in one_line_error(check_tracking_uri, http_server(200, b"<html>"), timeout_s=5)
    check_tracking_uri(http_server(200, b'{"experiments": []}'), timeout_s=5)  # MLflow's answer


def test_sqlite_tracking_and_optuna_stores(tmp_path) -> None:
    missing = f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}"
    assert "nowhere does not exist; create it" in one_line_error(check_tracking_uri, missing)
    (tmp_path / "junk.db").write_text("not a database at all, just text")
    message = one_line_error(check_tracking_uri, f"sqlite:///{tmp_path / 'junk.db'}")
    assert "junk.db is not an SQLite database" in message and "move it away" in message
    check_tracking_uri(f"sqlite:///{tmp_path / 'new.db'}")  # to be created
    sqlite3.connect(tmp_path / "real.db").execute("create table t (x)").connection.commit()
    check_tracking_uri(f"sqlite:///{tmp_path / 'real.db'}")
    check_optuna_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert "does not exist" in one_line_error(check_optuna_storage, f"sqlite:///{tmp_path / 'no' / 'optuna.db'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.db", "real.db"], "a check must create nothing"


def test_database_urls_need_their_driver_and_a_server_that_answers() -> None:
    message = one_line_error(check_optuna_storage, "not a url at all")
    assert message.startswith("--optuna-storage not a url at all is not a database URL")
    port = free_port()
    try:
        import psycopg  # noqa: F401

        has_driver = True
    except ImportError:
        has_driver = False
    url = f"postgresql://study:secret@127.0.0.1:{port}/optuna"
    message = one_line_error(check_optuna_storage, url, timeout_s=5)
    assert "secret" not in message and "study:***@" in message
    if has_driver:
        assert f"127.0.0.1:{port} does not answer" in message
    else:
        assert "database driver is not installed" in message and "pip install" in message
    assert hide_password("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert hide_password("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


# --- Ray address ---------------------------------------------------------------------------------------------------


def test_a_ray_address_where_nothing_listens() -> None:
    address = f"127.0.0.1:{free_port()}"
    message = one_line_error(check_address, address, timeout_s=5)
    assert message.startswith(f"--address {address}: {address} does not answer") and "ray start --head" in message
    assert "allowed: auto, HOST:PORT" in one_line_error(check_address, "nonsense")
    for fine in (None, "auto", "local", "ray://10.0.0.1:10001"):
        check_address(fine)


# --- weights -------------------------------------------------------------------------------------------------------


def test_weights_must_load_and_fit_the_architecture(tmp_path) -> None:
    resnet18 = tmp_path / "r18.pt"
    torch.save(tv_models.resnet18().state_dict(), resnet18)
    check_weights(resnet18, archs=["resnet18"], cifar_stems=[False, True])
    message = one_line_error(check_weights, resnet18, archs=["resnet50"], cifar_stems=[False])
    assert (
        message.startswith(f"--weights {resnet18} does not fit resnet50 (shape mismatch at ")
        and "another --arch" in message
    )

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage, not a pickle or a zip")
    message = one_line_error(check_weights, junk, archs=["resnet18"], cifar_stems=[False])
    assert message.startswith(f"--weights {junk} is not a PyTorch state dict (torch.load: ") and "torch.save" in message

    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    assert "does not hold a state dict" in one_line_error(check_weights, tensor, archs=["resnet18"], cifar_stems=[0])

    cifar = tv_models.resnet18()
    cifar.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    torch.save(cifar.state_dict(), tmp_path / "cifar.pt")
    check_weights(tmp_path / "cifar.pt", archs=["resnet18"], cifar_stems=[True])
    message = one_line_error(check_weights, tmp_path / "cifar.pt", archs=["resnet18"], cifar_stems=[False])
    assert "CIFAR stem" in message


def test_imagenet_weights_must_be_cached_or_downloadable(tmp_path, monkeypatch) -> None:
    from study import preflight

    real_url, real_path = preflight._imagenet_file("resnet50")  # torchvision's, in torch.hub's cache
    assert real_url.startswith("https://download.pytorch.org/") and real_path.name == real_url.rsplit("/", 1)[1]
    url = f"http://127.0.0.1:{free_port()}/models/resnet50-0676ba61.pth"
    cached = tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    monkeypatch.setattr(preflight, "_imagenet_file", lambda arch: (url, cached))
    message = one_line_error(check_imagenet_weights, ["resnet50"], timeout_s=5)
    assert message.startswith(
        f"--weights imagenet: the resnet50 ImageNet weights are not in the torch hub cache ({cached})"
    )
    assert "127.0.0.1" in message and "put resnet50-0676ba61.pth there" in message
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    check_imagenet_weights(["resnet50"], timeout_s=5)


# --- directories ---------------------------------------------------------------------------------------------------


def test_storage_paths_that_cannot_be_created_or_written(tmp_path) -> None:
    (tmp_path / "a-file").write_text("x")
    under_file = tmp_path / "a-file" / "runs"
    message = one_line_error(check_writable_dir, "--storage-path", under_file)
    assert message.startswith(f"--storage-path {under_file}: {tmp_path / 'a-file'} is a file")
    assert "is a file, not a directory" in one_line_error(check_writable_dir, "--cache-dir", tmp_path / "a-file")
    message = one_line_error(check_writable_dir, "--storage-path", "/proc/spa-study/runs")
    assert message.startswith("--storage-path /proc/spa-study/runs: cannot write in /proc (")
    assert "unknown scheme ftp://" in one_line_error(check_writable_dir, "--storage-path", "ftp://host/dir")
    assert "names no bucket" in one_line_error(check_writable_dir, "--storage-path", "s3:///dir")
    message = one_line_error(check_writable_dir, "--storage-path", f"file://{under_file}")
    assert "is a file" in message
    check_writable_dir("--storage-path", tmp_path / "new" / "deeper")
    check_writable_dir("--storage-path", f"file://{tmp_path / 'bucket'}")
    check_writable_dir("--storage-path", "s3://bucket/spa-study")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"], "a check must leave nothing behind"


# --- resume --------------------------------------------------------------------------------------------------------


def test_a_damaged_manifest_or_optuna_database_on_resume(tmp_path) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    manifest = tmp_path / "study.json"
    manifest.write_text(json.dumps({"name": "s"}))
    db = tmp_path / "optuna.db"
    optuna.create_study(study_name="s", storage=f"sqlite:///{db}")
    check_resume_state(manifest=manifest, optuna_db=db, study_name="s")

    message = one_line_error(check_resume_state, manifest=manifest, optuna_db=db, study_name="other")
    assert message == (
        f"--resume: the Optuna database {db} holds no Optuna study named 'other'; start a new study with another --name"
    )
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(db.read_bytes()[:100] + b"\xff" * 4000)
    message = one_line_error(check_resume_state, manifest=manifest, optuna_db=damaged, study_name="s", remedy="fix it")
    assert message.startswith(f"--resume: the Optuna database {damaged} is ") and message.endswith("; fix it")
    (tmp_path / "text.db").write_text("hello")
    assert "bad header" in one_line_error(check_resume_state, manifest=manifest, optuna_db=tmp_path / "text.db",
                                          study_name="s")  # fmt: skip
    manifest.write_text('{"name": "s", ')
    message = one_line_error(check_resume_state, manifest=manifest, optuna_db=db, study_name="s")
    assert message.startswith(f"--resume: {manifest} is unreadable (")


# --- exit status ---------------------------------------------------------------------------------------------------


def test_the_exit_status_says_whether_every_trial_failed() -> None:
    assert failures_verdict(4, 0) == (0, None)
    assert failures_verdict(4, 1, "NonFiniteLossError: loss became nan") == (
        0,
        "1 of 4 trials failed; the first: NonFiniteLossError: loss became nan",
    )
    status, line = failures_verdict(2, 2, "WeightsError:\n  bad")
    assert (
        status == EVERY_TRIAL_FAILED == 1 and line == "every one of the 2 trials failed; the first: WeightsError: bad"
    )
