"""Training losses by name."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dsnn_cli.config import check
from dsnn_cli.registry import Registry

LOSSES: Registry = Registry("loss")


@LOSSES.register("hinge")
def hinge(margin: float) -> nn.Module:
    """The paper's multi-class hinge: sum over j != y of max(0, margin - (z_y - z_j)) / classes."""
    return nn.MultiMarginLoss(margin=check("loss.margin", margin, float, low=0, low_open=True))


class LipschitzMarginLoss(nn.Module):
    """Cross-entropy on logits shifted by what certification at eps needs (Tsuzuku et al. 2018).

    Why: a point is certified at eps when z_y - z_j > eps L ||w_y - w_j|| for every j != y
    (the pairwise certificate of a linear head on L-Lipschitz features), so each z_j is raised
    by that amount and the loss pushes the certified margins past 0, not the plain ones. With
    `rows` (the head's w_i, differentiable) the offsets are pairwise; without, they are the
    uniform sqrt(2) L eps of an L-Lipschitz logit map. Logits of a Lipschitz network span a small
    range, so they are divided by a temperature before the soft-max; the loss is multiplied by
    it again so that its gradients keep the scale of the hinge loss's.
    """

    def __init__(self, eps: float, lipschitz: float, temperature: float) -> None:
        super().__init__()
        self.eps = check("loss.eps", eps, float, low=0)
        self.lipschitz = check("loss.lipschitz", lipschitz, float, low=0, low_open=True)
        self.temperature = check("loss.temperature", temperature, float, low=0, low_open=True)

    def offsets(self, target: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """(N, C): the margin z_y - z_j that certification at eps needs, 0 at j = y."""
        if rows is None:
            others = 1.0 - F.one_hot(target, logits.shape[1]).to(logits.dtype)
            return math.sqrt(2.0) * self.lipschitz * self.eps * others
        distances = torch.cdist(rows, rows).to(device=logits.device, dtype=logits.dtype)  # zero diagonal
        return self.lipschitz * self.eps * distances[target]

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        shifted = logits + self.offsets(target, logits, rows)
        return F.cross_entropy(shifted / self.temperature, target) * self.temperature


@LOSSES.register("lipschitz_margin")
def lipschitz_margin(eps: float, lipschitz: float, temperature: float) -> nn.Module:
    """Certification-sized cross-entropy: `eps` the target radius, `lipschitz` the model's bound."""
    return LipschitzMarginLoss(float(eps), float(lipschitz), float(temperature))


@LOSSES.register("cross_entropy")
def cross_entropy(label_smoothing: float) -> nn.Module:
    return nn.CrossEntropyLoss(
        label_smoothing=check("loss.label_smoothing", label_smoothing, float, low=0, high=0.99)
    )


@LOSSES.register("mse")
def mse() -> nn.Module:
    """Mean squared error, for regression data (flow maps, functions)."""
    return nn.MSELoss()


# Keys of a loss group that are not the loss function's arguments: its name, and where the
# training loop evaluates it (`adversarial`: free adversarial training, read by `dsnn train`).
NOT_ARGUMENTS = ("name", "adversarial")


def build_loss(cfg: Mapping[str, Any]) -> nn.Module:
    return LOSSES.build(cfg["name"], {k: v for k, v in cfg.items() if k not in NOT_ARGUMENTS})
