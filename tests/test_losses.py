"""The certification-sized loss measures the margin against sqrt(2) L eps."""

import math

import pytest
import torch

from dsnn_cli.errors import UsageError
from dsnn_cli.training.losses import LipschitzMarginLoss, hinge


def margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return true - others.max(1).values


def test_lipschitz_margin_loss_is_uniform_at_the_certification_threshold():
    """Margins of exactly sqrt(2) L eps over every class leave the shifted logits equal: loss T log C."""
    loss = LipschitzMarginLoss(eps=0.3, lipschitz=2.0, temperature=0.25)
    labels = torch.tensor([0, 3, 7])
    logits = torch.randn(3, 1, dtype=torch.float64).repeat(1, 10)
    logits[torch.arange(3), labels] += math.sqrt(2) * 2.0 * 0.3
    assert float(loss(logits, labels)) == pytest.approx(0.25 * math.log(10), rel=1e-12)


def test_minimising_lipschitz_margin_loss_pushes_margins_past_certification():
    """Hinge with the paper's margin stops at 0.15; this loss goes past sqrt(2) L eps = 0.42."""
    labels = torch.arange(10) % 4
    logits = torch.zeros(10, 4, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=0.5)
    loss = LipschitzMarginLoss(eps=0.3, lipschitz=1.0, temperature=0.25)
    for _ in range(300):
        opt.zero_grad()
        loss(logits, labels).backward()
        opt.step()
    assert margins(logits.detach(), labels).min() > math.sqrt(2) * 0.3

    hinge_logits = torch.zeros(10, 4, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([hinge_logits], lr=0.5)
    for _ in range(300):
        opt.zero_grad()
        hinge(0.15)(hinge_logits, labels).backward()
        opt.step()
    assert margins(hinge_logits.detach(), labels).max() < 0.2


@pytest.mark.parametrize(
    ("key", "kwargs"),
    [
        ("eps", {"eps": -0.1, "lipschitz": 1.0, "temperature": 0.25}),
        ("lipschitz", {"eps": 0.3, "lipschitz": 0.0, "temperature": 0.25}),
        ("temperature", {"eps": 0.3, "lipschitz": 1.0, "temperature": -1.0}),
    ],
)
def test_lipschitz_margin_loss_refuses_bad_settings(key, kwargs):
    with pytest.raises(UsageError, match=f"loss.{key}="):
        LipschitzMarginLoss(**kwargs)


def test_pairwise_offsets_sit_exactly_at_the_pairwise_certificate():
    """With head rows w, margins z_y - z_j of exactly eps L ||w_y - w_j|| leave the shifted logits
    equal (loss T log C); one less than that for one j and the loss rises."""
    rows = torch.nn.functional.normalize(torch.randn(5, 7, dtype=torch.float64), dim=1)
    loss = LipschitzMarginLoss(eps=0.3, lipschitz=1.0, temperature=0.25)
    labels = torch.tensor([0, 2, 4])
    distances = torch.cdist(rows, rows)
    logits = 3.0 - 0.3 * distances[labels]  # z_y = 3, z_j = 3 - eps ||w_y - w_j||
    assert float(loss(logits, labels, rows)) == pytest.approx(0.25 * math.log(5), rel=1e-12)
    closer = logits.clone()
    closer[0, 1] += 0.05
    assert float(loss(closer, labels, rows)) > 0.25 * math.log(5)
    # without rows the offsets are the uniform sqrt(2) L eps
    uniform = torch.full((3, 5), 3.0 - math.sqrt(2) * 0.3, dtype=torch.float64)
    uniform[torch.arange(3), labels] = 3.0
    assert float(loss(uniform, labels)) == pytest.approx(0.25 * math.log(5), rel=1e-12)
