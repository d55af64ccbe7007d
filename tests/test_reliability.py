"""A run's record stays true after divergence, kills and cut files: nothing lost, no NaN written."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, SUBPROCESS_ENV, TINY, compose_config

from dsnn_cli.commands.train import run_train
from dsnn_cli.rundir import RunDir, atomic_write_json
from dsnn_cli.training.checkpoint import load_checkpoint
from dsnn_cli.training.loop import Diverged

DIVERGING = [*TINY, "model=resnet", "loss=cross_entropy", "trainer.limit_batches=null", "optim.lr=1e6"]


def strict_json(text: str):
    """json.loads that refuses the tokens NaN and Infinity (which are not JSON)."""

    def refuse(token):
        raise ValueError(f"non-JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def assert_records_are_finite(run_dir):
    strict_json((run_dir / "summary.json").read_text())
    for line in (
        (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else []
    ):
        strict_json(line)
    for path in (run_dir / "checkpoints").glob("*.pt"):
        for key, tensor in load_checkpoint(path)["state_dict"].items():
            if tensor.is_floating_point():
                assert torch.isfinite(tensor).all(), f"{path.name}: {key}"


def test_a_diverging_run_retries_at_lower_rates_then_fails_with_finite_records(tmp_path):
    cfg = compose_config("train", [*DIVERGING, "trainer.max_epochs=2", "trainer.divergence_retries=2"])
    with pytest.raises(Diverged, match="diverged"):
        run_train(cfg, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "optim.lr" in summary["error"]
    assert_records_are_finite(tmp_path / "run")


def test_a_diverging_epoch_restarts_from_its_start_and_the_run_recovers(tmp_path):
    cfg = compose_config(
        "train",
        [
            *DIVERGING,
            "trainer.max_epochs=2",
            "trainer.divergence_retries=6",
            "trainer.divergence_lr_factor=0.01",
        ],
    )
    summary = run_train(cfg, tmp_path / "run")
    assert summary["status"] == "done" and summary["divergence_retries"] >= 1
    assert math.isfinite(summary["test_acc"])
    assert_records_are_finite(tmp_path / "run")
    lrs = [row["lr"] for row in RunDir(tmp_path / "run").metrics()]
    assert lrs[0] <= 1e6 * 0.01 ** summary["divergence_retries"] * (1 + 1e-9)  # the rate really fell


def test_no_nan_reaches_a_json_record(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"loss": float("nan"), "rows": [1.0, float("inf")], "ok": 0.5})
    assert strict_json((tmp_path / "x.json").read_text()) == {"loss": None, "rows": [1.0, None], "ok": 0.5}
    run = RunDir(tmp_path)
    run.append_metrics({"epoch": 1, "train_loss": float("nan")})
    assert strict_json((tmp_path / "metrics.jsonl").read_text()) == {"epoch": 1, "train_loss": None}


def test_a_cut_metrics_line_neither_blocks_resume_nor_survives_it(tmp_path):
    cfg = compose_config("train", [*TINY, "model=resnet", "trainer.limit_batches=2", "trainer.max_epochs=2"])
    run_dir = tmp_path / "run"
    run_train(cfg, run_dir)
    metrics = run_dir / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"epoch": 3, "train_lo')  # a crash mid-write
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["status"] = "running"  # as a killed run leaves it
    (run_dir / "summary.json").write_text(json.dumps(summary))
    cfg.trainer.resume = True
    cfg.trainer.max_epochs = 3
    assert run_train(cfg, run_dir)["status"] == "done"
    rows = [strict_json(line) for line in metrics.read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]


def test_sigterm_checkpoints_marks_the_run_interrupted_and_resume_finishes_it(tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, "model=resnet", "trainer.limit_batches=null", "data.n_train=4000", "trainer.max_epochs=30"]
    process = subprocess.Popen(
        [sys.executable, "-m", "dsnn_cli", "train", *args, f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        env={**os.environ, **SUBPROCESS_ENV, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "checkpoints" / "last.pt").exists():
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted (SIGTERM)" in stderr and "Traceback" not in stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "trainer.resume=true" in summary["error"]
    done = summary["epochs"]
    assert 1 <= done < 30  # stopped mid-training, after at least one checkpoint
    assert [row["epoch"] for row in RunDir(run_dir).metrics()] == list(range(1, done + 1))  # records agree
    cfg = compose_config("train", [*args, "trainer.resume=true", f"trainer.max_epochs={done + 1}"])
    resumed = run_train(cfg, run_dir)
    assert resumed["status"] == "done" and resumed["epochs"] == done + 1


def dead_pid() -> int:
    """The PID of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def write_lock(run_dir, pid: int) -> None:
    import socket

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "x"}))


def test_a_run_directory_is_owned_by_one_process_and_a_dead_owner_is_recognised(tmp_path, caplog):
    from dsnn_cli.errors import UsageError

    run = RunDir(tmp_path / "run")
    write_lock(run.path, os.getpid())  # a live owner
    with pytest.raises(UsageError, match="is in use by process"):
        with run.owned():
            pass
    run.summary = {"status": "running"}
    assert run.live_status() == "running"
    write_lock(run.path, dead_pid())  # its process is gone (SIGKILL, a lost node)
    assert run.live_status() == "stale"
    with run.owned():
        assert json.loads((run.path / "run.lock").read_text())["pid"] == os.getpid()
    assert not (run.path / "run.lock").exists()
    assert "stale lock" in caplog.text


def test_a_second_train_into_a_busy_directory_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    write_lock(run_dir, os.getpid())
    from dsnn_cli.errors import UsageError

    with pytest.raises(UsageError, match="is in use by process"):
        run_train(compose_config("train", [*TINY, "model=resnet"]), run_dir)
    assert not (run_dir / "summary.json").exists()  # nothing of the owner's run was touched


def test_an_unfinished_run_continues_only_with_resume(tmp_path, monkeypatch):
    from dsnn_cli.errors import UsageError

    cfg = compose_config("train", [*TINY, "model=resnet", "trainer.limit_batches=2", "trainer.max_epochs=2"])
    import dsnn_cli.training.loop as training

    real_save = training.save_training_state

    def save_then_stop(run, model, optimizer, generator, state, best):
        real_save(run, model, optimizer, generator, state, best)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "save_training_state", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_train(cfg, tmp_path / "run")
    monkeypatch.setattr(training, "save_training_state", real_save)
    with pytest.raises(UsageError, match="unfinished run .*trainer.resume=true"):
        run_train(cfg, tmp_path / "run")
    rows = RunDir(tmp_path / "run").metrics()
    assert [row["epoch"] for row in rows] == [1]  # no duplicate rows from a restart
