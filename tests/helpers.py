"""Measurement helpers for tests: lower bounds on Lipschitz constants."""

from __future__ import annotations

import torch

from dsnn_cli.robustness.certificates import jacobian_norm_lower_bound


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
