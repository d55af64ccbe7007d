"""Run directories: atomic artifact writes and the run's summary.json.

A run directory is self-describing: the resolved config, the log, per-epoch metrics,
checkpoints that carry the model config, attack results, and ``summary.json`` with the
status (``running``, ``done``, ``failed``), the headline numbers, the seed, the git commit
and the versions that produced them.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from dsnn_cli.errors import UsageError

SUMMARY = "summary.json"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"


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


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


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

    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.path / METRICS, "a") as handle:
            handle.write(json.dumps(row) + "\n")

    def reset_metrics(self, keep_epochs: int) -> None:
        """Drop metric rows past `keep_epochs` (a resumed run rewrites them)."""
        path = self.path / METRICS
        if not path.exists():
            return
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        kept = [row for row in rows if row.get("epoch", 0) <= keep_epochs]
        atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in kept))


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
