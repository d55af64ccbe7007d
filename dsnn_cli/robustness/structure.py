"""Measurements of the structure a flow-map network keeps: invariants over long rollouts,
and the Jacobian determinant of volume-preserving maps.

All measurements run in float64 on a copy of the model, so what they show is the
structure of the map, not float32 rounding.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from dsnn_cli.data.containers import Split


def rollout(model: nn.Module, x0: torch.Tensor, steps: int) -> torch.Tensor:
    """States x0, N(x0), N(N(x0)), ...: shape (steps + 1, n, dim)."""
    states = [x0]
    with torch.no_grad():
        for _ in range(steps):
            states.append(model(states[-1]))
    return torch.stack(states)


def jacobian_determinants(model: nn.Module, points: torch.Tensor) -> torch.Tensor:
    """det of the Jacobian of the model at every point (exact autograd Jacobians; a measurement,
    so detached from the parameters)."""
    from torch.func import jacrev, vmap

    jac = vmap(jacrev(lambda x: model(x.unsqueeze(0)).squeeze(0)))(points)
    return torch.linalg.det(jac).detach()


def flow_map_metrics(
    model: nn.Module, info: dict[str, Any], test: Split, n_points: int = 100
) -> dict[str, Any]:
    """Rollout error, invariant drift (learned vs exact flow) and |det J - 1| where they apply."""
    from dsnn_cli.data.odes import SYSTEMS, trajectory

    metrics: dict[str, Any] = {}
    if not info.get("system"):
        return metrics
    system = SYSTEMS[info["system"]]
    net = copy.deepcopy(model).cpu().double().eval()
    x0 = test.inputs[:n_points].cpu().double()
    steps = int(info.get("rollout_steps") or 0)
    if steps:
        truth = trajectory(system, x0, float(info["dt"]), steps)
        finite = (
            torch.isfinite(truth).flatten(0, 1).view(steps + 1, -1, truth.shape[-1]).all(dim=2).all(dim=0)
        )
        x0, truth = x0[finite], truth[:, finite]  # some exact solutions blow up in finite time
        learned = rollout(net, x0, steps)
        metrics["rollout_steps"] = steps
        metrics["rollout_points"] = int(finite.sum())
        metrics["rollout_mse"] = float(((learned - truth) ** 2).mean())
        if system.invariant is not None:
            start = system.invariant(x0)
            metrics["invariant_drift"] = float(
                (system.invariant(learned.flatten(0, 1)).view(steps + 1, -1) - start).abs().max()
            )
            metrics["invariant_drift_exact_flow"] = float(
                (system.invariant(truth.flatten(0, 1)).view(steps + 1, -1) - start).abs().max()
            )
    if system.divergence_free:
        errors = (jacobian_determinants(net, x0).detach() - 1.0).abs()
        metrics["det_jacobian_error"] = float(errors.max())
        metrics["det_jacobian_error_mean"] = float(errors.mean())
    return metrics
