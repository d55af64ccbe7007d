"""One-step integrators Psi^h_f(x) for autonomous vector fields, by name.

Each dynamic layer integrates a vector field f whose weights are frozen over the step, so
the network is a composition of such steps. `order` is the classical order of accuracy;
tests check it on an ODE with an exact solution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from dsnn_cli.registry import Registry

Field = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Integrator:
    """An explicit Runge-Kutta method given by its step function."""

    name: str
    order: int
    step: Callable[[Field, torch.Tensor, float], torch.Tensor]

    def __call__(self, f: Field, x: torch.Tensor, h: float) -> torch.Tensor:
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


INTEGRATORS.add("euler", Integrator("euler", 1, euler_step))
INTEGRATORS.add("heun", Integrator("heun", 2, heun_step))
INTEGRATORS.add("rk4", Integrator("rk4", 4, rk4_step))
