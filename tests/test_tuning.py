"""`dsnn sweep hydra/sweeper=optuna`: a study in SQLite that survives kills, and its report."""

from __future__ import annotations

import csv
import json
import signal

import pytest
import torch
from conftest import TINY, kill_cli_when, run_cli
from test_cli import assert_one_line_error

from dsnn_cli.commands.objectives import Figure, parse_objective
from dsnn_cli.errors import UsageError

optuna = pytest.importorskip("optuna")
pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")

SPACE = ["loss.eps=interval(0.02,0.3)", "model.activation.alpha=choice(0.1,0.25)"]


def study_args(sweep, *extra: str) -> tuple[str, ...]:
    return (
        "sweep",
        "hydra/sweeper=optuna",
        *TINY,
        *SPACE,
        f"hydra.sweep.dir={sweep}",
        "hydra.sweeper.n_trials=4",
        "sweep.objective=val_acc",
        "sweep.attack=none",
        "trainer.max_epochs=2",
        *extra,
    )


def load_trials(sweep):
    study = optuna.load_study(study_name="dsnn", storage=f"sqlite:///{sweep}/study.db")
    return study.get_trials(deepcopy=False)


def test_objectives_parse_figures_radii_and_weighted_sums():
    assert parse_objective("val_acc").terms == ((1.0, Figure("val_acc")),)
    ((weight, figure),) = parse_objective("certified@36/255").terms
    assert weight == 1.0 and figure.kind == "certified" and abs(figure.eps - 36 / 255) < 1e-15
    mixed = parse_objective("0.5*val_acc+0.25*certified@0.3+0.25*pgd@0.3")
    assert [w for w, _ in mixed.terms] == [0.5, 0.25, 0.25]
    scores = {"val_acc": 0.8, "certified@0.3": 0.4, "pgd@0.3": 0.6}
    assert mixed.value(scores) == pytest.approx(0.5 * 0.8 + 0.25 * 0.4 + 0.25 * 0.6, abs=1e-15)
    for bad in ("", "accuracy", "certified", "val_acc@0.3", "pgd@-1", "x*val_acc", "0.5*"):
        with pytest.raises(UsageError):
            parse_objective(bad)


def test_a_four_trial_study_records_four_complete_trials_and_the_report_names_the_best(tmp_path):
    sweep = tmp_path / "study"
    result = run_cli(*study_args(sweep))
    assert result.returncode == 0, result.stderr
    trials = load_trials(sweep)
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for trial in trials:  # each trial's value is its own job's validation accuracy
        kept = json.loads((sweep / str(trial.number) / "summary.json").read_text())["objective"]
        assert kept["value"] == trial.value and kept["figures"]["val_acc"] == trial.value
        assert f"loss.eps={trial.params['loss.eps']}" in kept["overrides"]
    rows = list(csv.DictReader((sweep / "report_trials.csv").open()))
    assert len(rows) == 4
    values = [float(row["objective"]) for row in rows]
    assert values == sorted(values, reverse=True) and values[0] == max(t.value for t in trials)
    assert "best configuration: dsnn train " in result.stdout.replace("\n", " ")


def test_a_study_killed_during_its_third_trial_continues_without_duplicates(tmp_path):
    sweep = tmp_path / "study"
    status = kill_cli_when(lambda: (sweep / "2").exists(), *study_args(sweep))
    assert status == -signal.SIGKILL  # cut off during trial 3
    cut = load_trials(sweep)
    assert [t.state.name for t in cut] == ["COMPLETE", "COMPLETE", "RUNNING"]
    rerun = run_cli(*study_args(sweep))
    assert rerun.returncode == 0, rerun.stderr
    trials = load_trials(sweep)
    assert [t.number for t in trials] == [0, 1, 2, 3]  # none added twice, none lost
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert trials[2].params == cut[2].params  # the killed trial ran again with its own values
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]


@pytest.mark.parametrize(
    ("extra", "text"),
    [
        (["sweep.objective=accuracy"], "'accuracy' is not a figure"),
        (["sweep.objective=null"], "name the figure to maximise"),
        (["loss.temperature=interval(0.5,0.1)"], "bad search space"),
        (["model.nonsense=interval(0.1,0.5)"], "no key 'model.nonsense'"),
    ],
)
def test_a_bad_objective_or_search_space_is_one_line_before_any_trial(tmp_path, extra, text):
    sweep = tmp_path / "study"
    result = run_cli(*study_args(sweep), *extra)
    assert_one_line_error(result, 2, text)
    assert not any(p.is_dir() for p in sweep.glob("*"))  # no trial ran


def test_a_study_refuses_to_continue_with_another_objective(tmp_path):
    sweep = tmp_path / "study"
    assert run_cli(*study_args(sweep, "hydra.sweeper.n_trials=1")).returncode == 0
    other = run_cli(*study_args(sweep, "hydra.sweeper.n_trials=2", "sweep.objective=certified@36/255"))
    assert_one_line_error(other, 2, "maximises val_acc")
    assert len(load_trials(sweep)) == 1


def test_the_pgd_figure_attacks_the_points_validation_points_chooses(tmp_path, monkeypatch):
    """One decode of the validation split: the PGD subset taken from it is the one
    validation_points(run, n) loads."""
    from conftest import compose_config

    from dsnn_cli.commands.common import validation_points
    from dsnn_cli.commands.objectives import validation_figures
    from dsnn_cli.commands.train import run_train
    from dsnn_cli.robustness.attacks import ATTACKS

    run_train(compose_config("train", [*TINY, "trainer.test=false"]), tmp_path / "run")
    attacked = []
    pgd = ATTACKS["pgd"]

    def recording(model, images, labels, eps):
        attacked.append((images, labels))
        return pgd(model, images, labels, eps)

    monkeypatch.setattr("dsnn_cli.commands.objectives.ATTACKS", {"pgd": recording})
    validation_figures(tmp_path / "run", [Figure("pgd", 0.05)], pgd_points=20)
    images, labels = validation_points(tmp_path / "run", 20)
    ((got_images, got_labels),) = attacked
    assert len(labels) == 20
    assert torch.equal(got_images, images) and torch.equal(got_labels, labels)
