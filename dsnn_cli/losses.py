"""Training losses by name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from dsnn_cli.registry import Registry

LOSSES: Registry = Registry("loss")


@LOSSES.register("hinge")
def hinge(margin: float = 0.15) -> nn.Module:
    """The paper's multi-class hinge: mean over j != y of max(0, margin - (z_y - z_j))."""
    return nn.MultiMarginLoss(margin=float(margin))


@LOSSES.register("cross_entropy")
def cross_entropy(label_smoothing: float = 0.0) -> nn.Module:
    return nn.CrossEntropyLoss(label_smoothing=float(label_smoothing))


@LOSSES.register("mse")
def mse() -> nn.Module:
    """Mean squared error, for regression data (flow maps, functions)."""
    return nn.MSELoss()


def build_loss(cfg: Mapping[str, Any]) -> nn.Module:
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    return LOSSES[cfg["name"]](**kwargs)
