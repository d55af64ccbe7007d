"""Step sizes h of the dynamic layers: fixed, or learnable inside a certified region.

The contraction factor of a gradient step and the largest expansive step it allows live
here because they are what keeps a learnable h inside the region where the certificate
holds.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import nn

from dsnn_cli.models.activations import Activation

Scalar = float | torch.Tensor


class StepSize(nn.Module, ABC):
    """A step size h: fixed, or learnable inside an interval that keeps a certificate."""

    @abstractmethod
    def value(self) -> Scalar:
        """The current h (a tensor when learnable, so gradients reach it)."""


class FixedStepSize(StepSize):
    def __init__(self, h: float) -> None:
        super().__init__()
        self.h = float(h)

    def value(self) -> float:
        return self.h

    def extra_repr(self) -> str:
        return f"h={self.h:g}"


class IntervalStepSize(StepSize):
    """h = lo + (hi - lo) sigmoid(theta): learnable, never outside [lo, hi]."""

    def __init__(self, lo: float, hi: float, init: float) -> None:
        super().__init__()
        self.lo, self.hi = float(lo), float(hi)
        fraction = min(max((init - lo) / (hi - lo), 1e-3), 1 - 1e-3)
        self.theta = nn.Parameter(torch.tensor(math.log(fraction / (1 - fraction))))

    def value(self) -> torch.Tensor:
        return self.lo + (self.hi - self.lo) * torch.sigmoid(self.theta)

    def extra_repr(self) -> str:
        return f"interval=[{self.lo:g}, {self.hi:g}]"


class BoundedStepSize(StepSize):
    """h = sigmoid(phi) * bound(): learnable, always on or below a moving upper bound."""

    def __init__(self, bound: Callable[[], Scalar], init_fraction: float) -> None:
        super().__init__()
        self.bound = bound
        fraction = min(max(init_fraction, 1e-3), 1 - 1e-3)
        self.phi = nn.Parameter(torch.tensor(math.log(fraction / (1 - fraction))))

    def value(self) -> torch.Tensor:
        return torch.sigmoid(self.phi) * self.bound()


def step_value(step_size: StepSize) -> float:
    """The current h as a float (certificates are computed outside autograd)."""
    h = step_size.value()
    return float(h.detach()) if isinstance(h, torch.Tensor) else float(h)


def contraction_factor(tau: Scalar, slope_min: float, slope_max: float) -> Scalar:
    """max(|1 - m tau|, |1 - M tau|): the Euler factor of a gradient step with A^T A = I."""
    if isinstance(tau, torch.Tensor):
        return torch.maximum((1 - slope_min * tau).abs(), (1 - slope_max * tau).abs())
    return max(abs(1 - slope_min * tau), abs(1 - slope_max * tau))


def largest_expansive_step(
    h_c: Scalar, fractions: Sequence[float], activation: Activation, expansive: Activation | None = None
) -> Scalar:
    """Largest h_E with c(alpha h_C) (1 + M_E alpha h_E) <= 1 for every sub-step fraction alpha:
    c from the contractive steps' slopes [m, M], M_E the expansive steps' largest slope (their
    activation, `expansive`, defaults to the same one)."""
    slope = (expansive or activation).slope_max
    bounds = []
    for alpha in fractions:
        c = contraction_factor(alpha * h_c, activation.slope_min, activation.slope_max)
        if isinstance(c, torch.Tensor):
            bounds.append((1 / c.clamp_min(1e-12) - 1).clamp_min(0) / (slope * alpha))
        else:
            bounds.append(max(1 / max(c, 1e-12) - 1, 0.0) / (slope * alpha))
    if isinstance(bounds[0], torch.Tensor):
        return torch.stack(bounds).min()
    return min(bounds)
