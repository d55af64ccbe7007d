"""Vector fields of the dynamic layers and the step modules that integrate them.

Each dynamic layer is Psi^h_f applied as S sub-steps of size tau = h / S. Where a family is
certified, the layer's Lipschitz factor comes from the explicit Euler step of its field:

* Expansive field f(x) = s(Wx + v):  x + tau f(x) - (y + tau f(y)) = (I + tau D W)(x - y)
  with D diagonal, entries the divided differences of s in [m, M], so the factor is
  1 + tau * M * ||W||.
* Gradient field f(x) = -A^T s(Ax + b):  the difference is (I - tau A^T D A)(x - y). The
  matrix is symmetric with spectrum in [1 - tau*lam_max, 1 - tau*lam_min], where
  lam(A^T D A) lies in [m * sigma_min(A)^2, M * ||A||^2]. With only ||A|| <= rho known,
  sigma_min is 0 and the factor is max(1, |1 - tau M rho^2|): non-expansive for
  tau <= 2 / (M rho^2).
* ResNet field f(x) = B s(Ax + b): unconstrained, no certificate.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from dsnn_cli.activations import Activation
from dsnn_cli.integrators import Field, Integrator
from dsnn_cli.operators import ConvOperator


class VectorField(nn.Module, ABC):
    """A vector field whose normalised weights are computed once per network evaluation."""

    def __init__(self, activation: Activation) -> None:
        super().__init__()
        self.act = activation.module
        self.slope_min = activation.slope_min
        self.slope_max = activation.slope_max

    @abstractmethod
    def bind(self) -> Field:
        """Return f(x) with the current effective weights (shared by all sub-steps)."""

    def euler_factor(self, tau: float) -> float | None:
        """Proven Lipschitz factor of x -> x + tau f(x), or None without a certificate."""
        return None


def channel_bias(width: int) -> nn.Parameter:
    return nn.Parameter(torch.zeros(1, width, 1, 1))


class ResNetField(VectorField):
    """f(x) = B s(Ax + b), the unconstrained residual block."""

    def __init__(self, width: int, size: tuple[int, int], activation: Activation, kernel_size: int):
        super().__init__(activation)
        self.A = ConvOperator(width, width, size, kernel_size)
        self.B = ConvOperator(width, width, size, kernel_size)
        self.bias = channel_bias(width)

    def bind(self) -> Field:
        ka, kb = self.A.effective_weight(), self.B.effective_weight()

        def f(x: torch.Tensor) -> torch.Tensor:
            return self.B.apply_with(self.act(self.A.apply_with(x, ka) + self.bias), kb)

        return f


class GradientField(VectorField):
    """f(x) = -A^T s(Ax + b), the negative gradient of a convex potential, ||A|| <= 1."""

    def __init__(self, width: int, size: tuple[int, int], activation: Activation, kernel_size: int):
        super().__init__(activation)
        self.A = ConvOperator(width, width, size, kernel_size, constrained=True)
        self.bias = channel_bias(width)

    def bind(self) -> Field:
        ka = self.A.effective_weight()

        def f(x: torch.Tensor) -> torch.Tensor:
            return -self.A.adjoint_with(self.act(self.A.apply_with(x, ka) + self.bias), ka)

        return f

    def curvature_interval(self) -> tuple[float, float]:
        """Interval [lam_min, lam_max] holding the spectrum of A^T D A."""
        rho = self.A.norm_bound()
        return 0.0, self.slope_max * rho * rho

    def euler_factor(self, tau: float) -> float:
        lam_min, lam_max = self.curvature_interval()
        return max(abs(1.0 - tau * lam_min), abs(1.0 - tau * lam_max))


class ExpansiveField(VectorField):
    """f(x) = s(Wx + v) with ||W|| <= 1: Lipschitz factor 1 + tau M ||W|| per Euler step."""

    def __init__(self, width: int, size: tuple[int, int], activation: Activation, kernel_size: int):
        super().__init__(activation)
        self.W = ConvOperator(width, width, size, kernel_size, constrained=True)
        self.bias = channel_bias(width)

    def bind(self) -> Field:
        kw = self.W.effective_weight()

        def f(x: torch.Tensor) -> torch.Tensor:
            return self.act(self.W.apply_with(x, kw) + self.bias)

        return f

    def euler_factor(self, tau: float) -> float:
        return 1.0 + tau * self.slope_max * self.W.norm_bound()


class Step(nn.Module):
    """One dynamic layer: `substeps` steps of size h / substeps of an integrator on a field."""

    def __init__(self, field: VectorField, integrator: Integrator, h: float, substeps: int):
        super().__init__()
        if substeps < 1:
            raise ValueError("substeps must be >= 1")
        self.field = field
        self.integrator = integrator
        self.h = float(h)
        self.substeps = int(substeps)

    @property
    def tau(self) -> float:
        return self.h / self.substeps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.field.bind()
        for _ in range(self.substeps):
            x = self.integrator(f, x, self.tau)
        return x

    def lipschitz_factor(self) -> float | None:
        """Proven factor of the whole step (sub-steps composed), for explicit Euler only."""
        if self.integrator.name != "euler":
            return None
        factor = self.field.euler_factor(self.tau)
        return None if factor is None else factor**self.substeps

    def extra_repr(self) -> str:
        return f"integrator={self.integrator.name}, h={self.h:g}, substeps={self.substeps}"
