"""`dsnn report`: every run under a directory in one table (terminal, CSV, Markdown).

A run is any directory holding a ``summary.json``; its ``attack-*.json`` files add one
robust-accuracy column per (attack, eps) and certified-accuracy columns per eps.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsnn_cli.errors import UsageError
from dsnn_cli.rundir import SUMMARY, atomic_write_text, read_json


@dataclass
class RunRecord:
    """A run directory's summary and attack files."""

    path: Path
    summary: dict[str, Any]
    attacks: dict[str, dict[str, Any]] = field(default_factory=dict)


def collect_runs(root: Path) -> list[RunRecord]:
    """Every run directory under `root` (itself included), sorted by path."""
    records = []
    for summary_path in sorted(root.rglob(SUMMARY)):
        summary = read_json(summary_path)
        if not isinstance(summary, dict):
            continue
        run_dir = summary_path.parent
        attacks = {}
        for attack_file in sorted(run_dir.glob("attack-*.json")):
            data = read_json(attack_file)
            if isinstance(data, dict) and "results" in data:
                attacks[data.get("attack", attack_file.stem[len("attack-") :])] = data
        records.append(RunRecord(run_dir, summary, attacks))
    return records


# Regression runs (flow maps, functions): error and the structure the model keeps.
STRUCTURE_COLUMNS = ["test_mse", "rollout_mse", "invariant_drift", "det_jacobian_error"]


def eps_key(eps: float) -> str:
    return f"{eps:.4g}"


def build_table(records: list[RunRecord], root: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and rows (values are fractions, floats or strings; None when missing)."""
    base = ["run", "model", "data", "status", "epochs", "val_acc", "test_acc", "lipschitz_bound"]
    attack_columns: list[str] = []
    certified_columns: list[str] = []
    rows = []
    for record in records:
        s = record.summary
        row: dict[str, Any] = {
            "run": str(record.path.relative_to(root)) if record.path != root else ".",
            "model": s.get("model"),
            "data": s.get("data"),
            "status": s.get("status"),
            "epochs": s.get("epochs"),
            "val_acc": s.get("val_acc"),
            "test_acc": s.get("test_acc"),
            "lipschitz_bound": s.get("lipschitz_bound"),
        }
        for name, data in record.attacks.items():
            for result in data["results"]:
                column = f"robust[{name}]@{eps_key(result['eps'])}"
                row[column] = result.get("robust")
                add_column(attack_columns, column)
                if result.get("certified") is not None:
                    column = f"certified@{eps_key(result['eps'])}"
                    row[column] = result["certified"]
                    add_column(certified_columns, column)
        row.update({key: s.get(key) for key in STRUCTURE_COLUMNS})
        row["seconds"] = s.get("seconds")
        rows.append(row)
    columns = base + sorted(attack_columns, key=column_order) + sorted(certified_columns, key=column_order)
    columns += [key for key in STRUCTURE_COLUMNS if any(row.get(key) is not None for row in rows)]
    return columns + ["seconds"], rows


def add_column(columns: list[str], column: str) -> None:
    if column not in columns:
        columns.append(column)


def column_order(column: str) -> tuple[str, float]:
    prefix, _, eps = column.rpartition("@")
    return prefix, float(eps)


def format_cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if column in {"val_acc", "test_acc"} or column.startswith(("robust", "certified")):
            return f"{100 * value:.2f}"
        return f"{value:.4g}"
    return str(value)


def to_csv(columns: list[str], rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})
    return buffer.getvalue()


def to_markdown(columns: list[str], rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(format_cell(c, row.get(c)) for c in columns) + " |")
    note = (
        "\nAccuracies in %. robust[attack]@eps: empirical robust accuracy; "
        "certified@eps: margin > sqrt(2) L eps.\n"
    )
    return "\n".join(lines) + "\n" + note


def run_report(root: Path | str) -> tuple[list[str], list[dict[str, Any]]]:
    """Collect, print and write ``report.csv`` and ``report.md`` into `root`."""
    root = Path(str(root)).expanduser()
    if not root.is_dir():
        raise UsageError(f"dir={root} is not a directory (dsnn report dir=outputs)")
    records = collect_runs(root)
    if not records:
        raise UsageError(f"no runs under {root} (a run is a directory with {SUMMARY}; train one first)")
    columns, rows = build_table(records, root)
    atomic_write_text(root / "report.csv", to_csv(columns, rows))
    atomic_write_text(root / "report.md", to_markdown(columns, rows))
    print_table(root, columns, rows)
    return columns, rows


SHORT_NAMES = {
    "val_acc": "val",
    "test_acc": "test",
    "lipschitz_bound": "L",
    "seconds": "s",
    "epochs": "ep",
    "invariant_drift": "drift",
    "det_jacobian_error": "|detJ-1|",
    "rollout_mse": "rollout mse",
}


def short_name(column: str) -> str:
    """Terminal headers: robust[pgd]@0.3 -> pgd@0.3, certified@0.3 -> cert@0.3."""
    if column.startswith("robust["):
        return column[len("robust[") :].replace("]", "")
    if column.startswith("certified@"):
        return "cert" + column[len("certified") :]
    return SHORT_NAMES.get(column, column)


def print_table(root: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 200)
    table = Table(title=f"dsnn report: {root} ({len(rows)} runs; accuracies in %)")
    for column in columns:
        table.add_column(
            short_name(column),
            justify="left" if column in {"run", "model", "data", "status"} else "right",
            overflow="fold",
        )
    for row in rows:
        table.add_row(*(format_cell(c, row.get(c)) for c in columns))
    console.print(table)
    console.print(f"wrote {root / 'report.csv'} and {root / 'report.md'}")
