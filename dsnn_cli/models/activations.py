"""Activations by name, each declaring the slope bounds [m, M] its certificates use.

Every elementwise activation here is monotone with derivative in [m, M] (M <= 1), so for
any x, y the divided difference (s(x) - s(y)) / (x - y) lies in [m, M]: the Jacobian of a
step is I + tau D ... with D diagonal, the property the gradient steps' factors rely on.

``maxmin`` (GroupSort-2, the field's default for 1-Lipschitz layers) sorts each pair of
channels: it is 1-Lipschitz (a permutation of each pair) and keeps the norm, but it is not
elementwise, and its Jacobian (a swap matrix on some pairs) has eigenvalue -1: a gradient
step x - tau A^T s(Ax + b) with it is no gradient of a convex potential, so the families
whose proof needs that refuse it; layer networks (model=convnet) and expansive-only uses
need its Lipschitz constant 1 alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from dsnn_cli.errors import UsageError
from dsnn_cli.registry import Registry


@dataclass(frozen=True)
class Activation:
    """An activation module with its slope interval [slope_min, slope_max] (elementwise ones),
    or only its Lipschitz constant slope_max (elementwise=False)."""

    module: nn.Module
    slope_min: float
    slope_max: float
    elementwise: bool = True

    @property
    def lipschitz(self) -> float:
        """Its l2 Lipschitz constant (slopes lie in [0, M])."""
        return self.slope_max


ACTIVATIONS: Registry = Registry("activation", key="model.activation")


class LeakyReLU(nn.Module):
    """max{x, alpha x} for alpha in [0, 1]: slopes in [alpha, 1].

    Computed as torch's leaky_relu (equal for alpha in [0, 1]): one fused kernel each way,
    where torch.maximum's backward builds masks (a third of a training step's time).
    """

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


@ACTIVATIONS.register("leaky_relu")
def leaky_relu(alpha: float = 0.5) -> Activation:
    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"model.activation.alpha={alpha} must lie in [0, 1]")
    return Activation(LeakyReLU(alpha), slope_min=float(alpha), slope_max=1.0)


@ACTIVATIONS.register("relu")
def relu() -> Activation:
    return Activation(nn.ReLU(), 0.0, 1.0)


@ACTIVATIONS.register("tanh")
def tanh() -> Activation:
    # tanh' = 1 - tanh^2 reaches 0 only at infinity: on unbounded inputs m = 0.
    return Activation(nn.Tanh(), 0.0, 1.0)


@ACTIVATIONS.register("sigmoid")
def sigmoid() -> Activation:
    return Activation(nn.Sigmoid(), 0.0, 0.25)


@ACTIVATIONS.register("softplus")
def softplus() -> Activation:
    return Activation(nn.Softplus(), 0.0, 1.0)


class MaxMin(nn.Module):
    """(max(a, b), min(a, b)) for each pair of channels (dim 1); an odd last channel is kept."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pairs = x.shape[1] // 2
        if pairs == 0:
            return x
        a, b = x[:, 0 : 2 * pairs : 2], x[:, 1 : 2 * pairs : 2]
        sorted_pairs = torch.stack((torch.maximum(a, b), torch.minimum(a, b)), dim=2)
        out = sorted_pairs.flatten(1, 2)
        return out if x.shape[1] % 2 == 0 else torch.cat((out, x[:, -1:]), dim=1)


@ACTIVATIONS.register("maxmin")
def maxmin() -> Activation:
    return Activation(MaxMin(), 0.0, 1.0, elementwise=False)


def build_activation(cfg) -> Activation:
    """Build from a config node ``{name: ..., **settings}`` or a bare name.

    Settings set to null are left out; a setting the activation does not take is refused,
    as everywhere (a preset's ``alpha`` left behind by ``model.activation.name=relu``).
    """
    if isinstance(cfg, str):
        return ACTIVATIONS.build(cfg, {})
    settings = {k: v for k, v in dict(cfg).items() if k != "name" and v is not None}
    return ACTIVATIONS.build(cfg["name"], settings)
