"""The runs a report reads: each run directory's summary, attack files and config."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsnn_cli.config import to_plain
from dsnn_cli.console import eps_label
from dsnn_cli.rundir import CONFIG, SUMMARY, live_status, read_json

log = logging.getLogger("dsnn.report")


# Attacks stronger than the paper's protocol, strongest first.
STRONG_ATTACKS = ("autoattack", "apgd", "pgd")


PAPER_ATTACK = "paper"


@dataclass
class RunRecord:
    """A run directory's summary, attack files and config (None without a readable config.yaml)."""

    path: Path
    summary: dict[str, Any]
    attacks: dict[str, dict[str, Any]] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    certify: dict[str, Any] | None = None  # certify.json

    @property
    def live_status(self) -> str | None:
        """The recorded status, `stale` for a run recorded as running whose process is gone."""
        return live_status(self.path, self.summary.get("status"))


def collect_runs(root: Path) -> list[RunRecord]:
    """Every run directory under `root` (itself included), sorted by path."""
    records = []
    for summary_path in sorted(root.rglob(SUMMARY)):
        summary = read_json(summary_path)
        if not isinstance(summary, dict):
            log.warning("%s is unreadable or not a JSON object: its run is left out", summary_path)
            continue
        run_dir = summary_path.parent
        attacks = {}
        for attack_file in sorted(run_dir.glob("attack-*.json")):
            data = read_json(attack_file)
            if not (isinstance(data, dict) and "results" in data):
                log.warning("%s is unreadable or not an attack record: left out", attack_file)
            elif same_weights(summary, data, attack_file):
                attacks[data.get("attack", attack_file.stem[len("attack-") :])] = data
        certify = read_json(run_dir / "certify.json")
        certify = (
            certify
            if isinstance(certify, dict) and same_weights(summary, certify, run_dir / "certify.json")
            else None
        )
        records.append(RunRecord(run_dir, summary, attacks, read_config(run_dir / CONFIG), certify))
    return records


def same_weights(summary: dict[str, Any], record: dict[str, Any], path: Path) -> bool:
    """Whether an attack or certify record measured the weights the summary reports (by their
    SHA-256; records from before the digest cannot tell and are kept)."""
    mine, theirs = summary.get("weights_sha256"), record.get("weights_sha256")
    if mine is None or theirs is None or mine == theirs:
        return True
    log.warning(
        "%s measured other weights (%s, sha256 %s...) than the run's final model (sha256 %s...): "
        "left out; run dsnn attack (or certify) on the run again",
        path,
        record.get("checkpoint", "?"),
        theirs[:12],
        mine[:12],
    )
    return False


def read_config(path: Path) -> dict[str, Any] | None:
    """The run's resolved config as plain containers; None when missing or unreadable."""
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    try:
        config = to_plain(OmegaConf.load(path), resolve=False)
    except Exception as exc:  # noqa: BLE001 - a broken config only costs the run its group
        log.warning("%s is unreadable (%s): the run forms a group of its own", path, exc)
        return None
    return config if isinstance(config, dict) else None


def eps_key(eps: float) -> str:
    """A radius in a column name, as people write it: 36/255, 0.3."""
    return eps_label(float(eps))


def eps_value(key: str) -> float:
    """The radius an eps_key names."""
    numerator, _, denominator = key.partition("/")
    return float(numerator) / float(denominator) if denominator else float(numerator)


def certified_curve(record: RunRecord) -> list[tuple[float, float]]:
    """(eps, certified accuracy) from the richest record of the run: `dsnn certify` (full test
    set), else `dsnn train`'s certify.eps, else the strongest attack file's certified column."""
    if record.certify and record.certify.get("results"):
        rows = record.certify["results"]
        return sorted(
            (float(r["eps"]), float(r["certified"])) for r in rows if r.get("certified") is not None
        )
    if record.summary.get("certified"):
        return sorted((float(eps), float(value)) for eps, value in record.summary["certified"].items())
    source = strongest_attack(record.attacks) or next(iter(record.attacks), None)
    if source is None:
        return []
    rows = record.attacks[source]["results"]
    return sorted((float(r["eps"]), float(r["certified"])) for r in rows if r.get("certified") is not None)


def run_name(record: RunRecord, root: Path) -> str:
    """The run's path under the report directory (its own name when it is the directory)."""
    return str(record.path.relative_to(root)) if record.path != root else record.path.resolve().name


def strongest_attack(attacks: dict[str, dict[str, Any]]) -> str | None:
    return next((name for name in STRONG_ATTACKS if name in attacks), None)


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
