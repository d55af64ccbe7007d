"""Each subcommand as a user runs it: a subprocess, synthetic data, one-line errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from conftest import REPO, TINY, run_cli


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, text: str) -> None:
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dsnn: error: "), result.stderr
    assert text in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_help_is_instant_and_does_not_import_torch():
    code = "import sys; from dsnn_cli.cli import main; main(['--help']); assert 'torch' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "attack" in result.stdout and "sweep" in result.stdout


def test_train_attack_report_end_to_end(tmp_path):
    run = tmp_path / "run"
    train = run_cli("train", *TINY, "model=lipschitz", f"hydra.run.dir={run}")
    assert train.returncode == 0, train.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "done" and summary["lipschitz_bound"] is not None
    attack = run_cli("attack", f"run={run}", "eps=[0.1,8/255]", "debug=smoke")
    assert attack.returncode == 0, attack.stderr
    record = json.loads((run / "attack-pgd.json").read_text())
    assert [round(r["eps"], 6) for r in record["results"]] == [0.1, round(8 / 255, 6)]
    assert not (REPO / "outputs" / "attack").exists()
    certify = run_cli("certify", f"run={run}", "eps=[0,0.1]")
    assert certify.returncode == 0, certify.stderr
    certified = json.loads((run / "certify.json").read_text())
    assert certified["n"] == 200 and certified["lipschitz_bound"] == summary["lipschitz_bound"]
    assert [r["eps"] for r in certified["results"]] == [0.0, 0.1]
    assert (
        certified["results"][1]["certified"]
        <= certified["results"][0]["certified"]
        <= certified["results"][0]["clean"]
    )
    report = run_cli("report", f"dir={tmp_path}")
    assert report.returncode == 0, report.stderr
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert len(rows) == 1 and rows[0]["model"] == "lipschitz" and rows[0]["robust[pgd]@0.1"]
    assert "| run |" in (tmp_path / "report.md").read_text()
    # a finished run directory is not reused
    again = run_cli("train", *TINY, f"hydra.run.dir={run}")
    assert_one_line_error(again, 2, "already holds a finished run")


def test_sweep_runs_every_job_reports_and_skips_finished_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    args = ("sweep", *TINY, "model=resnet,nonexpansive", f"hydra.sweep.dir={sweep}", "attack.n_examples=32")
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    rows = list(csv.DictReader((sweep / "report.csv").open()))
    assert sorted(row["model"] for row in rows) == ["nonexpansive", "resnet"]
    assert all(row["status"] == "done" and row["robust[pgd]@0.3"] for row in rows)
    stamps = {p: p.stat().st_mtime_ns for p in sweep.glob("*/checkpoints/final.pt")}
    second = run_cli(*args)
    assert second.returncode == 0, second.stderr
    assert "skipping" in second.stderr + second.stdout
    assert stamps == {p: p.stat().st_mtime_ns for p in sweep.glob("*/checkpoints/final.pt")}


def test_sweep_with_a_failing_job_reports_the_other_and_exits_1(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "sweep", *TINY, "model=resnet", "optim.lr=0.003,-1", f"hydra.sweep.dir={sweep}", "sweep.attack=none"
    )
    assert result.returncode == 1, result.stderr
    assert "1 job(s) of the sweep" in result.stderr and "Traceback" not in result.stderr
    rows = {row["run"]: row for row in csv.DictReader((sweep / "report.csv").open())}
    assert rows["0"]["status"] == "done" and rows["1"]["status"] == "failed"


@pytest.mark.parametrize(
    "args,code,text",
    [
        (
            ("train", "model=nope"),
            2,
            "unknown model option 'nope' (valid: aol, bro, convnet, lipschitz, lipschitz_flexible",
        ),
        (("train", "trainer.nope=1"), 2, "unknown config key 'trainer.nope'"),
        (("train", "model=lipschitz", "model.h_expansive=9"), 2, "largest admissible h_expansive"),
        (("train", "data=imagefolder", "data.root=/no/such/dir"), 2, "no train/ folder"),
        (
            ("train", "experiment=paper_cifar10", "loss=lipschitz_margin"),
            2,
            "loss=lipschitz_margin has no setting margin (valid: eps, lipschitz, temperature); "
            "drop a key a preset left behind with ~loss.margin",
        ),
        (("train", "experiment=paper_cifar10", "optim=adam"), 2, "optim=adam has no setting momentum"),
        (("attack", "run=/no/such/run"), 2, "is not a directory"),
        (("attack", f"run={REPO}", "eps=-0.1"), 2, "must be a finite number >= 0"),
        (("attack", f"run={REPO}"), 2, "has no checkpoint"),
        (("report", "dir=/no/such/dir"), 2, "is not a directory"),
        (("frobnicate",), 2, "unknown command 'frobnicate'"),
    ],
)
def test_bad_input_is_one_line(args, code, text):
    assert_one_line_error(run_cli(*args), code, text)


def test_attack_and_certify_without_run_use_the_latest_finished_run(tmp_path):
    assert_one_line_error(run_cli("attack", cwd=tmp_path), 2, "no finished run under outputs/")
    older, newer = tmp_path / "outputs" / "runs" / "a", tmp_path / "outputs" / "runs" / "b"
    for run in (older, newer):
        assert run_cli("train", *TINY, "model=resnet", f"hydra.run.dir={run}", cwd=tmp_path).returncode == 0
    attack = run_cli("attack", "eps=0.3", "debug=smoke", cwd=tmp_path)
    assert attack.returncode == 0, attack.stderr
    assert "run=outputs/runs/b" in attack.stderr and (newer / "attack-pgd.json").is_file()
    assert not (older / "attack-pgd.json").exists()
    certify = run_cli("certify", "eps=[0.1]", cwd=tmp_path)
    assert certify.returncode == 0 and (newer / "certify.json").is_file()


def test_corrupt_checkpoint_is_one_line(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "final.pt").write_bytes(b"\x00garbage")
    assert_one_line_error(run_cli("attack", f"run={tmp_path}"), 1, "corrupt or unreadable")


def test_hydra_flags_pass_through():
    cfg = run_cli("train", "model=resnet", "--cfg", "job")
    assert cfg.returncode == 0 and "name: resnet" in cfg.stdout
    helped = run_cli("train", "--help")
    assert (
        helped.returncode == 0
        and "model: aol, bro, convnet, lipschitz, lipschitz_flexible, lipschitz_paper" in helped.stdout
    )


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_sweep_with_parallel_and_cluster_launchers(tmp_path, launcher):
    """joblib runs jobs in local processes; submitit_local is SLURM's launcher on this machine."""
    sweep = tmp_path / "sweep"
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else ["hydra.launcher.timeout_min=10"]
    result = run_cli(
        "sweep",
        *TINY,
        "model=resnet,lipschitz",
        f"hydra.sweep.dir={sweep}",
        "sweep.attack=none",
        f"hydra/launcher={launcher}",
        *extra,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader((sweep / "report.csv").open()))
    assert sorted(row["model"] for row in rows) == ["lipschitz", "resnet"]
    assert all(row["status"] == "done" for row in rows)


def test_sweep_runs_extra_attacks_once(tmp_path):
    sweep = tmp_path / "sweep"
    args = ("sweep", *TINY, "model=lipschitz", f"hydra.sweep.dir={sweep}", "sweep.extra_attacks=[paper]")
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    assert (sweep / "0" / "attack-pgd.json").is_file() and (sweep / "0" / "attack-paper.json").is_file()
    paper = json.loads((sweep / "0" / "attack-paper.json").read_text())
    assert paper["n"] == 32 and paper["settings"]["steps"] == 5  # debug=smoke shrinks extra attacks too


def test_every_image_family_trains_through_dsnn_train(tmp_path):
    """One process, six families: `dsnn sweep` runs `dsnn train`'s job for each (smoke preset)."""
    sweep = tmp_path / "sweep"
    families = "resnet,naive,nonexpansive,lipschitz,lipschitz_flexible,volume"
    result = run_cli("sweep", *TINY, f"model={families}", f"hydra.sweep.dir={sweep}", "sweep.attack=none")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {row["model"]: row for row in csv.DictReader((sweep / "report.csv").open())}
    assert set(rows) == set(families.split(",")) and all(r["status"] == "done" for r in rows.values())
    assert rows["lipschitz"]["lipschitz_bound"] and not rows["resnet"]["lipschitz_bound"]


def test_structure_presets_train_through_the_cli(tmp_path):
    run = tmp_path / "mass"
    small = ["debug=smoke", "data.n_train=120", "data.n_test=40", "data.val_size=20"]
    result = run_cli("train", "experiment=mass_sir", *small, f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["invariant_drift"] < 1e-10 and summary["test_mse"] >= 0
    split = tmp_path / "splitting"
    result = run_cli("train", "experiment=splitting_function", *small, f"hydra.run.dir={split}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((split / "summary.json").read_text())["model"] == "splitting"
