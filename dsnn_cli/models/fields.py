"""Vector fields of the dynamic layers and their proven Euler factors.

A dynamic layer applies an integrator to a field with frozen weights, in sub-steps of sizes
alpha_1 h, ..., alpha_M h (sum alpha = 1). Where a field is certified, its Lipschitz factor
comes from the explicit Euler step x -> x + tau f(x). With D diagonal, its entries divided
differences of the activation in [m, M]:

* Expansive f(x) = s(Wx + v): the difference of two steps is (I + tau D W)(x - y), so the
  factor is 1 + tau M ||W||.
* Gradient f(x) = -A^T s(Ax + b): the difference is (I - tau A^T D A)(x - y), a symmetric
  matrix whose spectrum is 1 - tau * spec(A^T D A), and x^T A^T D A x = (Ax)^T D (Ax) lies in
  [m s_min(A)^2, M s_max(A)^2] ||x||^2. So the factor is
  max(|1 - tau m s_min^2|, |1 - tau M s_max^2|): for an isometry (A^T A = I) it is
  max(|1 - m tau|, |1 - tau|) with M = 1, tighter than the paper's sqrt(1 - 2 m tau + tau^2)
  (both are 1 at m = 0); with only ||A|| <= rho known, s_min = 0 and it is
  max(1, tau M rho^2 - 1).
* ResNet, naive (soft orthogonality), mass, shear and sphere fields carry no certificate;
  their structure (volume, mass, norm of the sphere part) is kept exactly instead.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from dsnn_cli.models.activations import Activation
from dsnn_cli.models.integrators import Field


def biased(z: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """z + bias in z's dtype: a float32 bias would lift bf16 activations back to float32 under
    autocast (and keep the next layers in float32)."""
    return z + bias.to(z.dtype)


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

    def euler_factor(self, tau: float, nominal: bool = False) -> float | None:
        """Proven Lipschitz factor of x -> x + tau f(x), or None without a certificate.

        `nominal` uses the norms the constraints promise (1) instead of computing them.
        """
        return None

    def regularization(self) -> torch.Tensor | None:
        """A penalty added to the training loss (soft constraints), or None."""
        return None


class ResNetField(VectorField):
    """f(x) = B s(Ax + b), the unconstrained residual block."""

    def __init__(self, space, width: int, activation: Activation) -> None:
        super().__init__(activation)
        self.A, self.B = space.operator(width, width), space.operator(width, width)
        self.bias = space.bias(width)

    def bind(self) -> Field:
        ka, kb = self.A.effective_weight(), self.B.effective_weight()

        def f(x: torch.Tensor) -> torch.Tensor:
            return self.B.apply_with(self.act(biased(self.A.apply_with(x, ka), self.bias)), kb)

        return f


class NaiveField(VectorField):
    """f(x) = B s(Ax + b) - x: with h = 1/2, the paper's naive step (x + B s(Ax + b)) / 2.

    A and B are pushed towards orthogonality by a soft penalty only, so no certificate.
    """

    def __init__(self, space, width: int, activation: Activation, penalty: float) -> None:
        super().__init__(activation)
        self.A, self.B = space.operator(width, width), space.operator(width, width)
        self.bias = space.bias(width)
        self.penalty = float(penalty)

    def bind(self) -> Field:
        ka, kb = self.A.effective_weight(), self.B.effective_weight()

        def f(x: torch.Tensor) -> torch.Tensor:
            return self.B.apply_with(self.act(biased(self.A.apply_with(x, ka), self.bias)), kb) - x

        return f

    def regularization(self) -> torch.Tensor:
        from dsnn_cli.models.orthogonal import orthogonality_penalty

        return self.penalty * (orthogonality_penalty(self.A.weight) + orthogonality_penalty(self.B.weight))


# The operator A of a gradient field, and whether its Euler step carries a proven factor.
GRADIENT_OPERATORS = {"orthogonal": True, "spectral": True, "penalty": False, "free": False}
# The ones `model.contractive` may choose (free is the splitting family's inner gradient flow).
CONTRACTIVE_OPERATORS = {name: GRADIENT_OPERATORS[name] for name in ("orthogonal", "spectral", "penalty")}


class GradientField(VectorField):
    """f(x) = -A^T s(Ax + b), the negative gradient of a convex potential when s is monotone.

    `operator` chooses A: ``orthogonal`` (exact isometry, A^T A = I), ``spectral``
    (||A|| <= 1), ``penalty`` (free, soft orthogonality penalty: uncertified) or ``free``.
    A maps the width channels to `hidden` >= width ones (an isometry keeps A^T A = I, so the
    factor is unchanged); an orthogonal A is a convolution of `kernel_size`, or per pixel at 1.
    """

    def __init__(
        self,
        space,
        width: int,
        activation: Activation,
        operator: str = "spectral",
        penalty: float = 0.0,
        hidden: int | None = None,
        kernel_size: int | None = None,
        orthogonal_map: str = "cayley",
    ) -> None:
        super().__init__(activation)
        if operator not in GRADIENT_OPERATORS:
            raise ValueError(f"operator must be one of {', '.join(GRADIENT_OPERATORS)}")
        self.operator = operator
        hidden = width if hidden is None else int(hidden)
        self.A = (
            space.orthogonal(width, hidden, kernel_size, orthogonal_map)
            if operator == "orthogonal"
            else space.operator(width, hidden, constrained=operator == "spectral")
        )
        self.bias = space.bias(hidden)
        self.penalty = float(penalty)

    def bind(self) -> Field:
        ka = self.A.effective_weight()

        def f(x: torch.Tensor) -> torch.Tensor:
            return -self.A.adjoint_with(self.act(biased(self.A.apply_with(x, ka), self.bias)), ka)

        return f

    def curvature_interval(self, nominal: bool = False) -> tuple[float, float]:
        """An interval holding the spectrum of A^T D A."""
        if self.operator == "orthogonal":
            s_min, s_max = (1.0, 1.0) if nominal else self.A.singular_value_range()
            return self.slope_min * s_min * s_min, self.slope_max * s_max * s_max
        rho = 1.0 if nominal else self.A.norm_bound()
        return 0.0, self.slope_max * rho * rho

    def euler_factor(self, tau: float, nominal: bool = False) -> float | None:
        if not GRADIENT_OPERATORS[self.operator]:
            return None
        lam_min, lam_max = self.curvature_interval(nominal)
        return max(abs(1.0 - tau * lam_min), abs(1.0 - tau * lam_max))

    def regularization(self) -> torch.Tensor | None:
        if self.operator != "penalty":
            return None
        from dsnn_cli.models.orthogonal import orthogonality_penalty

        return self.penalty * orthogonality_penalty(self.A.weight)


class ExpansiveField(VectorField):
    """f(x) = s(Wx + v) with ||W|| <= 1: factor 1 + tau M ||W|| per Euler step. The bound holds
    for any M-Lipschitz s, elementwise or not; ||W|| <= 1 by spectral normalisation or AOL.

    ``init="identity"`` starts from W = I and v = `bias` > 0, so that where Wx + v > 0 the step
    is the uniform gain 1 + tau M: it undoes the contraction of a neighbouring gradient step
    and the pair starts out norm-preserving rather than shrinking the signal layer by layer.
    """

    def __init__(
        self,
        space,
        width: int,
        activation: Activation,
        init: str = "kaiming",
        bias: float = 0.0,
        operator: str = "spectral",
    ) -> None:
        super().__init__(activation)
        self.W = space.bounded(width, width, operator)  # spectral normalisation or AOL's rescaling
        if init == "identity":
            self.W.start_at_identity()
        elif init != "kaiming":
            raise ValueError(f"init must be identity or kaiming, got {init}")
        self.bias = space.bias(width)
        with torch.no_grad():
            self.bias.fill_(float(bias))

    def bind(self) -> Field:
        kw = self.W.effective_weight()

        def f(x: torch.Tensor) -> torch.Tensor:
            return self.act(biased(self.W.apply_with(x, kw), self.bias))

        return f

    def euler_factor(self, tau: float, nominal: bool = False) -> float:
        rho = 1.0 if nominal else self.W.norm_bound()
        return 1.0 + tau * self.slope_max * rho


class MassField(VectorField):
    """f(y) = (A(y) - A(y)^T) 1 with vec A(y) = s(Uy + u): the component sum of y is invariant.

    sum_i f_i = sum_ij A_ij - sum_ij A_ji = 0 for every y, so every Runge-Kutta method (a
    linear combination of such velocities) keeps sum(y) exactly, up to rounding.
    """

    def __init__(self, space, width: int, activation: Activation) -> None:
        super().__init__(activation)
        self.dim = width
        self.U = space.operator(width, width * width)
        self.bias = space.bias(width * width)

    def bind(self) -> Field:
        ku = self.U.effective_weight()

        def f(y: torch.Tensor) -> torch.Tensor:
            a = self.act(biased(self.U.apply_with(y, ku), self.bias)).view(-1, self.dim, self.dim)
            return a.sum(dim=2) - a.sum(dim=1)

        return f
