"""`logger=mlflow`: one MLflow run per run directory, read back with MlflowClient."""

from __future__ import annotations

import json
import signal
import sys

import pytest
import yaml
from conftest import TINY, compose_config, kill_cli_when, run_cli

from dsnn_cli.commands.attack import run_attack
from dsnn_cli.commands.certify import run_certify
from dsnn_cli.commands.report import run_report
from dsnn_cli.commands.train import run_train
from dsnn_cli.errors import UsageError
from dsnn_cli.rundir import RunDir
from dsnn_cli.training.loggers import MLFLOW_RECORD, check_logger_config, hyperparameters

mlflow_tracking = pytest.importorskip("mlflow.tracking")


def client_and_run(run_dir):
    record = json.loads((run_dir / MLFLOW_RECORD).read_text())
    client = mlflow_tracking.MlflowClient(tracking_uri=record["tracking_uri"])
    return client, client.get_run(record["run_id"])


def history(client, run, key):
    return [
        (m.step, m.value)
        for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
    ]


def test_a_tracked_run_holds_its_config_metrics_figures_and_later_commands(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose_config(
        "train", [*TINY, "logger=mlflow", f"logger.tracking_uri={store}", "trainer.max_epochs=3"]
    )
    run_dir = tmp_path / "run"
    summary = run_train(cfg, run_dir)
    client, run = client_and_run(run_dir)
    assert run.info.status == "FINISHED"
    assert run.data.tags["dsnn.run_dir"] == str(run_dir.resolve())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    for key, value in hyperparameters(config).items():  # every config value, flat
        assert run.data.params[key] == str(value), key
    rows = RunDir(run_dir).metrics()
    assert history(client, run, "epoch/val_acc") == [(r["epoch"], pytest.approx(r["val_acc"])) for r in rows]
    assert run.data.metrics["final/test_acc"] == pytest.approx(summary["test_acc"])
    assert run.data.metrics["final/lipschitz_bound"] == pytest.approx(summary["lipschitz_bound"])
    for eps, value in summary["certified"].items():
        assert run.data.metrics[f"final/certified/{eps}"] == pytest.approx(value)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"config.yaml", "summary.json"}

    # dsnn attack, certify and report on the same directory add to the same MLflow run
    attack = run_attack(compose_config("attack", [f"run={run_dir}", "eps=[0.3]", "debug=smoke"]))
    certify = run_certify(compose_config("certify", [f"run={run_dir}"]))
    run_report(run_dir)
    client, later = client_and_run(run_dir)
    assert later.info.run_id == run.info.run_id
    assert later.data.metrics["attack/pgd/robust/0.3"] == pytest.approx(attack["results"][0]["robust"])
    for result in certify["results"]:
        key = f"certify/certified/{result['eps']:.6g}"
        assert later.data.metrics[key] == pytest.approx(result["certified"])
    assert "report/report.png" in {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    runs = client.search_runs([run.info.experiment_id])
    assert len(runs) == 1


def test_a_killed_and_resumed_run_stays_one_mlflow_run_with_each_epoch_once(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = tmp_path / "run"
    args = [
        *TINY,
        "logger=mlflow",
        f"logger.tracking_uri={store}",
        "trainer.max_epochs=6",
        f"hydra.run.dir={run_dir}",
    ]
    status = kill_cli_when(lambda: bool(RunDir(run_dir).metrics()), "train", *args)
    assert status == -signal.SIGKILL  # cut off after its first epoch, before the sixth
    resumed = run_cli("train", *args, "trainer.resume=true")
    assert resumed.returncode == 0, resumed.stderr
    client, run = client_and_run(run_dir)
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert run.info.status == "FINISHED"
    rows = RunDir(run_dir).metrics()
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert history(client, run, "epoch/val_acc") == [(r["epoch"], pytest.approx(r["val_acc"])) for r in rows]
    steps = [step for step, _ in history(client, run, "train/loss")]
    assert steps == sorted(set(steps))  # no step logged twice


def test_mlflow_settings_and_a_missing_package_are_one_line(monkeypatch):
    with pytest.raises(UsageError, match="log_every_n_steps"):
        check_logger_config(
            {"name": "mlflow", "log_every_n_steps": 0, "experiment_name": "x", "tracking_uri": None}
        )
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    with pytest.raises(UsageError, match=r"pip install 'dsnn\[mlflow\]'"):
        check_logger_config(
            {"name": "mlflow", "log_every_n_steps": 5, "experiment_name": "x", "tracking_uri": None}
        )
