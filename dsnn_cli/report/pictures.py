"""What the report's figures show: accuracy curves per run or configuration, and examples.

The drawing itself is in `dsnn_cli.report.figures`; this module picks the data.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from dsnn_cli.report.figures import Curve, ExampleSet
from dsnn_cli.report.groups import Group
from dsnn_cli.report.runs import (
    PAPER_ATTACK,
    STRONG_ATTACKS,
    RunRecord,
    certified_curve,
    log,
    robust_curve,
    run_name,
)

# The eps of the adversarial.png picture (the paper's headline radius).
PICTURE_EPS = 0.3


PICTURE_EXAMPLES = 4


# More curves than this make report.png unreadable: one mean curve per configuration then.
MAX_CURVES = 12


def run_curves(records: list[RunRecord], root: Path) -> list[list[Curve]]:
    """Per run: a robust curve per attack file and one certified curve (strongest attack's file)."""
    per_run = []
    for record in records:
        name, family = run_name(record, root), str(record.summary.get("model"))
        curves = [
            Curve(f"{name} [{attack}]", family, "robust", attack, robust_curve(data["results"]))
            for attack, data in record.attacks.items()
        ]
        certified = certified_curve(record)
        if certified:
            curves.append(Curve(f"{name} certified", family, "certified", "certified", certified))
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
        log.info("no run has attack or certificate results: no %s", path.name)
        path.unlink(missing_ok=True)  # an older plot would show other runs
        return None
    if len(curves) > MAX_CURVES:
        curves = group_mean_curves(groups, per_run)
    from dsnn_cli.report.figures import plot_accuracy_curves

    plot_accuracy_curves(curves, path, title=f"dsnn report: {root.name or root}")
    return path


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
    from dsnn_cli.report.figures import plot_adversarial_examples

    plot_adversarial_examples(examples, path)
    return path
