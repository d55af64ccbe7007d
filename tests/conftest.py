"""Shared fixtures: Hydra composition without the CLI, and one tiny trained run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import compose_config

REPO = Path(__file__).resolve().parents[1]

# Tiny and fast: used by every test that trains.
TINY = [
    "data=synthetic",
    "debug=smoke",
    "data.image_size=16",
    "data.n_train=400",
    "data.n_test=200",
    "data.val_size=50",
    "model.widths=[4,8,16]",  # the default's ratios: unshuffle keeps half, half, a quarter
]


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `dsnn ARGS` in a subprocess, as a user would."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **SUBPROCESS_ENV, **(env or {})}
    full_env.pop("DSNN_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "dsnn_cli", *args],
        cwd=cwd or REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def kill_cli_when(ready, *args: str, timeout: float = 300) -> int:
    """Start `dsnn ARGS` in its own process group, SIGKILL the whole group as soon as `ready()`
    holds (or the command ends, or `timeout` s pass), and return its exit status."""
    import signal
    import time

    env = {**os.environ, "PYTHONUNBUFFERED": "1", **SUBPROCESS_ENV}
    env.pop("DSNN_DEBUG", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "dsnn_cli", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while not ready() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    return process.returncode


def train_tiny(tmp_path_factory, model: str, epochs: int) -> Path:
    """Train `model` on tiny synthetic data for whole epochs; returns the run directory."""
    from dsnn_cli.commands.train import run_train

    out = tmp_path_factory.mktemp("run") / model
    overrides = [*TINY, f"model={model}", f"trainer.max_epochs={epochs}", "trainer.limit_batches=null"]
    run_train(compose_config("train", overrides), out)
    return out


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A `resnet` trained for three epochs on synthetic data (shared, read-only)."""
    return train_tiny(tmp_path_factory, "resnet", 3)


@pytest.fixture(scope="session")
def trained_lipschitz_run(tmp_path_factory) -> Path:
    """A `lipschitz` (orthogonal, certified) net trained for two epochs (shared, read-only)."""
    return train_tiny(tmp_path_factory, "lipschitz", 2)


# Tests use tiny tensors, where threads only add synchronisation (and on a loaded 2-core
# machine, spin-waiting): one thread is both faster and steadier.
torch.set_num_threads(1)
SUBPROCESS_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
