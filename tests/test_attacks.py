"""l2 PGD: finds known adversarial examples, respects eps and the box, never beats a certificate."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import attack_config
from torch import nn

import dsnn_cli
from dsnn_cli.commands.attack import run_attack
from dsnn_cli.robustness.attacks import ATTACKS, fast_gradient, l2_norms, margin_loss, project

SMOKE_ATTACK = {
    "name": "pgd",
    "n_examples": 100,
    "steps": 20,
    "restarts": 1,
    "losses": ["ce", "margin"],
    "step_size": 0.25,
    "schedule": "cosine",
    "random_init": True,
    "batch_size": 100,
    "seed": 0,
}


class Linear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.t() + self.bias


def linear_problem(eps: float, n: int = 400, classes: int = 4, gap: float = 0.3):
    """Points whose l2 distance to the nearest other-class region is known exactly.

    For a linear model the region of class y is an intersection of half-spaces, so the
    distance to misclassification is min_j (z_y - z_j) / ||w_y - w_j||. Points are kept
    when that distance avoids [(1 - gap) eps, (1 + gap) eps] and the nearest boundary
    point lies inside the [0,1] box.
    """
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(classes, 64, generator=g)
    bias = -0.5 * weight.sum(dim=1)  # logits W (x - 1/2): every class near the centre
    x = 0.5 + 0.5 * (torch.rand(n, 1, 8, 8, generator=g) - 0.5)  # square images (Square needs h = w)
    logits = x.flatten(1) @ weight.t() + bias
    y = logits.argmax(1)
    diffs = weight[y][:, None, :] - weight[None, :, :]  # (n, classes, 64): w_y - w_j
    gaps = logits.gather(1, y[:, None]) - logits
    dist = gaps / diffs.norm(dim=2).clamp_min(1e-12)
    dist[torch.arange(n), y] = float("inf")
    d, j = dist.min(dim=1)
    direction = diffs[torch.arange(n), j] / diffs[torch.arange(n), j].norm(dim=1, keepdim=True)
    nearest = x.flatten(1) - 1.001 * d[:, None] * direction
    inside = ((nearest >= 0) & (nearest <= 1)).all(dim=1)
    keep = inside & ((d < (1 - gap) * eps) | (d > (1 + gap) * eps))
    return Linear(weight, bias).eval(), x[keep], y[keep], d[keep]


@pytest.mark.parametrize("eps", [0.05, 0.1])
def test_pgd_finds_the_minimal_perturbations_of_a_linear_model(eps):
    model, x, y, dist = linear_problem(eps)
    assert len(y) > 50 and bool((dist < eps).any()) and bool((dist > eps).any())
    result = ATTACKS["pgd"](model, x, y, eps, steps=50)
    expected = (dist > eps).float().mean()
    assert float(result.robust.float().mean()) == pytest.approx(float(expected), abs=1e-9)
    broken = ~result.robust
    assert bool((l2_norms(result.adversarial - x)[broken] <= eps * (1 + 1e-5)).all())


def test_pgd_drives_unconstrained_model_to_zero_at_large_eps(trained_run):
    model = dsnn_cli.load_model(trained_run)
    x = torch.rand(64, 3, 16, 16)
    y = model(x).argmax(1)  # every point correct by construction
    result = ATTACKS["pgd"](model, x, y, 4.0, steps=30)
    assert bool(result.correct.all())
    assert float(result.robust.float().mean()) <= 0.02
    adv = result.adversarial
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    assert bool((l2_norms(adv - x) <= 4.0 * (1 + 1e-5)).all())
    assert bool((model(adv).argmax(1) != y).all())


def test_projection_keeps_ball_and_box():
    x = torch.rand(32, 3, 4, 4)
    delta = project(x, 10 * torch.randn(32, 3, 4, 4), 0.5)
    assert bool((l2_norms(delta) <= 0.5 + 1e-6).all())
    assert float((x + delta).min()) >= 0 and float((x + delta).max()) <= 1


def test_fast_gradient_lowers_a_linear_margin_by_exactly_eps_times_the_row_gap():
    """On a linear model the margin z_y - z_j falls along -(w_y - w_j) at rate ||w_y - w_j||:
    one normalised gradient step of the margin loss is that direction, so away from the box's
    faces the margin drops by exactly eps ||w_y - w_j|| (the nearest class j = argmax of the rest)."""
    model, x, y, _ = linear_problem(0.1, classes=2)
    eps = 0.05
    x = x.clone().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(margin_loss(logits, y).sum(), x)
    moved = fast_gradient(x.detach(), grad, eps)
    delta = moved - x.detach()
    assert bool((l2_norms(delta) <= eps * (1 + 1e-6)).all())
    assert float(moved.min()) >= 0 and float(moved.max()) <= 1
    interior = ((moved > 0) & (moved < 1)).flatten(1).all(1)  # no pixel clipped by the box
    assert int(interior.sum()) > 20
    w = model.weight.detach()
    gap = (w[0] - w[1]).norm()
    before, after = -margin_loss(logits.detach(), y), -margin_loss(model(moved).detach(), y)
    torch.testing.assert_close(before[interior] - after[interior], (eps * gap).expand(int(interior.sum())))


def test_attack_file_on_a_certified_run(trained_lipschitz_run):
    record = run_attack(
        attack_config(str(trained_lipschitz_run), [0.0, 0.1, 0.5], SMOKE_ATTACK, device="cpu")
    )
    path = trained_lipschitz_run / "attack-pgd.json"
    on_disk = json.loads(path.read_text())
    assert on_disk["n"] == 100 and on_disk["attack"] == "pgd" and on_disk["settings"]["steps"] == 20
    results = on_disk["results"]
    assert [r["eps"] for r in results] == [0.0, 0.1, 0.5]
    for r in results:
        assert 0 <= r["certified"] <= r["robust"] <= r["clean"] <= 1
    assert results[0]["robust"] == results[0]["clean"]
    assert record["lipschitz_bound"] == pytest.approx(
        dsnn_cli.lipschitz_bound(dsnn_cli.load_model(trained_lipschitz_run))
    )
    # a repeat with the same settings merges eps values; the file is replaced, not appended
    run_attack(attack_config(str(trained_lipschitz_run), 0.3, SMOKE_ATTACK, device="cpu"))
    merged = json.loads(path.read_text())["results"]
    assert [r["eps"] for r in merged] == [0.0, 0.1, 0.3, 0.5]
    assert not list(trained_lipschitz_run.glob(".attack-pgd.json.*"))  # no temporary files left


def test_uncertified_run_has_null_certified(trained_run):
    record = run_attack(attack_config(str(trained_run), [0.1], SMOKE_ATTACK, device="cpu"))
    assert record["lipschitz_bound"] is None and record["results"][0]["certified"] is None


def test_any_break_of_a_certified_point_is_an_error():
    """The certificate is stated for the float32 model the attack runs: no break is 'rounding'."""
    from dsnn_cli.commands.attack import check_certificates
    from dsnn_cli.errors import DsnnError
    from dsnn_cli.robustness.attacks import AttackResult

    _, x, _, _ = linear_problem(0.1)
    x = x[:4]
    certified = torch.tensor([True, True, False, False])
    held = AttackResult(torch.ones(4, dtype=torch.bool), torch.tensor([True, True, False, True]), x.clone())
    check_certificates(held, certified, 0.1)  # only uncertified points were broken
    broken = AttackResult(torch.ones(4, dtype=torch.bool), torch.tensor([False, True, True, True]), x.clone())
    with pytest.raises(DsnnError, match="1 certified points were broken at eps=0.1"):
        check_certificates(broken, certified, 0.1)


def test_broken_examples_come_from_as_many_classes_as_possible():
    from dsnn_cli.commands.attack import spread_over_classes

    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])  # test points sorted by class, as ImageFolder's
    broken = torch.tensor([0, 1, 2, 4, 6, 7, 9])
    chosen = spread_over_classes(broken, labels, 5)
    assert chosen.tolist() == [0, 4, 6, 9, 1]  # one of each class first, then the second of each
    assert spread_over_classes(broken, labels, 20).tolist() == [0, 4, 6, 9, 1, 7, 2]
