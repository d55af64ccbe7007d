"""Run directories: atomic artifact writes and the run's summary.json.

A run directory is self-describing: the resolved config, the log, per-epoch metrics,
checkpoints that carry the model config, attack results, and ``summary.json`` with the
status (``running``, ``done``, ``failed``), the headline numbers, the seed, the git commit
and the versions that produced them.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dsnn_cli.errors import UsageError

log = logging.getLogger("dsnn.rundir")

SUMMARY = "summary.json"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
LOCK = "run.lock"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, then rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def finite_json(data: Any) -> Any:
    """`data` with every non-finite float replaced by None: JSON has no NaN, and a reader of a
    record must never meet one (json.dumps would write the invalid token `NaN`)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite_json(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(value) for value in data]
    return data


def to_json(data: Any, indent: int | None = None) -> str:
    return json.dumps(finite_json(data), indent=indent, allow_nan=False)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, to_json(data, indent=2) + "\n")


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def git_commit() -> str | None:
    """The commit of the dsnn source tree, with '-dirty' when it has local changes."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=source,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return commit.stdout.strip() + ("-dirty" if status.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    import torch

    from dsnn_cli import __version__

    return {"dsnn": __version__, "torch": torch.__version__}


class RunDir:
    """The output directory of one training run and its summary."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.summary: dict[str, Any] = read_json(self.path / SUMMARY) or {}

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def status(self) -> str | None:
        return self.summary.get("status")

    def live_status(self) -> str | None:
        return live_status(self.path, self.status())

    def started(self) -> bool:
        """Whether an epoch has been checkpointed (`checkpoints/last.pt`): there is something to resume."""
        return (self.checkpoints / "last.pt").is_file()

    def refuse_if_unfinished(self, resume: bool) -> None:
        """A directory with checkpoints of an unfinished run continues only with trainer.resume."""
        if not resume and self.summary and self.started():
            raise UsageError(
                f"hydra.run.dir={self.path} holds an unfinished run (status {self.live_status()}, "
                f"{self.summary.get('epochs', 0)} epochs): continue it with trainer.resume=true, "
                "or choose a new directory"
            )

    @contextmanager
    def owned(self) -> Iterator[None]:
        """Hold the directory's lock for the block: one process writes a run at a time."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = take_lock(self.path / LOCK)
        try:
            yield
        finally:
            release_lock(self.path / LOCK, fd)

    def refuse_if_finished(self) -> None:
        if self.status() == "done":
            raise UsageError(
                f"hydra.run.dir={self.path} already holds a finished run; "
                "choose a new directory or leave hydra.run.dir unset"
            )

    def start(self, config_yaml: str, seed: int, extra: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / CONFIG, config_yaml)
        self.summary = {
            "status": "running",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **extra,
            "test_acc": None,
            "val_acc": None,
            "lipschitz_bound": None,
            "certified": None,
            "n_params": None,
            "epochs": 0,
            "seconds": 0.0,
            "seed": seed,
            "git_commit": git_commit(),
            "versions": versions(),
        }
        self.write()

    def update(self, **values: Any) -> None:
        self.summary.update(values)
        self.write()

    def write(self) -> None:
        atomic_write_json(self.path / SUMMARY, self.summary)

    def metrics(self) -> list[dict[str, Any]]:
        """The per-epoch rows; a line that does not parse (a file cut by a crash of an older
        version, or edited by hand) is skipped with a warning, never fatal."""
        path = self.path / METRICS
        if not path.exists():
            return []
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                log.warning("%s line %d is not JSON; skipped", path, number)
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Add one epoch's row; the whole file is rewritten atomically, so a kill leaves the old
        file or the new one, never a partial line."""
        self.write_metrics([*self.metrics(), row])

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        atomic_write_text(self.path / METRICS, "".join(to_json(row) + "\n" for row in rows))

    def reset_metrics(self, keep_epochs: int) -> None:
        """Drop metric rows past `keep_epochs` (a resumed run rewrites them)."""
        if (self.path / METRICS).exists():
            self.write_metrics([row for row in self.metrics() if row.get("epoch", 0) <= keep_epochs])


def live_status(path: Path, status: str | None) -> str | None:
    """The recorded status, except that a run recorded as running whose process is gone
    (killed without a word: SIGKILL, a node lost) reads as `stale`."""
    if status == "running" and lock_owner(Path(path) / LOCK) is None:
        return "stale"
    return status


def this_process() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def lock_owner(path: Path) -> dict[str, Any] | None:
    """Who holds the lock at `path` (its PID, host and start), or None when nobody does.

    Held means an open `flock` on the file: the kernel (or the NFS lock manager) drops it when
    its process dies however it dies, so a killed run never leaves a lock that looks held.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        owner = read_json(path)
        return owner if isinstance(owner, dict) else {}
    finally:
        os.close(fd)
    return None


def take_lock(path: Path) -> int:
    """Take the exclusive lock at `path`; returns the descriptor that holds it (`release_lock`).

    Two processes that find the same stale file cannot both win: the lock is the flock, not
    the file's existence, and a taker whose file was replaced under it (by a release between
    its open and its flock) tries again on the new file.
    """
    for _ in range(5):
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            owner = read_json(path) or {}
            raise UsageError(
                f"{path.parent} is in use by process {owner.get('pid', '?')} on {owner.get('host', '?')} "
                f"(since {owner.get('started', '?')}): wait for it, or choose another hydra.run.dir"
            ) from None
        if not same_file(fd, path):
            os.close(fd)
            continue
        if os.fstat(fd).st_size:
            log.warning("taking over the stale lock %s (its process is gone)", path)
        os.ftruncate(fd, 0)
        os.write(fd, to_json(this_process()).encode())
        return fd
    raise UsageError(f"could not take the lock {path}: other processes keep replacing it")


def release_lock(path: Path, fd: int) -> None:
    """Remove the lock file, then drop the flock (in that order: a waiting taker re-checks)."""
    Path(path).unlink(missing_ok=True)
    os.close(fd)


def same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


def latest_finished_run(root: Path | str = "outputs") -> Path | None:
    """The most recently finished classification run under `root` (by its summary's mtime), or None.

    Why: `dsnn attack eps=0.3` right after `dsnn train` should attack that run, not fail.
    """
    found = []
    for path in Path(root).glob("**/" + SUMMARY):
        summary = read_json(path)
        if (
            isinstance(summary, dict)
            and summary.get("status") == "done"
            and summary.get("test_acc") is not None
        ):
            found.append((path.stat().st_mtime, path.parent))
    return max(found)[1] if found else None
