"""The figure a sweep maximises (`sweep.objective`), scored on the run's validation split.

    val_acc                             clean accuracy on the validation images
    certified@36/255                    certified accuracy at a radius (the float32 model's certificate)
    pgd@0.3                             PGD-robust accuracy at a radius (`dsnn attack`'s default PGD)
                                        on `sweep.objective_points` validation images
    0.5*val_acc+0.5*certified@36/255    a weighted sum of them

Recipes are chosen on the `data.val_size` images every run holds out, never on test images
(the test set is for final tables). Each job records its figures and value in summary.json, so
a rerun reads them instead of scoring the job again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dsnn_cli.commands.common import mean, run_data_config, validation_points
from dsnn_cli.console import eps_label
from dsnn_cli.data.subsets import stratified_subset
from dsnn_cli.devices import exact_float32
from dsnn_cli.errors import UsageError
from dsnn_cli.models.inference import predict
from dsnn_cli.robustness.attacks import ATTACKS
from dsnn_cli.robustness.certificates import certify, parse_eps
from dsnn_cli.rundir import RunDir
from dsnn_cli.training.checkpoint import load_model

FIGURE_KINDS = ("val_acc", "certified", "pgd")
SYNTAX = "val_acc, certified@EPS, pgd@EPS or a weighted sum such as 0.5*val_acc+0.5*certified@36/255"
TERM = re.compile(r"^(?:(?P<weight>[0-9.eE+-]+)\*)?(?P<kind>[a-z_]+)(?:@(?P<eps>[0-9./eE+-]+))?$")


@dataclass(frozen=True)
class Figure:
    """One validation figure: clean, certified or PGD-robust accuracy (the last two at a radius)."""

    kind: str
    eps: float | None = None

    @property
    def name(self) -> str:
        return self.kind if self.eps is None else f"{self.kind}@{eps_label(self.eps)}"


@dataclass(frozen=True)
class Objective:
    """A weighted sum of validation figures, as the user wrote it."""

    text: str
    terms: tuple[tuple[float, Figure], ...]

    @property
    def figures(self) -> tuple[Figure, ...]:
        return tuple(dict.fromkeys(figure for _, figure in self.terms))

    def value(self, scores: Mapping[str, float | None]) -> float:
        """The weighted sum; a certified figure of a model without a certificate counts 0."""
        return sum(weight * (scores[figure.name] or 0.0) for weight, figure in self.terms)


def parse_objective(text: Any) -> Objective:
    """`sweep.objective` as an Objective, or one line naming the syntax."""
    if not isinstance(text, str) or not text.strip():
        raise UsageError(f"sweep.objective={text!r}: name the figure to maximise ({SYNTAX})")
    terms = []
    for term in text.replace(" ", "").split("+"):
        match = TERM.match(term)
        if not match or match["kind"] not in FIGURE_KINDS:
            raise UsageError(f"sweep.objective={text}: '{term}' is not a figure (valid: {SYNTAX})")
        kind, eps = match["kind"], match["eps"]
        if (kind == "val_acc") != (eps is None):
            where = "takes no radius" if kind == "val_acc" else "needs a radius, e.g. certified@36/255"
            raise UsageError(f"sweep.objective={text}: {kind} {where}")
        try:
            weight = float(match["weight"]) if match["weight"] else 1.0
        except ValueError:
            raise UsageError(f"sweep.objective={text}: '{match['weight']}' is not a weight") from None
        terms.append((weight, Figure(kind, None if eps is None else parse_eps(eps)[0])))
    return Objective(text, tuple(terms))


@exact_float32()  # the certificate is stated for exact float32 and float64 arithmetic
def validation_figures(
    run_dir: Path, figures: Sequence[Figure], *, pgd_points: int | None = None, data_root: str | None = None
) -> dict[str, float | None]:
    """Each figure of the run's final model on its validation images ({figure name: fraction});
    PGD attacks `pgd_points` of them (a class-stratified subset; None: all). Certified figures
    of a model without a certificate are None."""
    model = load_model(run_dir).eval()
    images, labels = validation_points(run_dir, None, data_root)
    wanted = {figure.kind for figure in figures}
    certification = certify(model, images, labels) if wanted & {"val_acc", "certified"} else None
    if "pgd" in wanted:  # the points validation_points(run_dir, pgd_points) gives, not decoded again
        seed = int(run_data_config(run_dir, data_root)["subset_seed"])
        chosen = stratified_subset(labels, pgd_points, seed)
        attacked = images[chosen], labels[chosen]
    scores: dict[str, float | None] = {}
    for figure in figures:
        if figure.kind == "val_acc":
            scores[figure.name] = clean_accuracy(model, images, labels, certification)
        elif figure.kind == "certified":
            scores[figure.name] = None if certification is None else mean(certification.certified(figure.eps))
        else:
            scores[figure.name] = mean(ATTACKS["pgd"](model, *attacked, figure.eps).robust)
    return scores


def clean_accuracy(model, images, labels, certification) -> float:
    if certification is not None:
        return mean(certification.correct)
    with torch.no_grad():
        return mean(predict(model, images.split(250)).argmax(1) == labels)


def record_objective(
    run_dir: Path, objective: Objective, overrides: Sequence[str], pgd_points: int | None = None
) -> float | None:
    """The objective of a finished job, scored once and kept in its summary.json (with the job's
    overrides, for the report's best configuration); None for a job that did not finish."""
    run = RunDir(run_dir)
    if run.status() != "done":
        return None
    kept = run.summary.get("objective") or {}
    if kept.get("name") == objective.text and kept.get("pgd_points") == pgd_points:
        return float(kept["value"])
    scores = validation_figures(run_dir, objective.figures, pgd_points=pgd_points)
    value = objective.value(scores)
    run.update(
        objective={
            "name": objective.text,
            "value": value,
            "figures": scores,
            "pgd_points": pgd_points,
            "overrides": list(overrides),
        }
    )
    return value
