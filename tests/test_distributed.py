"""torchrun with DistributedDataParallel, shown on the CPU with the gloo backend and 2 ranks:
the same loss curve and weights as one process with the same global batch, one run
directory written by rank 0 only, and checkpoints that resume under another number of ranks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, SUBPROCESS_ENV, TINY, run_cli

from dsnn_cli.rundir import RunDir
from dsnn_cli.training.checkpoint import load_checkpoint

# No augmentation (synthetic data) and a schedule that does not depend on max_epochs, so a run
# resumed with more epochs continues the same curve; 250 training images in batches of 32:
# the last batch (26) splits 13 / 13, the others 16 / 16.
ARGS = [*TINY, "model=lipschitz", "trainer.limit_batches=null", "data.n_train=300", "trainer.batch_size=32"]
# No learning-rate schedule (the resumed run changes max_epochs, which it spans) and no adversarial
# replay: it normalises every image's input gradient, and where that gradient is near zero
# its direction is float rounding, which differs between one and two ranks' batch shapes.
ARGS += ["scheduler=none", "loss.adversarial.eps=null"]


def torchrun(*args: str, ranks: int = 2, cwd=REPO) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    return subprocess.run(
        [*command, "-m", "dsnn_cli", *args],
        cwd=cwd,
        env={**os.environ, **SUBPROCESS_ENV, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )


def assert_same_training(one, other, tolerance: float) -> None:
    rows_one, rows_other = RunDir(one).metrics(), RunDir(other).metrics()
    assert [r["epoch"] for r in rows_one] == [r["epoch"] for r in rows_other]  # one writer, no duplicates
    for a, b in zip(rows_one, rows_other, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=tolerance)
        assert b["train_acc"] == pytest.approx(a["train_acc"], abs=0.01)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=tolerance)
    weights_one = load_checkpoint(one / "checkpoints" / "last.pt")["state_dict"]
    weights_other = load_checkpoint(other / "checkpoints" / "last.pt")["state_dict"]
    for key, value in weights_one.items():
        assert torch.allclose(weights_other[key], value, atol=tolerance, rtol=tolerance), key


def test_two_ranks_train_like_one_process_with_the_same_global_batch(tmp_path):
    single = run_cli("train", *ARGS, "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'one'}")
    assert single.returncode == 0, single.stderr
    double = torchrun("train", *ARGS, "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'two'}")
    assert double.returncode == 0, double.stderr[-3000:]
    assert_same_training(tmp_path / "one", tmp_path / "two", tolerance=1e-4)
    one, two = RunDir(tmp_path / "one").summary, RunDir(tmp_path / "two").summary
    assert two["status"] == "done" and two["ranks"] == 2 and one["ranks"] == 1
    assert two["train_images"] == one["train_images"]  # each image once per epoch, over both ranks
    assert two["lipschitz_bound"] == pytest.approx(one["lipschitz_bound"], rel=1e-5)
    assert two["test_acc"] == pytest.approx(one["test_acc"], abs=0.01)


def test_a_two_rank_checkpoint_resumes_in_one_process(tmp_path):
    straight = run_cli("train", *ARGS, "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'one'}")
    assert straight.returncode == 0, straight.stderr
    first = torchrun("train", *ARGS, "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'mixed'}")
    assert first.returncode == 0, first.stderr[-3000:]
    # a finished run is not resumed: make it the interrupted run a preempted job leaves
    run = RunDir(tmp_path / "mixed")
    (tmp_path / "mixed" / "checkpoints" / "final.pt").unlink()
    run.update(status="interrupted")
    resumed = run_cli(
        "train", f"hydra.run.dir={tmp_path / 'mixed'}", "trainer.resume=true", "trainer.max_epochs=2"
    )
    assert resumed.returncode == 0, resumed.stderr
    assert_same_training(tmp_path / "one", tmp_path / "mixed", tolerance=1e-4)


def test_torchrun_without_a_run_directory_shares_one_named_by_the_rendezvous(tmp_path):
    done = torchrun("train", *ARGS, "trainer.max_epochs=1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "runs" / "torchrun").iterdir()  # one for both ranks
    assert RunDir(run_dir).status() == "done"
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / "train.log").is_file()
    assert [row["epoch"] for row in RunDir(run_dir).metrics()] == [1]


def test_the_slurm_ddp_launcher_submits_one_task_per_gpu(tmp_path, monkeypatch):
    """The job script SLURM would receive for `hydra/launcher=slurm_ddp`, built as the Hydra
    submitit launcher builds it (its parameter mapping, submitit's own script writer)."""
    import submitit
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="dsnn_cli.conf", version_base="1.3"):
        cfg = compose(
            "sweep", ["hydra/launcher=slurm_ddp", "hydra.launcher.partition=gpu"], return_hydra_config=True
        )
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # no srun here
    executor = submitit.AutoExecutor(cluster="slurm", folder=tmp_path)
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    skip = {"_target_", "submitit_folder", "max_num_timeout"}
    executor.update_parameters(
        **{k if k in base else f"slurm_{k}": v for k, v in params.items() if k not in skip}
    )
    script = executor._executor._make_submission_file_text("python -m dsnn_cli sweep", "uid")
    for line in (
        "--ntasks-per-node=4",
        "--gpus-per-node=4",
        "--nodes=1",
        "--partition=gpu",
        "--cpus-per-task=8",
    ):
        assert f"#SBATCH {line}" in script, script


def test_a_sweep_job_with_two_submitit_tasks_trains_data_parallel(tmp_path):
    """submitit's local executor starts the job twice (tasks_per_node=2): the tasks become the
    two ranks of one run, which trains like one process with the same global batch."""
    single = run_cli("train", *ARGS, "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'one'}")
    assert single.returncode == 0, single.stderr
    sweep_dir = tmp_path / "sweep"
    done = run_cli(
        "sweep",
        *ARGS,
        "trainer.max_epochs=2",
        "sweep.attack=none",
        "hydra/launcher=submitit_local",
        "hydra.launcher.tasks_per_node=2",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert RunDir(sweep_dir / "0").summary["ranks"] == 2
    assert_same_training(tmp_path / "one", sweep_dir / "0", tolerance=1e-4)
