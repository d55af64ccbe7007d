"""The per-run table: its columns, and the CSV, Markdown and terminal renderings."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from dsnn_cli import console
from dsnn_cli.report.runs import RunRecord, eps_key, eps_value, robust_auc, run_name

# Regression runs (flow maps, functions): error and the structure the model keeps.
STRUCTURE_COLUMNS = ["test_mse", "rollout_mse", "invariant_drift", "det_jacobian_error"]


def build_table(records: list[RunRecord], root: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and rows (values are fractions, floats or strings; None when missing)."""
    base = ["run", "model", "data", "status", "epochs", "val_acc", "test_acc", "lipschitz_bound"]
    attack_columns: list[str] = []
    auc_columns: list[str] = []
    certified_columns: list[str] = []
    rows = []
    for record in records:
        s = record.summary
        row: dict[str, Any] = {
            "run": run_name(record, root),
            "model": s.get("model"),
            "data": s.get("data"),
            "status": record.live_status,
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
            row[f"auc[{name}]"] = robust_auc(data["results"])
            add_column(auc_columns, f"auc[{name}]")
        row.update({key: s.get(key) for key in STRUCTURE_COLUMNS})
        row["seconds"] = s.get("seconds")
        rows.append(row)
    columns = base + sorted(attack_columns, key=column_order) + sorted(auc_columns)
    columns += sorted(certified_columns, key=column_order)
    columns += [key for key in STRUCTURE_COLUMNS if any(row.get(key) is not None for row in rows)]
    return columns + ["seconds"], rows


def add_column(columns: list[str], column: str) -> None:
    if column not in columns:
        columns.append(column)


def column_order(column: str) -> tuple[str, float]:
    prefix, _, eps = column.rpartition("@")
    return prefix, eps_value(eps)


def is_fraction(column: str) -> bool:
    """Columns holding accuracies in [0, 1], shown in % in Markdown and the terminal."""
    return column in {"val_acc", "test_acc"} or column.startswith(("robust", "certified", "auc"))


def format_cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if is_fraction(column):
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


def markdown_lines(columns: list[str], rows: list[dict[str, Any]], cell=None) -> list[str]:
    """A Markdown table; `cell(column, row)` formats one cell (format_cell by default)."""
    cell = cell or (lambda column, row: format_cell(column, row.get(column)))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(c, row) for c in columns) + " |" for row in rows]
    return lines


AUC_NOTE = (
    "auc[attack]: trapezoid area under robust accuracy over eps in [0, largest eps of the attack], "
    "divided by that eps (clean accuracy at eps 0 when the attack has no eps 0), so in [0, 1]."
)


def to_markdown(columns: list[str], rows: list[dict[str, Any]], sections: list[str] = ()) -> str:
    """The per-run table, its notes, then `sections` (Markdown written by the other tables)."""
    lines = markdown_lines(columns, rows)
    note = (
        "\nAccuracies in %. robust[attack]@eps: empirical robust accuracy; "
        "certified@eps: z_y - z_j - 2 delta > eps L ||w_y - w_j|| for every j, the float32 model "
        "predicting y (L: the features' bound, w: the head's rows, z: logits of the float64 copy, "
        "delta: the stated float32 logit error).\n" + AUC_NOTE + "\n"
    )
    return "\n".join(lines) + "\n" + note + "".join(sections)


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
    """Terminal headers: robust[pgd]@0.3 -> pgd@0.3, certified@0.3 -> cert@0.3, auc[pgd] -> auc pgd."""
    if column.startswith("robust["):
        return column[len("robust[") :].replace("]", "")
    if column.startswith("certified@"):
        return "cert" + column[len("certified") :]
    if column.startswith("auc["):
        return "auc " + column[len("auc[") : -1]
    return SHORT_NAMES.get(column, column)


LEFT_ALIGNED = {"run", "model", "data", "status", "group", "strong_attack", "trial", "overrides"}


def print_table(title: str, columns: list[str], rows: list[dict[str, Any]], cell=None) -> None:
    """The report's rows in the terminal, with short headers."""
    cell = cell or (lambda column, row: format_cell(column, row.get(column)))
    header = [short_name(column) for column in columns]
    left = {short_name(column) for column in LEFT_ALIGNED}
    console.print_table(title, header, [[cell(c, row) for c in columns] for row in rows], left=left)
