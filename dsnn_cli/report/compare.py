"""The paper's weak attack against the strongest attack of the same run, on shared points."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dsnn_cli.report.runs import PAPER_ATTACK, RunRecord, eps_key, run_name, strongest_attack
from dsnn_cli.report.tables import markdown_lines

COMPARE_COLUMNS = ["run", "model", "eps", "n", "paper", "strong", "strong_attack", "gap_pp"]


def compare_rows(records: list[RunRecord], root: Path) -> list[dict[str, Any]]:
    """One row per (run, eps in both files): paper and strong robust accuracy, gap in points.

    When both files record their points (`indices`, `robust_mask`), both accuracies are taken
    on the points the two attacks share, so the gap compares like with like; `n` says how
    many. Older files without per-point results are compared as they are (`n` empty).
    """
    rows = []
    for record in records:
        strong = strongest_attack(record.attacks)
        if PAPER_ATTACK not in record.attacks or strong is None:
            continue
        paper, other = record.attacks[PAPER_ATTACK], record.attacks[strong]
        shared = shared_points(paper, other)
        paper_acc = robust_by_eps(paper["results"], shared and shared[0])
        strong_acc = robust_by_eps(other["results"], shared and shared[1])
        for eps in sorted(set(paper_acc) & set(strong_acc)):
            rows.append(
                {
                    "run": run_name(record, root),
                    "model": record.summary.get("model"),
                    "eps": eps,
                    "n": len(shared[0]) if shared else None,
                    "paper": paper_acc[eps],
                    "strong": strong_acc[eps],
                    "strong_attack": strong,
                    "gap_pp": 100 * (paper_acc[eps] - strong_acc[eps]),
                }
            )
    return rows


def shared_points(a: dict[str, Any], b: dict[str, Any]) -> tuple[list[int], list[int]] | None:
    """Positions, in each file's order, of the test points both attack files cover."""
    if not (a.get("indices") and b.get("indices")):
        return None
    where_b = {index: position for position, index in enumerate(b["indices"])}
    pairs = [(i, where_b[index]) for i, index in enumerate(a["indices"]) if index in where_b]
    return ([i for i, _ in pairs], [j for _, j in pairs]) if pairs else None


def robust_by_eps(results: list[dict[str, Any]], positions: list[int] | None = None) -> dict[float, float]:
    """Robust accuracy keyed by eps (rounded so equal eps from two files meet), on `positions` if given."""
    accuracy = {}
    for r in results:
        eps = round(float(r["eps"]), 9)
        if positions and r.get("robust_mask"):
            accuracy[eps] = sum(r["robust_mask"][p] == "1" for p in positions) / len(positions)
        elif r.get("robust") is not None:
            accuracy[eps] = float(r["robust"])
    return accuracy


def compare_cell(column: str, row: dict[str, Any]) -> str:
    value = row.get(column)
    if column in {"paper", "strong"}:
        return f"{100 * value:.2f}"
    if column == "gap_pp":
        return f"{value:+.2f}"
    if column == "eps":
        return eps_key(value)
    return "-" if value is None else str(value)


def compare_markdown(rows: list[dict[str, Any]]) -> str:
    lines = markdown_lines(COMPARE_COLUMNS, rows, compare_cell)
    note = (
        "\nRobust accuracy in %: paper = the paper's 10-step attack, strong = strong_attack "
        "(autoattack, else apgd, else pgd) on the same run, both on the n test points the two "
        "attack files share (n empty: files without per-point results, each on its own points). "
        "gap_pp = paper - strong in percentage points: the robustness the weak attack overstates.\n"
    )
    return "\n".join(lines) + "\n" + note
