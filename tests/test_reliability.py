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


def epochs_recorded(run_dir) -> int:
    """Epochs the running summary records: the loop writes last.pt first, then the summary, so
    a SIGTERM sent as soon as last.pt appears can land between the two writes."""
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("epochs") or 0
    except (OSError, ValueError):
        return 0


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
    while time.time() < deadline and not epochs_recorded(run_dir):  # last.pt, then the summary
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted (SIGTERM)" in stderr and "Traceback" not in stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "trainer.resume=true" in summary["error"]
    done = summary["epochs"]
    assert done >= 1  # stopped after at least one checkpoint
    assert done < 30  # and mid-training
    assert (
        load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == done
    )  # summary and checkpoint agree
    assert [row["epoch"] for row in RunDir(run_dir).metrics()] == list(range(1, done + 1))  # records agree
    cfg = compose_config("train", [*args, "trainer.resume=true", f"trainer.max_epochs={done + 1}"])
    resumed = run_train(cfg, run_dir)
    assert resumed["status"] == "done" and resumed["epochs"] == done + 1


def write_stale_lock(run_dir) -> None:
    """What a SIGKILLed owner leaves: its lock file, with nobody holding the lock."""
    import socket

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.lock").write_text(
        json.dumps({"pid": 999999, "host": socket.gethostname(), "started": "x"})
    )


def hold_lock_in_another_process(run_dir) -> subprocess.Popen:
    """A live owner: another process inside `RunDir.owned()` until it is killed."""
    code = (
        "import sys, time; from dsnn_cli.rundir import RunDir\n"
        "with RunDir(sys.argv[1]).owned():\n    print('held', flush=True); time.sleep(600)"
    )
    owner = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert owner.stdout.readline().strip() == "held"
    return owner


def test_a_run_directory_is_owned_by_one_process_and_a_dead_owner_is_recognised(tmp_path, caplog):
    from dsnn_cli.errors import UsageError

    run = RunDir(tmp_path / "run")
    owner = hold_lock_in_another_process(run.path)
    try:
        with pytest.raises(UsageError, match=f"is in use by process {owner.pid}"):
            with run.owned():
                pass
        run.summary = {"status": "running"}
        assert run.live_status() == "running"
    finally:
        owner.kill()  # SIGKILL: no cleanup runs, the lock file stays
        owner.wait()
    assert (run.path / "run.lock").exists() and run.live_status() == "stale"
    with run.owned():
        assert json.loads((run.path / "run.lock").read_text())["pid"] == os.getpid()
        with pytest.raises(UsageError, match="is in use"):  # one owner, even within a process
            with RunDir(run.path).owned():
                pass
    assert not (run.path / "run.lock").exists()
    assert "stale lock" in caplog.text


def test_processes_racing_for_a_stale_lock_never_both_win(tmp_path):
    """Many processes start on a directory a killed run left locked: exactly one owns it at a
    time, however their opens, flocks and releases interleave."""
    run_dir = tmp_path / "run"
    write_stale_lock(run_dir)
    code = (
        "import sys, time; from dsnn_cli.rundir import RunDir\n"
        "from dsnn_cli.errors import UsageError\n"
        "try:\n"
        "    with RunDir(sys.argv[1]).owned():\n"
        "        log = open(sys.argv[2], 'a', buffering=1)\n"
        "        log.write('in\\n'); time.sleep(0.3); log.write('out\\n')\n"
        "except UsageError:\n    pass\n"
    )
    log_path = tmp_path / "owners.log"
    racers = [subprocess.Popen([sys.executable, "-c", code, str(run_dir), str(log_path)]) for _ in range(6)]
    for racer in racers:
        assert racer.wait(timeout=120) == 0
    events = log_path.read_text().split()
    assert events and events == ["in", "out"] * (len(events) // 2)  # never two owners at once


def test_a_second_train_into_a_busy_directory_is_refused(tmp_path):
    from dsnn_cli.errors import UsageError

    run_dir = tmp_path / "run"
    owner = hold_lock_in_another_process(run_dir)
    try:
        with pytest.raises(UsageError, match="is in use by process"):
            run_train(compose_config("train", [*TINY, "model=resnet"]), run_dir)
    finally:
        owner.kill()
        owner.wait()
    assert not (run_dir / "summary.json").exists()  # nothing of the owner's run was touched


def test_an_unfinished_run_continues_only_with_resume(tmp_path, monkeypatch):
    from dsnn_cli.errors import UsageError

    cfg = compose_config("train", [*TINY, "model=resnet", "trainer.limit_batches=2", "trainer.max_epochs=2"])
    import dsnn_cli.training.loop as training

    real_save = training.save_training_state

    def save_then_stop(run, model, optimizer, generator, state, best, **kwargs):
        real_save(run, model, optimizer, generator, state, best, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "save_training_state", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_train(cfg, tmp_path / "run")
    monkeypatch.setattr(training, "save_training_state", real_save)
    with pytest.raises(UsageError, match="unfinished run .*trainer.resume=true"):
        run_train(cfg, tmp_path / "run")
    rows = RunDir(tmp_path / "run").metrics()
    assert [row["epoch"] for row in rows] == [1]  # no duplicate rows from a restart


def test_a_run_cut_off_before_its_first_checkpoint_resumes_without_its_stale_row(tmp_path, monkeypatch):
    """Killed between the first metrics row and the first checkpoint: trainer.resume=true starts
    again from scratch, and the row of the lost epoch goes with it (one row per epoch)."""
    cfg = compose_config("train", [*TINY, "model=resnet", "trainer.limit_batches=2", "trainer.max_epochs=2"])
    import dsnn_cli.training.loop as training

    real_save = training.save_training_state

    def stop_before_saving(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "save_training_state", stop_before_saving)
    with pytest.raises(KeyboardInterrupt):
        run_train(cfg, tmp_path / "run")
    assert [row["epoch"] for row in RunDir(tmp_path / "run").metrics()] == [1]  # no checkpoint
    monkeypatch.setattr(training, "save_training_state", real_save)
    resumed = compose_config(
        "train", [*TINY, "model=resnet", "trainer.limit_batches=2", "trainer.max_epochs=2"]
    )
    resumed.trainer.resume = True
    run_train(resumed, tmp_path / "run")
    assert [row["epoch"] for row in RunDir(tmp_path / "run").metrics()] == [1, 2]


def interrupted_after_epochs(cfg, run_dir, monkeypatch, overrides=None, epochs: int = 2) -> None:
    """Train until the checkpoint of `epochs`, then stop as a SIGTERM would."""
    import dsnn_cli.training.loop as training

    real_save = training.save_training_state

    def save_then_stop(run, model, optimizer, generator, state, best, **kwargs):
        real_save(run, model, optimizer, generator, state, best, **kwargs)
        if state["epoch"] == epochs:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "save_training_state", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_train(cfg, run_dir, overrides)
    monkeypatch.setattr(training, "save_training_state", real_save)


# Far from the defaults: a resume that composed today's defaults would load CIFAR-10 (and fail
# to download it), train a lipschitz model or another seed.
OWN_SETTINGS = [
    *TINY,
    "model=resnet",
    "loss=cross_entropy",
    "trainer.limit_batches=2",
    "trainer.max_epochs=3",
]
OWN_SETTINGS += ["seed=3", "optim.lr=0.002", "data.n_train=300"]


def test_resume_needs_only_the_run_directory_and_keeps_its_record(tmp_path, monkeypatch):
    from conftest import run_cli

    run_dir = tmp_path / "run"
    cfg = compose_config("train", OWN_SETTINGS)
    interrupted_after_epochs(cfg, run_dir, monkeypatch, OWN_SETTINGS)
    original_config = (run_dir / "config.yaml").read_text()
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {item}\n" for item in OWN_SETTINGS))
    recorded = (run_dir / ".hydra" / "overrides.yaml").read_text()
    summary_before = (run_dir / "summary.json").read_text()

    changed = run_cli("train", f"hydra.run.dir={run_dir}", "trainer.resume=true", "optim.lr=0.5", "seed=7")
    assert changed.returncode == 2, changed.stderr
    error = changed.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("dsnn: error: trainer.resume:")
    assert "optim.lr (0.002 -> 0.5)" in error[0] and "seed (3 -> 7)" in error[0]
    preset = run_cli("train", f"hydra.run.dir={run_dir}", "trainer.resume=true", "experiment=certify_cifar10")
    assert (
        preset.returncode == 2
        and "experiment=certify_cifar10 (not among the run's overrides)" in preset.stderr
    )
    shorter = run_cli("train", f"hydra.run.dir={run_dir}", "trainer.resume=true", "trainer.max_epochs=1")
    assert shorter.returncode == 2 and "trainer.max_epochs=1 is below the 2 epochs" in shorter.stderr
    assert (run_dir / "summary.json").read_text() == summary_before  # refusals touch nothing

    resumed = run_cli("train", f"hydra.run.dir={run_dir}", "trainer.resume=true", "trainer.max_epochs=4")
    assert resumed.returncode == 0, resumed.stderr
    summary = RunDir(run_dir).summary
    assert summary["status"] == "done" and summary["epochs"] == 4 and summary["seed"] == 3
    assert summary["model"] == "resnet" and summary["data"] == "synthetic"
    assert (run_dir / "config.yaml").read_text() == original_config.replace(
        "max_epochs: 3", "max_epochs: 4"
    ).replace("resume: false", "resume: true")
    assert (run_dir / ".hydra" / "overrides.yaml").read_text() == recorded  # the first invocation's record
    assert [row["epoch"] for row in RunDir(run_dir).metrics()] == [1, 2, 3, 4]


def test_a_resumed_run_without_overrides_compares_every_setting(tmp_path, monkeypatch):
    """The sweep's path: it resumes a job with the job's whole composed config."""
    from dsnn_cli.errors import UsageError

    run_dir = tmp_path / "run"
    interrupted_after_epochs(compose_config("train", OWN_SETTINGS), run_dir, monkeypatch)
    other = compose_config("train", [*OWN_SETTINGS, "trainer.resume=true", "data.noise=0.5"])
    with pytest.raises(UsageError, match=r"data\.noise .* would change the result"):
        run_train(other, run_dir)
    same = compose_config("train", [*OWN_SETTINGS, "trainer.resume=true", "trainer.progress=false"])
    assert run_train(same, run_dir)["epochs"] == 3


def test_a_checkpoint_whose_weights_changed_fails_its_checksum(trained_run, tmp_path):
    """A flipped bit in a tensor loads silently through torch.load; the digest catches it."""
    from dsnn_cli.errors import DsnnError
    from dsnn_cli.training.checkpoint import weights_digest

    payload = load_checkpoint(trained_run / "checkpoints" / "final.pt")
    assert payload["weights_sha256"] == weights_digest(payload["state_dict"])
    assert payload["weights_sha256"] == RunDir(trained_run).summary["weights_sha256"]
    key = next(k for k, v in payload["state_dict"].items() if v.is_floating_point() and v.numel() > 1)
    flipped = payload["state_dict"][key].clone()
    flipped.view(torch.int32).reshape(-1)[0] ^= 1  # the lowest mantissa bit of one weight
    payload["state_dict"][key] = flipped
    torch.save(payload, tmp_path / "flipped.pt")
    with pytest.raises(DsnnError, match="fails its checksum"):
        load_checkpoint(tmp_path / "flipped.pt")


def test_attack_records_from_other_weights_neither_merge_nor_reach_the_report(trained_run, tmp_path, caplog):
    import logging
    import shutil

    from dsnn_cli.commands.attack import merge_with_previous
    from dsnn_cli.report.runs import collect_runs

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    digest = RunDir(run_dir).summary["weights_sha256"]
    record = {"attack": "pgd", "settings": {}, "n": 4, "checkpoint": "checkpoints/last.pt"}
    earlier = {**record, "weights_sha256": "0" * 64, "results": [{"eps": 0.1, "clean": 0.5, "robust": 0.4}]}
    atomic_write_json(run_dir / "attack-pgd.json", earlier)
    later = {**record, "weights_sha256": digest, "results": [{"eps": 0.3, "clean": 0.5, "robust": 0.2}]}
    assert [r["eps"] for r in merge_with_previous(run_dir / "attack-pgd.json", later)["results"]] == [0.3]
    again = {**later, "attack": "apgd", "results": [{"eps": 0.5, "clean": 0.5, "robust": 0.1}]}
    atomic_write_json(run_dir / "attack-apgd.json", {**later, "attack": "apgd"})
    assert [r["eps"] for r in merge_with_previous(run_dir / "attack-apgd.json", again)["results"]] == [
        0.3,
        0.5,
    ]
    with caplog.at_level(logging.WARNING, logger="dsnn.report"):
        (found,) = collect_runs(run_dir)
    assert set(found.attacks) == {"apgd"}  # the stale pgd file is left out, with a warning
    assert any("attack-pgd.json measured other weights" in r.message for r in caplog.records)


KILLED = [*TINY, "model=resnet", "trainer.limit_batches=null", "data.n_train=2400", "trainer.max_epochs=4"]


def train_process(run_dir, resume: bool) -> subprocess.Popen:
    args = [*KILLED, f"hydra.run.dir={run_dir}", *(["trainer.resume=true"] if resume else [])]
    return subprocess.Popen(
        [sys.executable, "-m", "dsnn_cli", "train", *args],
        cwd=REPO,
        env={**os.environ, **SUBPROCESS_ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def without_times(rows):
    """The rows without what the machine measures (time, memory) rather than what training computed."""
    return [
        {k: v for k, v in row.items() if k not in ("seconds", "peak_memory_mb", "rss_mb")} for row in rows
    ]


def kill_at_random_points_then_finish(run_dir, kills: int, seed: int) -> None:
    """SIGKILL the training process at random moments (loading, mid-epoch, validation, a
    checkpoint write), resume each time, and finally let it finish."""
    import random

    rng = random.Random(seed)
    for _ in range(kills):
        process = train_process(run_dir, resume=(run_dir / "checkpoints" / "last.pt").exists())
        time.sleep(rng.uniform(2.0, 7.0))
        process.kill()
        process.wait()
        if RunDir(run_dir).status() == "done":
            return
    process = train_process(run_dir, resume=(run_dir / "checkpoints" / "last.pt").exists())
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr


def assert_same_run(straight, resumed) -> None:
    a = load_checkpoint(straight / "checkpoints" / "final.pt")
    b = load_checkpoint(resumed / "checkpoints" / "final.pt")
    assert a["weights_sha256"] == b["weights_sha256"]  # bit-for-bit the same weights
    assert without_times(RunDir(straight).metrics()) == without_times(RunDir(resumed).metrics())
    one, other = RunDir(straight).summary, RunDir(resumed).summary
    assert other["status"] == "done" and other["test_acc"] == one["test_acc"]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    _, stderr = train_process(run_dir, resume=False).communicate(timeout=300)
    assert RunDir(run_dir).status() == "done", stderr
    return run_dir


def test_a_run_killed_at_a_random_point_resumes_to_the_same_result(straight_run, tmp_path):
    kill_at_random_points_then_finish(tmp_path / "run", kills=1, seed=0)
    assert_same_run(straight_run, tmp_path / "run")


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_a_run_killed_again_and_again_resumes_to_the_same_result(straight_run, tmp_path, seed):
    kill_at_random_points_then_finish(tmp_path / "run", kills=4, seed=seed)
    assert_same_run(straight_run, tmp_path / "run")


def test_attacking_an_unfinished_run_says_which_weights_it_uses(tmp_path, monkeypatch, caplog):
    import logging

    from helpers import attack_config

    from dsnn_cli.commands.attack import run_attack

    run_dir = tmp_path / "run"
    interrupted_after_epochs(compose_config("train", OWN_SETTINGS), run_dir, monkeypatch, epochs=1)
    attack = {"name": "pgd", "n_examples": 16, "steps": 2, "restarts": 1}
    with caplog.at_level(logging.WARNING, logger="dsnn"):
        record = run_attack(attack_config(str(run_dir), [0.1], attack, device="cpu"))
    assert record["checkpoint"] == "checkpoints/last.pt"
    assert record["weights_sha256"] == load_checkpoint(run_dir / "checkpoints" / "last.pt")["weights_sha256"]
    assert any("has not finished (status interrupted" in r.message for r in caplog.records)


def test_an_attack_killed_midway_leaves_no_record_and_reruns_to_the_same_one(trained_lipschitz_run, tmp_path):
    """SIGKILL during `dsnn attack`: no partial attack file; the rerun writes the record an
    uninterrupted attack writes (attacks are seeded)."""
    import random
    import shutil

    from conftest import run_cli

    killed, straight = tmp_path / "killed", tmp_path / "straight"
    shutil.copytree(trained_lipschitz_run, killed)
    shutil.copytree(trained_lipschitz_run, straight)
    for name in ("attack-pgd.json", "attack-pgd-examples.pt"):
        for run in (killed, straight):
            (run / name).unlink(missing_ok=True)
    args = ["eps=[0.1,0.3]", "attack=pgd", "attack.n_examples=200", "attack.steps=400", "device=cpu"]
    process = subprocess.Popen(
        [sys.executable, "-m", "dsnn_cli", "attack", f"run={killed}", *args],
        cwd=REPO,
        env={**os.environ, **SUBPROCESS_ENV, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    for line in process.stdout:  # wait until the attack itself runs (about 4 s of it here)
        if "attack=pgd on" in line:
            break
    time.sleep(random.Random(0).uniform(0.5, 1.5))
    process.kill()
    process.wait()
    assert process.returncode == -signal.SIGKILL  # killed midway, not finished
    assert not (killed / "attack-pgd.json").exists()
    assert run_cli("attack", f"run={killed}", *args).returncode == 0
    assert run_cli("attack", f"run={straight}", *args).returncode == 0
    measured = ("seconds", "created", "peak_memory_mb")
    records = [json.loads((run / "attack-pgd.json").read_text()) for run in (killed, straight)]
    one, other = ({k: v for k, v in r.items() if k not in measured} for r in records)
    assert one == other
