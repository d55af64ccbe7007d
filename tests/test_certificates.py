"""Certificates hold for the float32 model as it runs: rows, L and margins from one float64 copy,
an absolute logit slack that covers float32 execution, and attacks that never break a certified
point, even at 0.999x its own radius."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import dsnn_cli
from dsnn_cli.commands.common import evaluation_points
from dsnn_cli.devices import exact_float32
from dsnn_cli.models.stages import RowsHead
from dsnn_cli.robustness.attacks import l2_norms, margin_loss, per_sample
from dsnn_cli.robustness.certificates import (
    LOGIT_ERROR_SAFETY,
    certify,
    float64_copy,
    lipschitz_bound,
    logit_margins,
    pairwise_certificate,
)


class RowsClassifier(nn.Module):
    """Features = the flattened input (1-Lipschitz, exactly), read by the project's unit-row head:
    a certified classifier whose certificate is tight along w_j - w_y."""

    def __init__(self, rows: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.head = RowsHead(rows.shape[1], rows.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(rows)
            self.head.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))

    def classifier_rows(self) -> torch.Tensor:
        return self.head.rows()

    def lipschitz_factors(self) -> list[tuple[str, float]]:
        return [("flatten", 1.0)]


def boundary_distance(model: nn.Module, x: torch.Tensor, label: int, direction: torch.Tensor) -> float:
    """Smallest t > 0 where the float32 model stops predicting `label` on x + t d (unit d), to
    1e-7 by bisection; inf if it still predicts it at t = 1e3."""

    def right(t: float) -> bool:
        with torch.no_grad():
            return int(model((x + t * direction)[None]).argmax(1)) == label

    low, high = 0.0, 1.0
    while right(high):
        low, high = high, 2 * high
        if high > 1e3:
            return math.inf
    while high - low > 1e-7:
        middle = (low + high) / 2
        low, high = (middle, high) if right(middle) else (low, middle)
    return high


def near_duplicate_rows(seed: int) -> tuple[RowsClassifier, torch.Tensor, torch.Tensor]:
    """Two head rows equal up to float32 rounding, and points whose float64 margin between them
    is tiny: the case where float32-normalised rows overstated the radius."""
    generator = torch.Generator().manual_seed(seed)
    dim = 48
    base = torch.randn(dim, generator=generator, dtype=torch.float64)
    rows = torch.stack([base, base + 1e-6 * torch.randn(dim, generator=generator, dtype=torch.float64)])
    rows = torch.cat([rows, torch.randn(2, dim, generator=generator, dtype=torch.float64)])
    model = RowsClassifier(rows.float(), torch.tensor([0.0, 1e-6, -5.0, -5.0])).eval()
    x = torch.rand(32, 3, 4, 4, generator=generator)
    return model, x, torch.zeros(32, dtype=torch.long)


@pytest.mark.parametrize("seed", range(5))
def test_near_duplicate_rows_are_never_certified_beyond_the_float32_boundary(seed):
    model, x, labels = near_duplicate_rows(seed)
    with exact_float32():
        certification = certify(model, x, labels)
    for i in certification.certified(0.0).nonzero().squeeze(1).tolist():
        reference = float64_copy(model)
        w = reference.classifier_rows()
        direction = (w[1] - w[0]).float()
        direction = (direction / direction.norm()).view_as(x[i])
        assert float(certification.radii[i]) <= boundary_distance(model, x[i], 0, direction)
    # a pair of rows 1e-6 apart cannot certify a radius of 0.3: the margin it needs is below the slack
    assert not bool(certification.certified(0.3).any())


def test_radius_of_a_linear_classifier_is_the_distance_to_its_boundary_within_1e_4():
    """Tightness: the slack costs less than 1e-4 of radius where the certificate is exact."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(4, 48, generator=generator)
    model = RowsClassifier(rows, torch.zeros(4)).eval()
    x = torch.rand(64, 3, 4, 4, generator=generator)
    with torch.no_grad():
        labels = model(x).argmax(1)
    with exact_float32():
        certification = certify(model, x, labels)
    assert bool(certification.correct.all())
    w = model.classifier_rows().detach()
    checked = 0
    for i in range(len(labels)):
        y = int(labels[i])
        margins = (model(x[i : i + 1])[0, y] - model(x[i : i + 1])[0]).detach()
        gaps = (w[y] - w).norm(dim=1)
        ratios = torch.where(gaps > 0, margins / gaps.clamp_min(1e-30), torch.full_like(gaps, math.inf))
        j = int(ratios.argmin())
        direction = ((w[j] - w[y]) / (w[j] - w[y]).norm()).view_as(x[i])
        distance = boundary_distance(model, x[i], y, direction)
        radius = float(certification.radii[i])
        assert radius <= distance
        assert distance - radius < 1e-4
        checked += 1
    assert checked == 64


def pgd_at_radii(model: nn.Module, x: torch.Tensor, y: torch.Tensor, radii: torch.Tensor, steps: int = 60):
    """Per-point l2 PGD on the margin loss, each point in its own ball of radius `radii[i]`
    (no box: the certificate covers the whole ball); returns the final points."""
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(x.shape, generator=generator)
    delta = 0.5 * start / per_sample(l2_norms(start), start) * per_sample(radii, start)
    for t in range(steps):
        delta.requires_grad_(True)
        (grad,) = torch.autograd.grad(margin_loss(model(x + delta), y).sum(), delta)
        step = grad / per_sample(l2_norms(grad).clamp_min(1e-12), grad)
        size = 0.25 * radii * 0.5 * (1 + math.cos(math.pi * t / steps))
        delta = delta.detach() + per_sample(size, step) * step
        delta = delta * per_sample((radii / l2_norms(delta).clamp_min(1e-12)).clamp(max=1.0), delta)
    return (x + delta).detach()


def attack_inside_certified_balls(run_dir, n: int, at_least: int, steps: int = 60):
    """The run's model, n of its evaluation points, their certification, the certified ones
    (at least `at_least`), 0.999 x their radii and a per-point PGD's points inside those balls."""
    model = dsnn_cli.load_model(run_dir).eval()
    x, labels, _ = evaluation_points(run_dir, model.config["data_info"], n)
    with exact_float32():
        certification = certify(model, x, labels)
        certified = certification.certified(0.0).nonzero().squeeze(1)
        assert certified.numel() >= at_least
        radii = certification.radii[certified].float() * 0.999
        adversarial = pgd_at_radii(model, x[certified], labels[certified], radii, steps=steps)
    return model, x, labels, certification, certified, radii, adversarial


def test_no_certified_point_of_a_trained_model_is_broken_at_0_999_of_its_radius(trained_lipschitz_run):
    model, x, labels, certification, certified, radii, adversarial = attack_inside_certified_balls(
        trained_lipschitz_run, 128, 32
    )
    with exact_float32():
        with torch.no_grad():
            logits32 = model(adversarial)
            logits64 = float64_copy(model)(adversarial.double())
    # inside the balls, up to float32 rounding of x + delta (2^-24 per pixel in [0, 1]: < 2e-6 in norm)
    assert bool((l2_norms(adversarial - x[certified]) <= radii * (1 + 1e-5) + 2e-6).all())
    assert bool((logits32.argmax(1) == labels[certified]).all())
    # the attack reached the edges of the balls: the margin fell by a measurable amount there
    clean = logit_margins(certification.logits[certified], labels[certified])
    assert float((clean - logit_margins(logits32, labels[certified])).max()) > 0
    # the slack covers the float32 deviation where the attack went, with room to spare
    deviation = float((logits32.double() - logits64).abs().max())
    assert deviation <= certification.logit_error / 2
    # along each attack's own direction the float32 boundary lies beyond the certified radius
    steps = adversarial - x[certified]
    for k in range(0, certified.numel(), 4):
        i, direction = int(certified[k]), steps[k] / steps[k].norm()
        assert boundary_distance(model, x[i], int(labels[i]), direction) >= float(certification.radii[i])


def test_the_slack_is_ten_times_the_measured_deviation_and_certified_needs_the_float32_label(
    trained_lipschitz_run,
):
    model = dsnn_cli.load_model(trained_lipschitz_run).eval()
    x, labels, _ = evaluation_points(trained_lipschitz_run, model.config["data_info"], 40)
    labels[::2] = (labels[::2] + 1) % 10  # half the points are wrongly labelled: never certified
    with exact_float32():
        certification = certify(model, x, labels)
    correct = certification.correct
    assert 0 < int(correct.sum()) <= 20
    # the float64 copy ran on the correctly classified points only, and delta comes from them
    assert bool(certification.reference_logits[~correct].isnan().all())
    assert bool((certification.radii[~correct] == -math.inf).all())
    with torch.no_grad():
        full = float64_copy(model)(x.double())
    assert torch.allclose(certification.reference_logits[correct], full[correct], rtol=0, atol=1e-12)
    measured = float((certification.logits[correct].double() - full[correct]).abs().max())
    assert certification.measured_error == measured > 0
    assert certification.logit_error >= LOGIT_ERROR_SAFETY * measured
    assert not bool((certification.certified(0.0) & ~correct).any())
    # the rule subtracts 2 delta from every float64 margin before dividing
    rule = certification.certificate
    plain = pairwise_certificate(float64_copy(model))
    assert bool((rule.radii(full, labels) < plain.radii(full, labels)).all())


def test_the_bound_is_the_float64_copys():
    """L from the float64 copy: the Cayley factors are orthogonal to ~1e-15 there (~1e-6 in float32)."""
    torch.manual_seed(0)
    from helpers import model_config
    from test_config import INFO

    from dsnn_cli.models.networks import build_model

    model = build_model(model_config("lipschitz", widths=[8, 8, 8]), INFO).eval()
    bound = lipschitz_bound(model)
    assert bound == lipschitz_bound(float64_copy(model))
    assert 0 < bound <= 1 + 1e-8
    assert next(model.parameters()).dtype == torch.float32  # the model itself is left as it was
