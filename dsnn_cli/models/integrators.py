"""One-step integrators Psi^h, by name: explicit Runge-Kutta methods and splittings.

Each dynamic layer integrates a vector field whose weights are frozen over the step, so the
network is a composition of such steps. A Runge-Kutta method advances x' = f(x); a splitting
composes the flows of the parts of f = f_1 + f_2, each advanced by its own sub-solver.
`order` is the classical order of accuracy; tests check it on ODEs with exact solutions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from dsnn_cli.registry import Registry

Field = Callable[[torch.Tensor], torch.Tensor]
Flow = Callable[[torch.Tensor, float], torch.Tensor]  # (x, t) -> approximate time-t flow of x


@dataclass(frozen=True)
class Integrator:
    """A one-step method: ``kind`` is "runge_kutta" (uses `step`) or "splitting" (uses `split`)."""

    name: str
    order: int
    kind: str
    step: Callable[[Field, torch.Tensor, float], torch.Tensor] | None = None
    split: Callable[[Sequence[Flow], torch.Tensor, float], torch.Tensor] | None = None
    # x + h f(x): a layer's proven Lipschitz factor is then its field's Euler factor
    is_explicit_euler: bool = False

    def __call__(self, f: Field, x: torch.Tensor, h: float) -> torch.Tensor:
        if self.step is None:
            raise TypeError(f"{self.name} is a splitting: call .split(flows, x, h)")
        return self.step(f, x, h)


INTEGRATORS: Registry[Integrator] = Registry("integrator")


def euler_step(f: Field, x: torch.Tensor, h: float) -> torch.Tensor:
    return x + h * f(x)


def heun_step(f: Field, x: torch.Tensor, h: float) -> torch.Tensor:
    k1 = f(x)
    k2 = f(x + h * k1)
    return x + 0.5 * h * (k1 + k2)


def rk4_step(f: Field, x: torch.Tensor, h: float) -> torch.Tensor:
    k1 = f(x)
    k2 = f(x + 0.5 * h * k1)
    k3 = f(x + 0.5 * h * k2)
    k4 = f(x + h * k3)
    return x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def lie_trotter(flows: Sequence[Flow], x: torch.Tensor, h: float) -> torch.Tensor:
    """Phi_last^h o ... o Phi_first^h: first order."""
    for flow in flows:
        x = flow(x, h)
    return x


def strang(flows: Sequence[Flow], x: torch.Tensor, h: float) -> torch.Tensor:
    """Phi_1^{h/2} o Phi_2^{h} o Phi_1^{h/2} (symmetric, second order), nested for more parts."""
    first, rest = flows[0], flows[1:]
    x = first(x, 0.5 * h)
    x = strang(rest, x, h) if len(rest) > 1 else rest[0](x, h)
    return first(x, 0.5 * h)


INTEGRATORS.add("euler", Integrator("euler", 1, "runge_kutta", step=euler_step, is_explicit_euler=True))
INTEGRATORS.add("heun", Integrator("heun", 2, "runge_kutta", step=heun_step))
INTEGRATORS.add("rk4", Integrator("rk4", 4, "runge_kutta", step=rk4_step))
INTEGRATORS.add("lie_trotter", Integrator("lie_trotter", 1, "splitting", split=lie_trotter))
INTEGRATORS.add("strang", Integrator("strang", 2, "splitting", split=strang))
