"""The trials of a tuning sweep: each job's objective, its figures, what it changed, the best.

A job of `dsnn sweep` with `sweep.objective` records in its summary.json the objective's name,
value, validation figures and the job's overrides (commands/objectives.py); this table reads
them back, so it needs neither Optuna nor the study's SQLite file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsnn_cli.report.runs import RunRecord, run_name

# Overrides a sweep job gets that `dsnn train` does not take.
SWEEP_ONLY = ("sweep.", "attack", "hydra")


@dataclass
class TrialTable:
    objective: str
    columns: list[str]
    rows: list[dict[str, Any]]  # best first
    best_command: str


def trial_table(records: list[RunRecord], root: Path) -> TrialTable | None:
    """The jobs that scored an objective, best first (None if none did; the objective of the
    most recent job names the table when jobs disagree)."""
    scored = [r for r in records if isinstance(r.summary.get("objective"), dict)]
    if not scored:
        return None
    objective = scored[-1].summary["objective"]["name"]
    scored = [r for r in scored if r.summary["objective"]["name"] == objective]
    scored.sort(key=lambda r: -float(r.summary["objective"]["value"]))
    overrides = [train_overrides(r.summary["objective"].get("overrides", [])) for r in scored]
    varying = varying_keys(overrides)
    figures = list(dict.fromkeys(name for r in scored for name in r.summary["objective"]["figures"]))
    rows = []
    for record, items in zip(scored, overrides, strict=True):
        kept = record.summary["objective"]
        rows.append(
            {
                "trial": run_name(record, root),
                "objective": kept["value"],
                **{figure: kept["figures"].get(figure) for figure in figures},
                "overrides": " ".join(item for item in items if item.partition("=")[0] in varying),
            }
        )
    best = " ".join(overrides[0])
    return TrialTable(objective, ["trial", "objective", *figures, "overrides"], rows, f"dsnn train {best}")


def train_overrides(overrides: list[str]) -> list[str]:
    """A job's overrides that `dsnn train` takes (the sweep's own settings left out)."""
    return [item for item in overrides if not item.lstrip("+~").startswith(SWEEP_ONLY)]


def varying_keys(overrides: list[list[str]]) -> set[str]:
    """Keys whose value differs between trials (the searched ones)."""
    values: dict[str, set[str]] = {}
    for items in overrides:
        for item in items:
            key, _, value = item.partition("=")
            values.setdefault(key, set()).add(value)
    return {key for key, seen in values.items() if len(seen) > 1 or len(overrides) == 1}


def trial_cell(column: str, row: dict[str, Any]) -> str:
    value = row.get(column)
    if value is None:
        return "-"
    if column == "objective":
        return f"{value:.4f}"
    if isinstance(value, float):
        return f"{100 * value:.2f}"
    return str(value)


def trial_markdown(table: TrialTable) -> str:
    from dsnn_cli.report.tables import markdown_lines

    lines = [f"## Trials: {table.objective} on the validation split, best first", ""]
    lines += markdown_lines(table.columns, table.rows, trial_cell)
    lines += ["", "Figures in %. The best configuration:", "", f"    {table.best_command}", ""]
    return "\n".join(lines)
