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
- ``report_compare.md`` and ``report_compare.csv`` with ``compare=true``: the paper's weak
  10-step attack against the strongest attack of the same run, eps by eps;
- ``report.png`` (robust and certified accuracy against eps) and ``adversarial.png``
  (clean image, perturbation, adversarial image).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsnn_cli.errors import UsageError
from dsnn_cli.rundir import CONFIG, SUMMARY, atomic_write_text, read_json

log = logging.getLogger("dsnn.report")

# Attacks stronger than the paper's protocol, strongest first.
STRONG_ATTACKS = ("autoattack", "apgd", "pgd")
PAPER_ATTACK = "paper"
# Config keys that do not change what a run measures: its seed and where/how it ran.
IGNORED_CONFIG_KEYS = (("seed",), ("trainer", "progress"), ("trainer", "device"))
# The eps of the adversarial.png picture (the paper's headline radius).
PICTURE_EPS = 0.3
PICTURE_EXAMPLES = 4
# More curves than this make report.png unreadable: one mean curve per configuration then.
MAX_CURVES = 12


@dataclass
class RunRecord:
    """A run directory's summary, attack files and config (None without a readable config.yaml)."""

    path: Path
    summary: dict[str, Any]
    attacks: dict[str, dict[str, Any]] = field(default_factory=dict)
    config: dict[str, Any] | None = None


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
        records.append(RunRecord(run_dir, summary, attacks, read_config(run_dir / CONFIG)))
    return records


def read_config(path: Path) -> dict[str, Any] | None:
    """The run's resolved config as plain containers; None when missing or unreadable."""
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    try:
        config = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as exc:  # noqa: BLE001 - a broken config only costs the run its group
        log.warning("%s is unreadable (%s): the run forms a group of its own", path, exc)
        return None
    return config if isinstance(config, dict) else None


# Regression runs (flow maps, functions): error and the structure the model keeps.
STRUCTURE_COLUMNS = ["test_mse", "rollout_mse", "invariant_drift", "det_jacobian_error"]


def eps_key(eps: float) -> str:
    return f"{eps:.4g}"


def run_name(record: RunRecord, root: Path) -> str:
    """The run's path under the report directory (its own name when it is the directory)."""
    return str(record.path.relative_to(root)) if record.path != root else record.path.resolve().name


def robust_curve(results: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(eps, robust accuracy) sorted by eps, starting at eps 0 with the clean accuracy if needed."""
    points = sorted((float(r["eps"]), float(r["robust"])) for r in results if r.get("robust") is not None)
    if points and points[0][0] > 0:
        clean = next((r["clean"] for r in results if r.get("clean") is not None), None)
        if clean is not None:
            points.insert(0, (0.0, float(clean)))
    return points


def robust_auc(results: list[dict[str, Any]]) -> float | None:
    """Trapezoid area under robust accuracy over [0, largest eps], divided by the largest eps.

    None when the curve does not start at eps 0 (no clean accuracy) or spans no eps range.
    """
    points = robust_curve(results)
    if not points or points[0][0] != 0.0 or points[-1][0] <= 0.0:
        return None
    area = sum((e1 - e0) * (a0 + a1) / 2 for (e0, a0), (e1, a1) in zip(points, points[1:], strict=False))
    return area / points[-1][0]


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
    return prefix, float(eps)


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


def to_markdown(columns: list[str], rows: list[dict[str, Any]], groups: GroupTable | None = None) -> str:
    lines = markdown_lines(columns, rows)
    if groups is not None:
        lines += ["", "## By configuration (mean ± sample std over seeds)", ""]
        lines += markdown_lines(groups.columns, groups.rows, groups.markdown_cell)
    note = (
        "\nAccuracies in %. robust[attack]@eps: empirical robust accuracy; "
        "certified@eps: margin > sqrt(2) L eps.\n" + AUC_NOTE + "\n"
    )
    if groups is not None:
        note += (
            "By configuration: runs whose config.yaml differs only in seed (and trainer.device, "
            "trainer.progress, hydra keys); n runs, std with n-1; '(k)' when only k of them have the value.\n"
        )
    return "\n".join(lines) + "\n" + note


# ----------------------------------------------------------------------------------------
# Groups of seeds


@dataclass
class Group:
    """Runs of one configuration (seeds aside) and the words that tell it from the others."""

    key: str
    members: list[int]  # indices into the records and rows
    label: str = ""


def comparable_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config without the seed, hydra keys and the keys that only say where a run ran."""
    config = {k: v for k, v in config.items() if not str(k).startswith("hydra")}
    for path in IGNORED_CONFIG_KEYS:
        config = without_key(config, path)
    return config


def without_key(config: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    head, *rest = path
    if head not in config:
        return config
    if not rest:
        return {k: v for k, v in config.items() if k != head}
    if not isinstance(config[head], dict):
        return config
    return {**config, head: without_key(config[head], tuple(rest))}


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def group_runs(records: list[RunRecord]) -> list[Group]:
    """Groups of runs with the same comparable config, in the order of their first run."""
    groups: dict[str, Group] = {}
    for index, record in enumerate(records):
        if record.config is None:
            key = f"run:{record.path}"
        else:
            key = json.dumps(comparable_config(record.config), sort_keys=True, default=str)
        groups.setdefault(key, Group(key, [])).members.append(index)
    result = list(groups.values())
    label_groups(result, records)
    return result


def label_groups(groups: list[Group], records: list[RunRecord]) -> None:
    """model=, data=, loss= and the config keys that tell the groups apart."""
    flats = [flatten(comparable_config(records[g.members[0]].config or {})) for g in groups]
    # a run without config.yaml would make every key look set on purpose
    shown = distinguishing_keys(
        [f for g, f in zip(groups, flats, strict=True) if records[g.members[0]].config]
    )
    for group, flat in zip(groups, flats, strict=True):
        record = records[group.members[0]]
        words = {
            "model": record.summary.get("model") or flat.get("model.name"),
            "data": record.summary.get("data") or flat.get("data.name"),
            "loss": record.summary.get("loss") or flat.get("loss.name"),
        }
        label = " ".join(f"{k}={v}" for k, v in words.items() if v is not None)
        extra = [f"{k}={compact(flat.get(k))}" for k in shown if k not in {f"{w}.name" for w in words}]
        if record.config is None:
            extra.append(f"run={record.path.name} (no {CONFIG})")
        group.label = " ".join([label, *extra]).strip()


def distinguishing_keys(flats: list[dict[str, Any]]) -> list[str]:
    """Section options (``model.name``) that differ, and keys that differ under the same option.

    A different ``model.name`` brings different defaults for every ``model.*`` key; only a key
    that also differs between groups with the same ``model.name`` was set on purpose.
    """
    keys = sorted({k for flat in flats for k in flat})
    shown = []
    for key in keys:
        name_key = key.split(".")[0] + ".name"
        by_option: dict[str, list[dict[str, Any]]] = {}
        for flat in flats:
            by_option.setdefault(compact(flat.get(name_key)), []).append(flat)
        options = [flats] if key == name_key else by_option.values()
        if any(len({compact(f.get(key, "<unset>")) for f in same}) > 1 for same in options):
            shown.append(key)
    return shown


def compact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str)


@dataclass
class Stat:
    """Mean and sample std of one metric over the runs of a group that have it."""

    mean: float
    std: float | None
    count: int


def stat(values: list[Any]) -> Stat | None:
    values = [float(v) for v in values if v is not None]
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else None
    return Stat(statistics.fmean(values), std, len(values))


def stat_columns(columns: list[str]) -> list[str]:
    """The metrics averaged over seeds: test accuracy, robust, AUC and certified columns."""
    return [c for c in columns if c == "test_acc" or c.startswith(("robust[", "auc[", "certified@"))]


@dataclass
class GroupTable:
    """The "by configuration" table: one row per group with a Stat per metric."""

    columns: list[str]
    rows: list[dict[str, Any]]
    metrics: list[str]

    def markdown_cell(self, column: str, row: dict[str, Any]) -> str:
        value = row.get(column)
        if column not in self.metrics:
            return "-" if value is None else str(value)
        return format_stat(column, value, row["n"])

    def csv_rows(self) -> tuple[list[str], list[dict[str, Any]]]:
        """Means under the metric's own name, sample std under std(<metric>)."""
        columns = ["group", "n", "runs"]
        for metric in self.metrics:
            columns += [metric, f"std({metric})"]
        rows = []
        for row in self.rows:
            flat = {"group": row["group"], "n": row["n"], "runs": " ".join(row["runs"])}
            for metric in self.metrics:
                value: Stat | None = row.get(metric)
                flat[metric] = None if value is None else value.mean
                flat[f"std({metric})"] = None if value is None else value.std
            rows.append(flat)
        return columns, rows


def format_stat(column: str, value: Stat | None, n: int) -> str:
    """mean ± std (std only with two values or more), '(k)' when k < n runs have the metric."""
    if value is None:
        return "-"
    scale = 100 if is_fraction(column) else 1
    text = f"{scale * value.mean:.2f}"
    if value.std is not None:
        text += f" ± {scale * value.std:.2f}"
    if value.count < n:
        text += f" ({value.count})"
    return text


def build_group_table(groups: list[Group], columns: list[str], rows: list[dict[str, Any]]) -> GroupTable:
    metrics = stat_columns(columns)
    group_rows = []
    for group in groups:
        members = [rows[i] for i in group.members]
        row: dict[str, Any] = {"group": group.label, "n": len(members), "runs": [m["run"] for m in members]}
        row.update({metric: stat([m.get(metric) for m in members]) for metric in metrics})
        group_rows.append(row)
    return GroupTable(["group", "n", *metrics], group_rows, metrics)


# ----------------------------------------------------------------------------------------
# The paper's weak attack against a strong one

COMPARE_COLUMNS = ["run", "model", "eps", "n", "paper", "strong", "strong_attack", "gap_pp"]


def strongest_attack(attacks: dict[str, dict[str, Any]]) -> str | None:
    return next((name for name in STRONG_ATTACKS if name in attacks), None)


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


# ----------------------------------------------------------------------------------------
# Plots


@dataclass
class Curve:
    """One line of report.png: accuracy against eps."""

    label: str
    family: str
    kind: str  # "robust" or "certified"
    attack: str
    points: list[tuple[float, float]]


def run_curves(records: list[RunRecord], root: Path) -> list[list[Curve]]:
    """Per run: a robust curve per attack file and one certified curve (strongest attack's file)."""
    per_run = []
    for record in records:
        name, family = run_name(record, root), str(record.summary.get("model"))
        curves = [
            Curve(f"{name} [{attack}]", family, "robust", attack, robust_curve(data["results"]))
            for attack, data in record.attacks.items()
        ]
        source = strongest_attack(record.attacks) or next(iter(record.attacks), None)
        if source is not None:
            certified = sorted(
                (float(r["eps"]), float(r["certified"]))
                for r in record.attacks[source]["results"]
                if r.get("certified") is not None
            )
            if certified:
                curves.append(Curve(f"{name} certified", family, "certified", source, certified))
        per_run.append([c for c in curves if c.points])
    return per_run


def group_mean_curves(groups: list[Group], per_run: list[list[Curve]]) -> list[Curve]:
    """One curve per (group, attack, kind): the mean over the group's runs at each eps."""
    curves = []
    for group in groups:
        merged: dict[tuple[str, str], dict[float, list[float]]] = {}
        family = "None"
        for index in group.members:
            for curve in per_run[index]:
                family = curve.family
                at_eps = merged.setdefault((curve.kind, curve.attack), {})
                for eps, value in curve.points:
                    at_eps.setdefault(round(eps, 9), []).append(value)
        for (kind, attack), at_eps in merged.items():
            points = [(eps, statistics.fmean(values)) for eps, values in sorted(at_eps.items())]
            suffix = "certified" if kind == "certified" else f"[{attack}]"
            label = f"{group.label} {suffix} (mean of {len(group.members)})"
            curves.append(Curve(label, family, kind, attack, points))
    return curves


def write_accuracy_plot(root: Path, records: list[RunRecord], groups: list[Group]) -> Path | None:
    """report.png; one mean curve per configuration when there are too many runs to tell apart."""
    path = root / "report.png"
    per_run = run_curves(records, root)
    curves = [curve for curves in per_run for curve in curves]
    if not curves:
        log.info("no run has attack files: no %s", path.name)
        path.unlink(missing_ok=True)  # an older plot would show other runs
        return None
    if len(curves) > MAX_CURVES:
        curves = group_mean_curves(groups, per_run)
    from dsnn_cli.plots import plot_accuracy_curves

    plot_accuracy_curves(curves, path, title=f"dsnn report: {root.name or root}")
    return path


@dataclass
class ExampleSet:
    """Adversarial examples of one run, attack and eps, as numpy arrays."""

    run: str
    attack: str
    eps: str
    classes: list[str]
    images: Any  # (k, C, H, W) in [0, 1]
    adversarial: Any
    labels: Any  # (k,)
    predicted: Any


def examples_candidates(records: list[RunRecord]) -> list[tuple[RunRecord, str, Path]]:
    """Examples files, strong attacks first, then the paper's, then any other; runs in order."""
    preference = {name: rank for rank, name in enumerate((*STRONG_ATTACKS, PAPER_ATTACK))}
    found = []
    for order, record in enumerate(records):
        for path in sorted(record.path.glob("attack-*-examples.pt")):
            attack = path.name[len("attack-") : -len("-examples.pt")]
            found.append((preference.get(attack, len(preference)), order, record, attack, path))
    return [(record, attack, path) for *_, record, attack, path in sorted(found, key=lambda f: f[:2])]


def load_examples(records: list[RunRecord], root: Path) -> ExampleSet | None:
    """The first non-empty examples at the eps closest to PICTURE_EPS, in preference order."""
    import torch

    for record, attack, path in examples_candidates(records):
        try:
            data = torch.load(path, weights_only=True, map_location="cpu")
            by_eps = {eps: ex for eps, ex in data["examples"].items() if len(ex["labels"]) > 0}
        except Exception as exc:  # noqa: BLE001 - one unreadable file must not stop the report
            log.warning("%s is unreadable (%s): skipped", path, exc)
            continue
        if not by_eps:
            continue
        eps = min(by_eps, key=lambda e: (abs(float(e) - PICTURE_EPS), float(e)))
        chosen = by_eps[eps]
        k = PICTURE_EXAMPLES
        return ExampleSet(
            run=run_name(record, root),
            attack=attack,
            eps=eps,
            classes=[str(c) for c in data.get("classes") or []],
            images=chosen["images"][:k].float().numpy(),
            adversarial=chosen["adversarial"][:k].float().numpy(),
            labels=chosen["labels"][:k].numpy(),
            predicted=chosen["predicted"][:k].numpy(),
        )
    return None


def write_adversarial_plot(root: Path, records: list[RunRecord]) -> Path | None:
    path = root / "adversarial.png"
    examples = load_examples(records, root)
    if examples is None:
        log.info("no attack examples (attack-*-examples.pt) with a broken point: no %s", path.name)
        path.unlink(missing_ok=True)
        return None
    from dsnn_cli.plots import plot_adversarial_examples

    plot_adversarial_examples(examples, path)
    return path


# ----------------------------------------------------------------------------------------
# The command


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
    written = [root / "report.csv", root / "report.md"]
    atomic_write_text(root / "report.csv", to_csv(columns, rows))
    atomic_write_text(root / "report.md", to_markdown(columns, rows, group_table))
    print_table(f"dsnn report: {root} ({len(rows)} runs; accuracies in %)", columns, rows)
    written += write_groups(root, group_table)
    if compare:
        written += write_compare(root, records)
    written += [
        p for p in (write_accuracy_plot(root, records, groups), write_adversarial_plot(root, records)) if p
    ]
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


LEFT_ALIGNED = {"run", "model", "data", "status", "group", "strong_attack"}


def print_table(title: str, columns: list[str], rows: list[dict[str, Any]], cell=None) -> None:
    from rich.console import Console
    from rich.table import Table

    cell = cell or (lambda column, row: format_cell(column, row.get(column)))
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 200)
    table = Table(title=title)
    for column in columns:
        table.add_column(
            short_name(column), justify="left" if column in LEFT_ALIGNED else "right", overflow="fold"
        )
    for row in rows:
        table.add_row(*(cell(c, row) for c in columns))
    console.print(table)
