"""Reference ODE systems and a high-accuracy flow map, for generating flow-learning data.

Structure-preserving networks are trained to reproduce the time-t flow of a known vector
field, so the targets must be far more accurate than the network: `flow_map` integrates with
many small classical RK4 steps in float64. Each system records the structure a network is
meant to keep (a conserved quantity, or a divergence-free field) so tests and evaluations
can measure whether it was kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from dsnn_cli.models.integrators import rk4_step
from dsnn_cli.registry import Registry

# Relative slack when turning t / max_step into a step count, so that quotients such as
# 0.07 / 0.01 = 7.000000000000001 give 7 steps (not 8) and trajectories built from equal
# pieces take exactly the same steps as one long flow.
_STEP_COUNT_SLACK = 1e-9


@dataclass(frozen=True)
class ODESystem:
    """An autonomous ODE x' = rhs(x) with the structure its flow preserves.

    Attributes:
        name: Registry name.
        dim: State dimension.
        rhs: Vector field on float64 batches (N, dim) -> (N, dim).
        invariant: Conserved quantity per point, (N, dim) -> (N,), or None.
        divergence_free: Whether the field has zero divergence (its flow preserves volume).
        sample: Initial conditions, (n, generator) -> float64 (n, dim), drawn only from the
            generator so datasets are reproducible.
        description: One line for listings.
    """

    name: str
    dim: int
    rhs: Callable[[Tensor], Tensor]
    invariant: Callable[[Tensor], Tensor] | None
    divergence_free: bool
    sample: Callable[[int, torch.Generator], Tensor]
    description: str


SYSTEMS: Registry[ODESystem] = Registry("ode system")


def _uniform_box(dim: int, low: float, high: float) -> Callable[[int, torch.Generator], Tensor]:
    """Sampler of points uniform in the box [low, high)^dim."""

    def sample(n: int, generator: torch.Generator) -> Tensor:
        u = torch.rand(n, dim, generator=generator, dtype=torch.float64)
        return low + (high - low) * u

    return sample


def _component_sum(x: Tensor) -> Tensor:
    return x.sum(dim=-1)


def _sir_rhs(y: Tensor) -> Tensor:
    s, i, _ = y.unbind(-1)
    infection = s * i
    return torch.stack([-infection, infection - i, i], dim=-1)


def _sir_sample(n: int, generator: torch.Generator) -> Tensor:
    """Uniform on the simplex: normalised i.i.d. Exp(1) draws are Dirichlet(1, 1, 1)."""
    u = torch.rand(n, 3, generator=generator, dtype=torch.float64)
    e = -torch.log1p(-u)  # 1 - u lies in (0, 1], so the log is finite.
    return e / e.sum(dim=-1, keepdim=True)


def _skew_rhs(y: Tensor) -> Tensor:
    """M(y) 1 for the skew-symmetric M(y); written out so each step costs few tensor ops."""
    y1, y2, y3 = y.unbind(-1)
    a = y3 * y1 * y1
    b = y2 * y3
    s = torch.sin(y1)
    return torch.stack([b - a, a - s, s - b], dim=-1)


ABC_A, ABC_B, ABC_C = 1.0, 0.7, 0.43


def _abc_rhs(x: Tensor) -> Tensor:
    """Arnold-Beltrami-Childress flow: each component ignores its own coordinate, so div = 0."""
    x1, x2, x3 = x.unbind(-1)
    return torch.stack(
        [
            ABC_A * torch.sin(x3) + ABC_C * torch.cos(x2),
            ABC_B * torch.sin(x1) + ABC_A * torch.cos(x3),
            ABC_C * torch.sin(x2) + ABC_B * torch.cos(x1),
        ],
        dim=-1,
    )


def _cubic_rhs(x: Tensor) -> Tensor:
    return torch.sin(x) ** 3 + x**3


SYSTEMS.add(
    "sir",
    ODESystem(
        name="sir",
        dim=3,
        rhs=_sir_rhs,
        invariant=_component_sum,
        divergence_free=False,
        sample=_sir_sample,
        description="SIR epidemic model; total population conserved, states on the simplex",
    ),
)
SYSTEMS.add(
    "skew",
    ODESystem(
        name="skew",
        dim=3,
        rhs=_skew_rhs,
        invariant=_component_sum,
        divergence_free=False,
        sample=_uniform_box(3, -1.0, 1.0),
        description="y' = M(y) 1 with skew-symmetric M(y); component sum conserved",
    ),
)
SYSTEMS.add(
    "abc",
    ODESystem(
        name="abc",
        dim=3,
        rhs=_abc_rhs,
        invariant=None,
        divergence_free=True,
        sample=_uniform_box(3, -math.pi / 2, math.pi / 2),
        description=f"ABC flow (A={ABC_A}, B={ABC_B}, C={ABC_C}); divergence-free, volume-preserving",
    ),
)
SYSTEMS.add(
    "cubic",
    ODESystem(
        name="cubic",
        dim=4,
        rhs=_cubic_rhs,
        invariant=None,
        divergence_free=False,
        sample=_uniform_box(4, -1.0, 1.0),
        description="x' = sin(x)^3 + x^3 componentwise in R^4; no structure to preserve",
    ),
)


def _check_batch(system: ODESystem, x0: Tensor) -> None:
    if x0.ndim != 2 or x0.shape[1] != system.dim:
        raise ValueError(f"{system.name}: expected states of shape (N, {system.dim}), got {tuple(x0.shape)}")


def _step_count(t: float, max_step: float) -> int:
    if not max_step > 0:
        raise ValueError(f"max_step must be positive, got {max_step}")
    return math.ceil(abs(t) / max_step * (1.0 - _STEP_COUNT_SLACK))


def flow_map(system: ODESystem, x0: Tensor, t: float, max_step: float = 1e-3) -> Tensor:
    """The time-t flow of every row of x0, by RK4 with ceil(|t| / max_step) equal steps.

    Equal steps (rather than an adaptive method) keep the map a fixed differentiable
    composition, so its Jacobian can be taken by autograd; at the default step the RK4 error
    is near float64 rounding for the registered systems. Negative t integrates backwards.

    Args:
        system: The ODE to integrate.
        x0: Initial states (N, dim); converted to float64 (autograd graphs are kept).
        t: Final time.
        max_step: Largest allowed step size.

    Returns:
        The states at time t, float64 (N, dim).
    """
    _check_batch(system, x0)
    x = x0.to(torch.float64)
    n = _step_count(t, max_step)
    if n == 0:
        return x.clone()
    h = t / n
    for _ in range(n):
        x = rk4_step(system.rhs, x, h)
    return x


def trajectory(system: ODESystem, x0: Tensor, step: float, n_steps: int, max_step: float = 1e-3) -> Tensor:
    """States at times 0, step, ..., n_steps * step (for sequence data and multi-step losses).

    Args:
        system: The ODE to integrate.
        x0: Initial states (N, dim).
        step: Time between recorded states.
        n_steps: Number of recorded steps after the initial state.
        max_step: Largest RK4 step inside each recorded step.

    Returns:
        float64 tensor (n_steps + 1, N, dim); entry 0 is x0.
    """
    _check_batch(system, x0)
    if n_steps < 0:
        raise ValueError(f"n_steps must be non-negative, got {n_steps}")
    states = [x0.to(torch.float64)]
    for _ in range(n_steps):
        states.append(flow_map(system, states[-1], step, max_step))
    return torch.stack(states)


def function_target(x: Tensor) -> Tensor:
    """The 1-D regression target f(x) = |x| + sin x + x^2 (non-smooth at 0 on purpose)."""
    return x.abs() + torch.sin(x) + x**2
