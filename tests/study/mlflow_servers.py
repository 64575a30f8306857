"""Test helpers: a real ``mlflow server`` / ``mlflow ui`` on a free loopback port, and headless Chromium reading a page.

Both are started as users start them (the installed ``mlflow`` command, Debian's ``chromium``), and stopped by
process id when the test ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MlflowServer", "free_port", "mlflow_server", "find_chromium", "CHROMIUM_MISSING", "dump_dom"]

STARTUP_TIMEOUT_S = 180  # a 2-core machine shared by other jobs: the server imports MLflow and migrates sqlite
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_MISSING = "no Chromium on this machine (CI installs Debian's 'chromium' in .ci/run; apt-get install chromium)"


@dataclass(frozen=True)
class MlflowServer:
    url: str  # http://127.0.0.1:PORT: the tracking URI and the UI
    backend_store_uri: str
    artifacts: Path | None  # --artifacts-destination, for `mlflow server`
    log: Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _mlflow_command() -> list[str]:
    executable = Path(sys.executable).with_name("mlflow")
    return [str(executable)] if executable.exists() else [sys.executable, "-m", "mlflow"]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _stop(process: subprocess.Popen) -> None:
    """Stop the server's process group (uvicorn/gunicorn run workers under it), by its id."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)


@contextmanager
def mlflow_server(
    directory: Path, *, command: str = "server", backend_store_uri: str | None = None, extra: Sequence[str] = ()
) -> Iterator[MlflowServer]:
    """``mlflow server`` (sqlite store and ``--artifacts-destination`` in ``directory``) or ``mlflow ui`` (over
    ``backend_store_uri``) on a free loopback port; yields once ``/health`` answers, stops it on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    backend = backend_store_uri or f"sqlite:///{directory / 'mlflow.db'}"
    artifacts = directory / "artifacts" if command == "server" else None
    port = free_port()
    args = [*_mlflow_command(), command, "--backend-store-uri", backend, "--host", "127.0.0.1", "--port", str(port)]
    # One worker: uvicorn's supervisor restarts workers that miss its health pings, and on a busy 2-core machine
    # the default 4 workers keep missing them while they import MLflow (observed: none ever served).
    args += ["--workers", "1"]
    if artifacts is not None:
        args += ["--artifacts-destination", str(artifacts)]
    log = directory / f"mlflow-{command}-{port}.log"
    env = {**os.environ, "MLFLOW_ENABLE_TELEMETRY": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [*args, *extra], stdout=output, stderr=subprocess.STDOUT, cwd=directory, env=env, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _healthy(url):
            if process.poll() is not None:
                raise RuntimeError(f"mlflow {command} exited with {process.returncode}: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"mlflow {command} not healthy after {STARTUP_TIMEOUT_S}s: {log.read_text()[-2000:]}"
                )
            time.sleep(0.5)
        yield MlflowServer(url, backend, artifacts, log)
    finally:
        _stop(process)


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def dump_dom(url: str, *, budget_ms: int = 15000, timeout_s: float = 120) -> str:
    """The DOM of ``url`` after ``budget_ms`` of virtual time in headless Chromium (the React app has fetched and
    rendered by then: virtual time only advances while the page has nothing else to do)."""
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError(CHROMIUM_MISSING)
    with tempfile.TemporaryDirectory(prefix="spa-chromium-") as profile:
        result = subprocess.run(
            [
                chromium,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--window-size=1600,1000",
                f"--virtual-time-budget={budget_ms}",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    if result.returncode != 0 or not result.stdout.strip():
        raise RuntimeError(f"chromium exited with {result.returncode}: {result.stderr[-2000:]}")
    return result.stdout
