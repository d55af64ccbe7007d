"""`dsnn report`: every run under a directory in tables and plots a reviewer can check.

A run is any directory holding a ``summary.json``; its ``attack-*.json`` files add one
robust-accuracy column per (attack, eps), certified-accuracy columns per eps and one
``auc[<attack>]`` column per attack.

AUC (area under the robust-accuracy curve) of one attack file: the trapezoid integral of
robust accuracy over the file's eps values, from eps 0 (where the clean accuracy stands in
when the file has no eps 0) to the largest eps, divided by that largest eps. It lies in
[0, 1]: 1 is a model no attack breaks at any eps up to the largest, and it is comparable
between runs only when their files cover the same eps range.

Files written into the report directory:

- ``report.csv`` and ``report.md``: one row per run (failed and running runs included);
- ``report_groups.csv`` and a "by configuration" section in ``report.md``, when some runs
  share a config that differs only in ``seed``: mean and sample std over the seeds;
- ``report_trials.csv`` and a "trials" section in ``report.md``, when jobs of a tuning sweep
  scored ``sweep.objective``: the trials best first and the best configuration as a command;
- ``report_compare.md`` and ``report_compare.csv`` with ``compare=true``: the paper's weak
  10-step attack against the strongest attack of the same run, eps by eps;
- ``report.png`` (robust and certified accuracy against eps) and ``adversarial.png``
  (clean image, perturbation, adversarial image).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from dsnn_cli.commands import guarded
from dsnn_cli.errors import UsageError
from dsnn_cli.report.compare import COMPARE_COLUMNS, compare_cell, compare_markdown, compare_rows
from dsnn_cli.report.groups import GroupTable, build_group_table, group_runs
from dsnn_cli.report.pictures import write_accuracy_plot, write_adversarial_plot
from dsnn_cli.report.runs import PAPER_ATTACK, STRONG_ATTACKS, RunRecord, collect_runs, log, robust_auc
from dsnn_cli.report.tables import build_table, print_table, to_csv, to_markdown
from dsnn_cli.report.trials import TrialTable, trial_cell, trial_markdown, trial_table
from dsnn_cli.rundir import SUMMARY, atomic_write_text
from dsnn_cli.training.loggers import log_to_tracked_run

__all__ = ["collect_runs", "compare_rows", "robust_auc", "run_report"]


def run_report(root: Path | str, compare: bool = False) -> tuple[list[str], list[dict[str, Any]]]:
    """Collect, print and write the report files into `root`; returns the per-run table."""
    root = Path(str(root)).expanduser()
    if not root.is_dir():
        raise UsageError(f"dir={root} is not a directory (dsnn report dir=outputs)")
    records = collect_runs(root)
    if not records:
        raise UsageError(f"no runs under {root} (a run is a directory with {SUMMARY}; train one first)")
    columns, rows = build_table(records, root)
    groups = group_runs(records)
    group_table = (
        build_group_table(groups, columns, rows) if any(len(g.members) > 1 for g in groups) else None
    )
    trials = trial_table(records, root)
    written = [root / "report.csv", root / "report.md"]
    atomic_write_text(root / "report.csv", to_csv(columns, rows))
    sections = [group_table.markdown()] if group_table else []
    sections += [trial_markdown(trials)] if trials else []
    atomic_write_text(root / "report.md", to_markdown(columns, rows, sections))
    print_table(f"dsnn report: {root} ({len(rows)} runs; accuracies in %)", columns, rows)
    written += write_groups(root, group_table)
    written += write_trials(root, trials)
    if compare:
        written += write_compare(root, records)
    pictures = [
        p for p in (write_accuracy_plot(root, records, groups), write_adversarial_plot(root, records)) if p
    ]
    written += pictures
    for record in records:  # runs tracked in MLflow get the report's pictures as artifacts
        log_to_tracked_run(record.path, {}, pictures)
    from rich.console import Console

    Console().print("wrote " + ", ".join(str(p) for p in written))
    return columns, rows


def write_groups(root: Path, table: GroupTable | None) -> list[Path]:
    path = root / "report_groups.csv"
    if table is None:
        path.unlink(missing_ok=True)  # an older one would describe other runs
        return []
    atomic_write_text(path, to_csv(*table.csv_rows()))
    print_table(
        f"by configuration: mean ± std over seeds ({len(table.rows)} groups; accuracies in %)",
        table.columns,
        table.rows,
        table.markdown_cell,
    )
    return [path]


def write_trials(root: Path, table: TrialTable | None) -> list[Path]:
    """report_trials.csv and the trials table of a tuning sweep, best first, with the best
    configuration as a `dsnn train` command."""
    path = root / "report_trials.csv"
    if table is None:
        path.unlink(missing_ok=True)
        return []
    atomic_write_text(path, to_csv(table.columns, table.rows))
    print_table(
        f"trials: {table.objective} on the validation split, best first (figures in %)",
        table.columns,
        table.rows,
        trial_cell,
    )
    from rich.console import Console

    Console().print(f"best configuration: {table.best_command}", soft_wrap=True)
    if (root / "study.db").is_file():
        Console().print(f"the Optuna study: optuna-dashboard sqlite:///{root / 'study.db'}", soft_wrap=True)
    return [path]


def write_compare(root: Path, records: list[RunRecord]) -> list[Path]:
    rows = compare_rows(records, root)
    paths = [root / "report_compare.md", root / "report_compare.csv"]
    if not rows:
        log.info(
            "compare: no run has attack-%s.json and a strong attack (%s)",
            PAPER_ATTACK,
            ", ".join(STRONG_ATTACKS),
        )
        for path in paths:
            path.unlink(missing_ok=True)
        return []
    atomic_write_text(paths[0], compare_markdown(rows))
    atomic_write_text(paths[1], to_csv(COMPARE_COLUMNS, rows))
    print_table(
        "paper attack vs strong attack (robust accuracy in %, gap in points)",
        COMPARE_COLUMNS,
        rows,
        compare_cell,
    )
    return paths


@hydra.main(version_base="1.3", config_path="pkg://dsnn_cli.conf", config_name="report")
@guarded
def main(cfg: DictConfig) -> None:
    """Hydra entry point of `dsnn report`."""
    run_report(cfg.dir, compare=bool(cfg.compare))
