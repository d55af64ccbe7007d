"""Beyond one CPU, as far as a CPU can show it: live metrics, memory, bfloat16, compilation."""

from __future__ import annotations

import csv
import platform
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_config, run_cli

from dsnn_cli import devices
from dsnn_cli.commands.train import run_train
from dsnn_cli.errors import UsageError
from dsnn_cli.rundir import RunDir

SHORT = [*TINY, "model=lipschitz", "trainer.max_epochs=3", "trainer.limit_batches=4"]


FAULTS_PER_CYCLE = """
import resource, torch
from dsnn_cli.devices import keep_freed_memory
def faults(cycles=8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(cycles):
        torch.empty(2**24).fill_(1.0)  # 64 MiB, written, freed
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / cycles
plain = faults()
kept = keep_freed_memory()
faults()  # the first cycle after faults the block in once
print(plain, kept, faults())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_kept_memory_is_not_faulted_in_again_each_step():
    """glibc maps a 64 MiB block afresh at each allocation (16,384 page faults of 4 KiB);
    with the memory kept, the same allocation reuses pages already in the process."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", FAULTS_PER_CYCLE], capture_output=True, text=True, check=True)
    plain, kept, faults = out.stdout.split()
    assert kept == "True"
    assert float(plain) >= 32  # fresh pages each cycle: 16,384 of 4 KiB (or 32 huge pages)
    assert float(faults) < float(plain) / 10


def test_the_csv_logger_writes_the_metrics_rows(tmp_path):
    run_train(compose_config("train", [*SHORT, "logger=csv"]), tmp_path / "run")
    rows = RunDir(tmp_path / "run").metrics()
    with open(tmp_path / "run" / "metrics.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in table] == [row["epoch"] for row in rows] == [1, 2, 3]
    assert [float(r["val_acc"]) for r in table] == [row["val_acc"] for row in rows]


def test_the_tensorboard_logger_writes_steps_epochs_and_hyperparameters(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra (pip install 'dsnn[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    overrides = [*SHORT, "logger=tensorboard", "logger.log_every_n_steps=2", "loss.adversarial.eps=null"]
    summary = run_train(compose_config("train", overrides), tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    scalars = events.Tags()["scalars"]
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6, 8, 10, 12]  # 4 steps x 3 epochs
    rows = RunDir(tmp_path / "run").metrics()
    assert [e.value for e in events.Scalars("epoch/val_acc")] == pytest.approx([r["val_acc"] for r in rows])
    assert "epoch/peak_memory_mb" in scalars
    (final,) = events.Scalars("final/test_acc")  # add_hparams: the config with the final figures
    assert final.value == pytest.approx(summary["test_acc"])
    assert "final/certified@0.3" in scalars
    session = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    assert b"loss.eps" in session and b"model.name" in session  # the config as hyperparameters
    assert summary["status"] == "done"


def test_a_missing_logger_back_end_or_an_unknown_logger_is_one_line(tmp_path, monkeypatch):
    valid = r"\(valid: csv, jsonl, mlflow, tensorboard\)"
    with pytest.raises(UsageError, match=rf"unknown logger 'wandb' {valid}"):
        run_train(compose_config("train", [*SHORT, "logger.name=wandb"]), tmp_path / "run")
    monkeypatch.setitem(__import__("sys").modules, "tensorboard", None)  # as if not installed
    with pytest.raises(UsageError, match=r"pip install 'dsnn\[tensorboard\]'"):
        run_train(compose_config("train", [*SHORT, "logger=tensorboard"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_memory_is_reported_and_does_not_grow_over_epochs(tmp_path):
    """A fresh process (a peak would hide a leak in a long test session), ten epochs: the
    resident memory after epoch 3 stays within a few MB of what it is at epoch 10."""
    run_dir = tmp_path / "run"
    args = [*TINY, "model=lipschitz", "trainer.max_epochs=10", "trainer.limit_batches=null"]
    args += ["data.n_train=600"]
    done = run_cli("train", *args, f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr
    rows = RunDir(run_dir).metrics()
    resident = [row["rss_mb"] for row in rows]
    assert all(r > 0 for r in resident)
    assert all(row["peak_memory_mb"] >= r for row, r in zip(rows, resident, strict=True))
    assert max(resident[3:]) - resident[2] < 8.0, resident
    assert RunDir(run_dir).summary["peak_memory_mb"] >= max(resident)


def test_bf16_training_runs_in_bfloat16_and_certifies_in_float64(tmp_path, monkeypatch):
    runs = {}
    for precision in ("32", "bf16"):
        runs[precision] = run_train(
            compose_config("train", [*SHORT, f"trainer.precision={precision}"]), tmp_path / precision
        )
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx2", "amx_bf16"})  # a CPU with AMX-BF16
    runs["auto"] = run_train(compose_config("train", [*SHORT, "trainer.precision=auto"]), tmp_path / "auto")
    losses = {p: [r["train_loss"] for r in RunDir(tmp_path / p).metrics()] for p in runs}
    assert losses["32"] != losses["bf16"]  # autocast was really on
    assert losses["auto"] == losses["bf16"] and runs["auto"]["precision"] == "bf16"
    assert runs["32"]["precision"] == "32"
    assert "precision: auto" in (tmp_path / "auto" / "config.yaml").read_text()  # the choice as asked
    assert all(loss == loss for loss in losses["bf16"])  # finite (NaN != NaN)
    bf16 = runs["bf16"]
    assert bf16["status"] == "done" and bf16["lipschitz_bound"] <= 1 + 1e-5
    assert bf16["certified"] and "precision: bf16" in (tmp_path / "bf16" / "config.yaml").read_text()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [({"avx2", "fma"}, "32"), ({"avx512f", "amx_tile", "amx_bf16"}, "bf16"), (set(), "32")],
)
def test_auto_precision_is_bf16_only_on_a_cpu_with_a_bf16_matrix_engine(flags, expected, monkeypatch):
    monkeypatch.setattr(devices, "cpu_flags", lambda: flags)
    assert devices.training_precision("auto", torch.device("cpu")) == expected
    assert devices.training_precision("32", torch.device("cpu")) == "32"  # an explicit choice stays
    assert devices.training_precision("bf16", torch.device("cpu")) == "bf16"


@pytest.mark.skipif(
    platform.machine() != "x86_64" or not Path("/proc/cpuinfo").is_file(), reason="x86 Linux flags"
)
def test_cpu_flags_are_read_from_proc_cpuinfo():
    flags = devices.cpu_flags()
    assert {"fpu", "sse2"} <= flags  # every x86-64 CPU has them
    assert ("amx_bf16" in flags) == ("amx_bf16" in Path("/proc/cpuinfo").read_text())


@pytest.mark.parametrize("value", ["16", "fp8", "true"])
def test_an_unknown_precision_is_refused(value, tmp_path):
    with pytest.raises(UsageError, match="trainer.precision"):
        run_train(compose_config("train", [*SHORT, f"trainer.precision={value}"]), tmp_path / "run")


@pytest.mark.slow
def test_compiled_training_matches_eager_training(tmp_path):
    eager = run_train(compose_config("train", SHORT), tmp_path / "eager")
    compiled = run_train(compose_config("train", [*SHORT, "trainer.compile=true"]), tmp_path / "compiled")
    assert compiled["test_acc"] == pytest.approx(eager["test_acc"], abs=0.02)
