"""Vector fields of the dynamic layers, their step sizes, and the steps that integrate them.

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

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import nn

from dsnn_cli.activations import Activation
from dsnn_cli.integrators import Field, Flow, Integrator, heun_step

Scalar = float | torch.Tensor


# ----------------------------------------------------------------------------- step sizes


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


def largest_expansive_step(h_c: Scalar, fractions: Sequence[float], activation: Activation) -> Scalar:
    """Largest h_E with c(alpha h_C) (1 + M alpha h_E) <= 1 for every sub-step fraction alpha."""
    bounds = []
    for alpha in fractions:
        c = contraction_factor(alpha * h_c, activation.slope_min, activation.slope_max)
        if isinstance(c, torch.Tensor):
            bounds.append((1 / c.clamp_min(1e-12) - 1).clamp_min(0) / (activation.slope_max * alpha))
        else:
            bounds.append(max(1 / max(c, 1e-12) - 1, 0.0) / (activation.slope_max * alpha))
    if isinstance(bounds[0], torch.Tensor):
        return torch.stack(bounds).min()
    return min(bounds)


# ----------------------------------------------------------------------------- fields


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
            return self.B.apply_with(self.act(self.A.apply_with(x, ka) + self.bias), kb)

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
            return self.B.apply_with(self.act(self.A.apply_with(x, ka) + self.bias), kb) - x

        return f

    def regularization(self) -> torch.Tensor:
        from dsnn_cli.orthogonal import orthogonality_penalty

        return self.penalty * (orthogonality_penalty(self.A.weight) + orthogonality_penalty(self.B.weight))


GRADIENT_OPERATORS = ("orthogonal", "spectral", "penalty", "free")


class GradientField(VectorField):
    """f(x) = -A^T s(Ax + b), the negative gradient of a convex potential when s is monotone.

    `operator` chooses A: ``orthogonal`` (exact isometry, A^T A = I), ``spectral``
    (||A|| <= 1), ``penalty`` (free, soft orthogonality penalty: uncertified) or ``free``.
    """

    def __init__(
        self, space, width: int, activation: Activation, operator: str = "spectral", penalty: float = 0.0
    ) -> None:
        super().__init__(activation)
        if operator not in GRADIENT_OPERATORS:
            raise ValueError(f"operator must be one of {GRADIENT_OPERATORS}")
        self.operator = operator
        self.A = (
            space.orthogonal(width)
            if operator == "orthogonal"
            else space.operator(width, width, constrained=operator == "spectral")
        )
        self.bias = space.bias(width)
        self.penalty = float(penalty)

    def bind(self) -> Field:
        ka = self.A.effective_weight()

        def f(x: torch.Tensor) -> torch.Tensor:
            return -self.A.adjoint_with(self.act(self.A.apply_with(x, ka) + self.bias), ka)

        return f

    def curvature_interval(self, nominal: bool = False) -> tuple[float, float]:
        """An interval holding the spectrum of A^T D A."""
        if self.operator == "orthogonal":
            s_min, s_max = (1.0, 1.0) if nominal else self.A.singular_value_range()
            return self.slope_min * s_min * s_min, self.slope_max * s_max * s_max
        rho = 1.0 if nominal else self.A.norm_bound()
        return 0.0, self.slope_max * rho * rho

    def euler_factor(self, tau: float, nominal: bool = False) -> float | None:
        if self.operator not in ("orthogonal", "spectral"):
            return None
        lam_min, lam_max = self.curvature_interval(nominal)
        return max(abs(1.0 - tau * lam_min), abs(1.0 - tau * lam_max))

    def regularization(self) -> torch.Tensor | None:
        if self.operator != "penalty":
            return None
        from dsnn_cli.orthogonal import orthogonality_penalty

        return self.penalty * orthogonality_penalty(self.A.weight)


class ExpansiveField(VectorField):
    """f(x) = s(Wx + v) with ||W|| <= 1: factor 1 + tau M ||W|| per Euler step."""

    def __init__(self, space, width: int, activation: Activation) -> None:
        super().__init__(activation)
        self.W = space.operator(width, width, constrained=True)
        self.bias = space.bias(width)

    def bind(self) -> Field:
        kw = self.W.effective_weight()

        def f(x: torch.Tensor) -> torch.Tensor:
            return self.act(self.W.apply_with(x, kw) + self.bias)

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
            a = self.act(self.U.apply_with(y, ku) + self.bias).view(-1, self.dim, self.dim)
            return a.sum(dim=2) - a.sum(dim=1)

        return f


# ----------------------------------------------------------------------------- steps


def equal_fractions(substeps: int) -> list[float]:
    return [1.0 / int(substeps)] * int(substeps)


class Step(nn.Module):
    """One dynamic layer: a Runge-Kutta method on a field, in sub-steps alpha_i h."""

    def __init__(
        self,
        field: VectorField,
        integrator: Integrator,
        step_size: StepSize | float,
        fractions: Sequence[float],
    ) -> None:
        super().__init__()
        if integrator.kind != "runge_kutta":
            raise ValueError(f"{integrator.name} is not a Runge-Kutta method")
        self.field = field
        self.integrator = integrator
        self.step_size = step_size if isinstance(step_size, StepSize) else FixedStepSize(step_size)
        self.fractions = [float(a) for a in fractions]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.field.bind()
        h = self.step_size.value()
        for alpha in self.fractions:
            x = self.integrator(f, x, alpha * h)
        return x

    def lipschitz_factor(self, nominal: bool = False) -> float | None:
        """Proven factor of the whole layer (sub-steps composed), for explicit Euler only."""
        if self.integrator.name != "euler":
            return None
        h = step_value(self.step_size)
        factor = 1.0
        for alpha in self.fractions:
            sub = self.field.euler_factor(alpha * h, nominal)
            if sub is None:
                return None
            factor *= sub
        return factor

    def extra_repr(self) -> str:
        return f"integrator={self.integrator.name}, fractions={self.fractions}"


class SubFlow(nn.Module, ABC):
    """One part of a split vector field, with its own (exact or order >= 2) solver."""

    @abstractmethod
    def bind_flow(self) -> Flow:
        """Return flow(x, t) with the current weights."""


class Shear(SubFlow):
    """Moves one block of a split state by t s(A other + a): exact flow, det J = 1.

    With the state split into (x, v) along dimension 1, ``target=0`` gives
    x <- x + t s(Av + a) and ``target=1`` gives v <- v + t s(Bx + b). The Jacobian is block
    unit-triangular, so every shear (and every composition of shears) preserves volume.
    """

    def __init__(self, space, sizes: tuple[int, int], target: int, activation: Activation) -> None:
        super().__init__()
        self.sizes, self.target = sizes, target
        source = 1 - target
        self.A = space.operator(sizes[source], sizes[target])
        self.bias = space.bias(sizes[target])
        self.act = activation.module

    def bind_flow(self) -> Flow:
        ka = self.A.effective_weight()

        def flow(state: torch.Tensor, t: float) -> torch.Tensor:
            parts = list(torch.split(state, list(self.sizes), dim=1))
            source = parts[1 - self.target]
            parts[self.target] = parts[self.target] + t * self.act(self.A.apply_with(source, ka) + self.bias)
            return torch.cat(parts, dim=1)

        return flow


class SphereFlow(SubFlow):
    """x' = Omega(x) x with Omega = S - S^T skew, vec S(x) = s(Vx + c): keeps ||x|| exactly.

    Solved by the exponential midpoint rule x <- exp(t Omega(x_half)) x with
    x_half = exp(t/2 Omega(x)) x: second order, and an orthogonal matrix times x, so the
    norm is kept to rounding whatever t is.
    """

    def __init__(self, space, width: int, activation: Activation) -> None:
        super().__init__()
        self.dim = width
        self.V = space.operator(width, width * width)
        self.bias = space.bias(width * width)
        self.act = activation.module

    def omega(self, x: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        s = self.act(self.V.apply_with(x, kv) + self.bias).view(-1, self.dim, self.dim)
        return s - s.transpose(1, 2)

    def bind_flow(self) -> Flow:
        kv = self.V.effective_weight()

        def flow(x: torch.Tensor, t: float) -> torch.Tensor:
            half = torch.linalg.matrix_exp(0.5 * t * self.omega(x, kv)) @ x.unsqueeze(2)
            rotation = torch.linalg.matrix_exp(t * self.omega(half.squeeze(2), kv))
            return (rotation @ x.unsqueeze(2)).squeeze(2)

        return flow


class GradientFlow(SubFlow):
    """x' = -A^T s(Ax + b) (A free), solved by Heun's method: second order."""

    def __init__(self, space, width: int, activation: Activation) -> None:
        super().__init__()
        self.field = GradientField(space, width, activation, operator="free")

    def bind_flow(self) -> Flow:
        f = self.field.bind()
        return lambda x, t: heun_step(f, x, t)


class SplitStep(nn.Module):
    """One dynamic layer: a splitting of sub-flows (Lie-Trotter or Strang), in sub-steps."""

    def __init__(
        self,
        parts: Sequence[SubFlow],
        integrator: Integrator,
        step_size: StepSize | float,
        fractions: Sequence[float],
    ) -> None:
        super().__init__()
        if integrator.kind != "splitting":
            raise ValueError(f"{integrator.name} is not a splitting method")
        self.parts = nn.ModuleList(parts)
        self.integrator = integrator
        self.step_size = step_size if isinstance(step_size, StepSize) else FixedStepSize(step_size)
        self.fractions = [float(a) for a in fractions]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flows = [part.bind_flow() for part in self.parts]
        h = self.step_size.value()
        for alpha in self.fractions:
            x = self.integrator.split(flows, x, alpha * h)
        return x

    def lipschitz_factor(self, nominal: bool = False) -> None:
        return None

    def extra_repr(self) -> str:
        return f"integrator={self.integrator.name}, fractions={self.fractions}"
