"""Cheap checks of what a user can get wrong, run before Ray starts or anything is written.

Each check raises ``PreflightError`` with one line that names the bad value and says what to do; the command
prints it and exits 2. Each costs at most a few seconds (a network check is bounded by ``timeout_s``, never
by a library's retries): it is far cheaper to refuse a study here than to find out in every trial.

- ``check_tracking_uri``: an MLflow server that does not answer, refuses access or is not MLflow; an SQLite store
  whose directory is missing or whose file is not a database; a database whose driver is not installed or whose
  server does not answer;
- ``check_optuna_storage``: the same for an Optuna RDB URL (``sqlite:///``, ``postgresql://``, ...);
- ``check_weights``: a state-dict file that does not load, or does not fit the architecture (``spa.models``);
- ``check_imagenet_weights``: ImageNet weights neither cached nor downloadable;
- ``check_writable_dir``: a storage path or cache directory that cannot be created or written; a URI whose
  scheme pyarrow cannot reach;
- ``check_address``: a Ray address (``host:port``) where nothing answers;
- ``check_resume_state``: a study manifest or Optuna database that is damaged, on ``--resume``.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from study.driver_state import sqlite_path, sqlite_problem

__all__ = [
    "PreflightError",
    "TIMEOUT_S",
    "check_address",
    "check_imagenet_weights",
    "check_optuna_storage",
    "check_resume_state",
    "check_tracking_uri",
    "check_weights",
    "check_writable_dir",
    "hide_password",
]

TIMEOUT_S = 8.0  # the longest a network check waits for an answer (the command answers within 15 s)
# What a tracking server answers cheaply and only MLflow answers this way (a list of experiments, as JSON).
MLFLOW_PROBE = "/api/2.0/mlflow/experiments/search?max_results=1"
# URI schemes pyarrow.fs (and so Ray Tune's storage) reaches, and the pyarrow module each needs.
STORAGE_SCHEMES = {
    "file": None,
    "s3": "pyarrow._s3fs",
    "gs": "pyarrow._gcsfs",
    "gcs": "pyarrow._gcsfs",
    "hdfs": "pyarrow._hdfs",
    "viewfs": "pyarrow._hdfs",
    "abfs": "pyarrow._azurefs",
    "abfss": "pyarrow._azurefs",
}
_T = TypeVar("_T")


class PreflightError(ValueError):
    """A bad input found before the study starts; one line."""


# --- tracking and Optuna storage -----------------------------------------------------------------------------------


def check_tracking_uri(uri: str, *, timeout_s: float = TIMEOUT_S) -> None:
    """The MLflow tracking URI answers (a server) or can be created and opened (SQLite) or reached (a database)."""
    flag = f"--tracking-uri {hide_password(uri)}"
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme in ("http", "https"):
        _check_mlflow_server(uri, flag, timeout_s)
    elif scheme == "sqlite":
        _check_sqlite_url(uri, flag)
    elif scheme.split("+", 1)[0] in ("postgresql", "postgres", "mysql", "mssql"):
        _check_database_url(uri, flag, timeout_s)


def check_optuna_storage(url: str, *, timeout_s: float = TIMEOUT_S) -> None:
    """An Optuna RDB storage URL (what ``optuna.storages.RDBStorage`` takes) that parses, whose driver is installed
    and whose database answers; a ``sqlite:///`` file whose directory exists."""
    flag = f"--optuna-storage {hide_password(url)}"
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception as error:  # noqa: BLE001 - SQLAlchemy's ArgumentError and friends
        raise PreflightError(
            f"{flag} is not a database URL ({error}); e.g. sqlite:////abs/optuna.db or "
            "postgresql://user:password@host:5432/optuna"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite_url(url, flag)
    else:
        _check_database_url(url, flag, timeout_s)


def hide_password(url: str) -> str:
    """``scheme://user:***@host/...``: a URL fit for an error message."""
    if "://" not in url or "@" not in url.split("://", 1)[1].split("/", 1)[0]:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.split("@", 1)
    if ":" in credentials:
        credentials = credentials.split(":", 1)[0] + ":***"
    return f"{scheme}://{credentials}@{host}"


def _check_mlflow_server(uri: str, flag: str, timeout_s: float) -> None:
    url = uri.rstrip("/") + MLFLOW_PROBE
    request = urllib.request.Request(url, headers=_mlflow_auth_headers())
    context = None
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        context = ssl._create_unverified_context()  # noqa: S323 - the user asked for it, as MLflow honours it

    def probe() -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:
                return response.status, response.read(1 << 16)
        except urllib.error.HTTPError as error:
            return error.code, b""

    try:
        status, body = _within(timeout_s, probe)
    except TimeoutError:
        raise PreflightError(
            f"{flag} does not answer within {timeout_s:g} s; start the MLflow server there "
            "(mlflow server --host 0.0.0.0 --port 5000 ...) or pass another --tracking-uri"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise PreflightError(
            f"{flag} does not answer ({reason}); start the MLflow server there or pass another --tracking-uri"
        ) from None
    if status in (401, 403):
        raise PreflightError(
            f"{flag} refuses access (HTTP {status}); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
            "(or MLFLOW_TRACKING_TOKEN)"
        )
    if status != 200:
        raise PreflightError(
            f"{flag} answers HTTP {status} to {MLFLOW_PROBE.split('?')[0]}: not an MLflow tracking server; "
            "check the host, port and path"
        )
    try:
        json.loads(body or b"{}")
    except ValueError:
        raise PreflightError(
            f"{flag} answers, but not as an MLflow tracking server does (no JSON at {MLFLOW_PROBE.split('?')[0]}); "
            "check the host, port and path"
        ) from None


def _mlflow_auth_headers() -> dict[str, str]:
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {}


def _check_sqlite_url(url: str, flag: str) -> None:
    path = sqlite_path(url)
    if path is None:
        return  # in memory, or a URL form we leave to SQLAlchemy
    path = Path(path).expanduser()
    if not path.parent.is_dir():
        raise PreflightError(f"{flag}: directory {path.parent} does not exist; create it or pass another path")
    if path.exists():
        if not path.is_file():
            raise PreflightError(f"{flag}: {path} is not a file; pass the path of an SQLite file")
        problem = sqlite_problem(path)
        if problem and path.stat().st_size > 0:
            raise PreflightError(f"{flag}: {path} is {problem}; move it away or pass another path")
    else:
        _check_can_create_in(path.parent, flag)


def _check_database_url(url: str, flag: str, timeout_s: float) -> None:
    """A server database: the SQLAlchemy driver is importable and the host's port answers (no login tried)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
        parsed.get_dialect().import_dbapi()
    except ImportError as error:
        raise PreflightError(
            f"{flag}: its database driver is not installed ({error}); pip install it "
            "(e.g. psycopg[binary] for postgresql://, psycopg2-binary for postgresql+psycopg2://)"
        ) from None
    except Exception as error:  # noqa: BLE001 - an unknown dialect
        raise PreflightError(f"{flag} is not a database URL SQLAlchemy knows ({error})") from None
    if parsed.host:
        default_ports = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
        port = parsed.port or default_ports.get(parsed.get_backend_name(), 0)
        if port:
            _check_port(parsed.host, port, flag, timeout_s, "start the database or check the host and port")


def _check_port(host: str, port: int, flag: str, timeout_s: float, remedy: str) -> None:
    def connect() -> None:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass

    try:
        _within(timeout_s, connect)
    except TimeoutError:
        raise PreflightError(f"{flag}: {host}:{port} does not answer within {timeout_s:g} s; {remedy}") from None
    except OSError as error:
        raise PreflightError(f"{flag}: {host}:{port} does not answer ({error.strerror or error}); {remedy}") from None


# --- Ray -----------------------------------------------------------------------------------------------------------


def check_address(address: str | None, *, timeout_s: float = TIMEOUT_S) -> None:
    """A Ray address of the form ``host:port`` (a GCS) answers; ``auto``, ``local`` and ``ray://`` are left to Ray."""
    if not address or address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise PreflightError(
            f"--address {address!r} is not allowed; allowed: auto, HOST:PORT (e.g. 10.0.0.5:6379) or ray://HOST:PORT"
        )
    _check_port(
        host, int(port), f"--address {address}", timeout_s, "start Ray there (ray start --head) or pass --address auto"
    )


# --- weights -------------------------------------------------------------------------------------------------------


def check_weights(path: str | os.PathLike[str], *, archs: Iterable[str], cifar_stems: Iterable[bool]) -> None:
    """A state-dict file loads (once, on the CPU) and fits every architecture a trial may build, with every stem
    its datasets need (``spa.models.build_resnet`` is the judge, as in a trial)."""
    from spa.models import WeightsError, build_resnet, load_backbone_state

    flag = f"--weights {path}"
    try:
        load_backbone_state(path)
    except WeightsError as error:
        raise PreflightError(f"{flag}: {error}; pass a file saved with torch.save(model.state_dict(), PATH)") from None
    except Exception as error:  # noqa: BLE001 - torch.load raises many kinds on a file that is not a state dict
        raise PreflightError(
            f"{flag} is not a PyTorch state dict (torch.load: {type(error).__name__}: {_first_sentence(error)}); "
            "pass a file saved with torch.save(model.state_dict(), PATH), or imagenet or none"
        ) from None
    for arch in sorted(set(archs)):
        for cifar_stem in sorted(set(cifar_stems)):
            try:
                build_resnet(arch, 10, cifar_stem=cifar_stem, weights=path)
            except (WeightsError, RuntimeError, KeyError, ValueError) as error:
                reason = _first_line(error).replace(f"weights {path} do not fit this architecture: ", "")
                raise PreflightError(
                    f"{flag} does not fit {arch} ({reason}); pass weights saved from a torchvision {arch}, "
                    "or another --arch"
                ) from None


def check_imagenet_weights(archs: Iterable[str], *, timeout_s: float = TIMEOUT_S) -> None:
    """``--weights imagenet``: torchvision's file is in the torch hub cache, or its server answers (each trial
    downloads it otherwise, and fails without a network)."""
    for arch in sorted(set(archs)):
        url, cached = _imagenet_file(arch)
        if cached.is_file():
            continue
        host = url.split("://", 1)[1].split("/", 1)[0]

        def probe(url: str = url) -> None:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s):
                pass

        try:
            _within(timeout_s, probe)
        except TimeoutError:
            reason = f"no answer within {timeout_s:g} s"
        except urllib.error.HTTPError as error:
            reason = f"HTTP {error.code}"
        except (urllib.error.URLError, OSError) as error:
            reason = str(getattr(error, "reason", error))
        else:
            continue
        raise PreflightError(
            f"--weights imagenet: the {arch} ImageNet weights are not in the torch hub cache ({cached}) and {host} "
            f"cannot be reached ({reason}); connect to the network once, or put {url.rsplit('/', 1)[1]} there"
        )


def _imagenet_file(arch: str) -> tuple[str, Path]:
    """torchvision's URL of the ImageNet weights of ``arch``, and where ``torch.hub`` caches them."""
    import torch

    from spa.models import ARCHITECTURES

    url = ARCHITECTURES[arch][1].url
    return url, Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]


# --- directories ---------------------------------------------------------------------------------------------------


def check_writable_dir(flag: str, location: str | os.PathLike[str]) -> None:
    """A local directory (or ``file://`` URI) that exists and is writable, or can be created; for another URI,
    a scheme pyarrow can reach with its module installed. Nothing is left behind."""
    text = str(location)
    if "://" in text:
        scheme, rest = text.split("://", 1)
        scheme = scheme.lower()
        if scheme not in STORAGE_SCHEMES:
            raise PreflightError(
                f"{flag} {text}: unknown scheme {scheme}://; allowed: a local path or "
                + ", ".join(f"{s}://" for s in STORAGE_SCHEMES)
            )
        if scheme == "file":
            text = rest
        else:
            module = STORAGE_SCHEMES[scheme]
            try:
                __import__(module)
            except ImportError:
                raise PreflightError(
                    f"{flag} {text}: this pyarrow has no {scheme}:// support ({module} is missing); "
                    "install a pyarrow built with it"
                ) from None
            if not rest.split("/", 1)[0]:
                raise PreflightError(f"{flag} {text} names no bucket; e.g. {scheme}://BUCKET/spa-study")
            return
    path = Path(text).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise PreflightError(f"{flag} {text}: {path} is a file, not a directory; pass a directory")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise PreflightError(f"{flag} {text}: {existing} is a file, so {path} cannot be created; pass another path")
    _check_can_create_in(existing, f"{flag} {text}")


def _check_can_create_in(directory: Path, flag: str) -> None:
    """Create and remove a file in ``directory``: the only sure test (permissions, a read-only mount, root)."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".spa-write-check-", dir=directory)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise PreflightError(
            f"{flag}: cannot write in {directory} ({error.strerror or error}); pass a path you may write"
        ) from None


# --- resume --------------------------------------------------------------------------------------------------------


def check_resume_state(
    *, manifest: Path, optuna_db: Path | None, study_name: str, remedy: str = "start a new study with another --name"
) -> None:
    """The study manifest is JSON and the Optuna database a sound SQLite file holding the study ``study_name``."""
    try:
        json.loads(manifest.read_text())
    except (OSError, ValueError) as error:
        raise PreflightError(f"--resume: {manifest} is unreadable ({_first_line(error)}); {remedy}") from None
    if optuna_db is None:
        return
    if not optuna_db.is_file():
        raise PreflightError(f"--resume: the Optuna database {optuna_db} is missing; {remedy}")
    problem = sqlite_problem(optuna_db)
    if problem is None:
        import sqlite3

        connection = sqlite3.connect(optuna_db.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            row = connection.execute("select count(*) from studies where study_name = ?", (study_name,)).fetchone()
            if not row[0]:
                problem = f"holds no Optuna study named {study_name!r}"
        except sqlite3.DatabaseError as error:
            problem = f"is not an Optuna database ({error})"
        finally:
            connection.close()
    else:
        problem = f"is {problem}"
    if problem:
        raise PreflightError(f"--resume: the Optuna database {optuna_db} {problem}; {remedy}")


# --- helpers -------------------------------------------------------------------------------------------------------


def _within(timeout_s: float, call: Callable[[], _T]) -> _T:
    """``call()`` in a daemon thread, waited for at most ``timeout_s`` (a name lookup is not bounded by socket
    timeouts); raises TimeoutError, or what ``call`` raised."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as error:  # noqa: BLE001 - handed to the caller
            outcome["error"] = error

    thread = threading.Thread(target=run, name="preflight", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _first_sentence(error: BaseException, limit: int = 160) -> str:
    sentence = _first_line(error).split(". ", 1)[0]
    return sentence if len(sentence) <= limit else sentence[: limit - 3] + "..."


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(error).__name__
