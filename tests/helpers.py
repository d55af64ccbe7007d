"""Helpers for tests: configs composed from the real YAML, and lower bounds on Lipschitz constants."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from dsnn_cli.models.integrators import Field


def compose_config(config_name: str, overrides: list[str] | None = None):
    """Compose a config as the CLI would (without running it)."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="dsnn_cli.conf", version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides or []))


def model_config(name: str, **overrides: Any) -> dict[str, Any]:
    """conf/model/<name>.yaml as a plain dict (the defaults live only in YAML), then `overrides`."""
    cfg = OmegaConf.to_container(compose_config("train", [f"model={name}"]).model, resolve=True)
    cfg.update(overrides)
    return cfg


def data_config(name: str, **overrides: Any) -> dict[str, Any]:
    """conf/data/<name>.yaml as a plain dict, then `overrides`."""
    group = [f"data={name}"] + (["data.root=unset"] if name == "imagefolder" else [])
    cfg = OmegaConf.to_container(compose_config("train", group).data, resolve=True)
    cfg.update(overrides)
    return cfg


def attack_config(run: str, eps: Any, attack: dict[str, Any], **top: Any) -> dict[str, Any]:
    """The composed `dsnn attack` config: conf/attack.yaml with attack=<attack["name"]>, then the
    other keys of `attack` as that group's settings and `top` as top-level keys."""
    overrides = [f"run={run}", f"attack={attack['name']}"]
    cfg = OmegaConf.to_container(compose_config("attack", overrides), resolve=True)
    cfg["eps"] = eps
    cfg["attack"].update({k: v for k, v in attack.items() if k != "name"})
    cfg.update(top)
    return cfg


def pair_search(f, x: torch.Tensor, steps: int = 60, lr: float = 0.05, seed: int = 0) -> float:
    """Largest ||f(x) - f(y)|| / ||x - y|| found by gradient ascent over pairs (x, y).

    Starts from pairs at small random offsets and moves both points; a lower bound on the
    Lipschitz constant that also sees non-differentiable kinks between the points.
    """
    generator = torch.Generator().manual_seed(seed)
    a = x.clone().requires_grad_(True)
    b = (x + 1e-2 * torch.randn(x.shape, generator=generator, dtype=x.dtype)).requires_grad_(True)
    optimizer = torch.optim.Adam([a, b], lr=lr)
    best = 0.0
    for _ in range(steps):
        num = (f(a) - f(b)).flatten(1).norm(dim=1)
        den = (a - b).flatten(1).norm(dim=1).clamp_min(1e-12)
        ratio = num / den
        best = max(best, float(ratio.max().detach()))
        optimizer.zero_grad()
        (-torch.log(ratio.clamp_min(1e-30)).sum()).backward()
        optimizer.step()
    return best


def measured_lipschitz(f, x: torch.Tensor, iters: int = 60) -> float:
    """Largest Jacobian spectral norm (power iteration) and pair-search ratio at x."""
    jac = float(jacobian_norm_lower_bound(f, x, iters=iters).max().detach())
    return max(jac, pair_search(f, x))


def jacobian_norm_lower_bound(
    model: torch.nn.Module, x: torch.Tensor, iters: int = 50, seed: int = 0
) -> torch.Tensor:
    """Per-sample spectral norm of the Jacobian at x by power iteration (a lower bound)."""
    from torch.func import jvp, vjp

    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    v = v / v.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))
    _, pullback = vjp(model, x)
    norms = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for _ in range(iters):
        _, jv = jvp(model, (x,), (v,))
        norms = jv.flatten(1).norm(dim=1)
        (v,) = pullback(jv)
        v = v / v.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *[1] * (x.dim() - 1))
    return norms


def power_iteration(
    apply: Callable[[torch.Tensor], torch.Tensor],
    adjoint: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    iters: int = 100,
) -> tuple[float, torch.Tensor]:
    """Estimate ||A|| from below by power iteration on A^T A; returns (estimate, vector)."""
    u = start / start.norm()
    estimate = 0.0
    for _ in range(iters):
        v = apply(u)
        estimate = float(v.norm())
        if estimate == 0.0:
            break
        u = adjoint(v)
        u = u / u.norm()
    return estimate, u


def divergence(f: Field, x: torch.Tensor) -> torch.Tensor:
    """Divergence of the vector field f at points x (N, dim), by autograd.

    Exact up to rounding (no finite differences), so a divergence-free claim can be checked
    to near machine precision. Rows must be independent under f (true for every field here).

    Returns:
        Detached tensor (N,) of the Jacobian traces.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        y = f(x)
        total = torch.zeros(x.shape[0], dtype=x.dtype)
        for i in range(x.shape[1]):
            (grad,) = torch.autograd.grad(y[:, i].sum(), x, retain_graph=i + 1 < x.shape[1])
            total = total + grad[:, i]
    return total
