"""Dynamic layers: an integrator applied to a field (or a splitting of sub-flows) in sub-steps.

A dynamic layer applies its integrator to a field with frozen weights, in sub-steps of
sizes alpha_1 h, ..., alpha_M h (sum alpha = 1); its Lipschitz factor, where the field has
one, is the product of the sub-steps' Euler factors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import nn

from dsnn_cli.devices import at_least_float32, full_precision
from dsnn_cli.models.activations import Activation
from dsnn_cli.models.fields import GradientField, VectorField, biased
from dsnn_cli.models.integrators import Flow, Integrator, heun_step
from dsnn_cli.models.step_sizes import FixedStepSize, StepSize, step_value


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
        if not self.integrator.is_explicit_euler:
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
            shear = self.act(biased(self.A.apply_with(source, ka), self.bias))
            parts[self.target] = parts[self.target] + t * shear
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
        s = self.act(biased(self.V.apply_with(x, kv), self.bias)).view(-1, self.dim, self.dim)
        return s - s.transpose(1, 2)

    def bind_flow(self) -> Flow:
        kv = self.V.effective_weight()

        def flow(x: torch.Tensor, t: float) -> torch.Tensor:
            # in float32 at least: a bfloat16 matrix exponential is not orthogonal (nor finite)
            with full_precision(x):
                wide = at_least_float32(x)
                half = torch.linalg.matrix_exp(0.5 * t * self.omega(wide, kv)) @ wide.unsqueeze(2)
                rotation = torch.linalg.matrix_exp(t * self.omega(half.squeeze(2), kv))
                return (rotation @ wide.unsqueeze(2)).squeeze(2).to(x.dtype)

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
