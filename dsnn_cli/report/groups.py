"""Runs whose configs differ only in the seed, as one row of mean ± sample std."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from typing import Any

from dsnn_cli.report.runs import RunRecord
from dsnn_cli.report.tables import is_fraction, markdown_lines
from dsnn_cli.rundir import CONFIG

# Config keys that do not change what a run measures: its seed and where/how it ran.
IGNORED_CONFIG_KEYS = (("seed",), ("trainer", "progress"), ("trainer", "device"))


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

    def markdown(self) -> str:
        """The "by configuration" section of report.md, with its note."""
        lines = ["", "## By configuration (mean ± sample std over seeds)", ""]
        lines += markdown_lines(self.columns, self.rows, self.markdown_cell)
        note = (
            "By configuration: runs whose config.yaml differs only in seed (and trainer.device, "
            "trainer.progress, hydra keys); n runs, std with n-1; '(k)' when only k of them have the value.\n"
        )
        return "\n".join(lines) + "\n\n" + note

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
