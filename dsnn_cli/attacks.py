"""l2 adversarial attacks by name, each returning per-point results.

The evaluation contract (as AutoAttack's): inputs in [0, 1], normalisation inside the model,
logits out, model in eval mode. A point counts as broken only if a perturbed input with
||delta||_2 <= eps inside the [0, 1] box is misclassified when re-evaluated at the end.
"""

from __future__ import annotations

import inspect
import logging
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dsnn_cli.errors import DsnnError, UsageError
from dsnn_cli.registry import Registry

log = logging.getLogger("dsnn.attack")

# Perturbations may exceed eps by float32 rounding of the projection, no more.
NORM_TOLERANCE = 1e-5


@dataclass
class AttackResult:
    """Per-point outcome at one eps: `robust[i]` is False once an attack broke point i."""

    correct: torch.Tensor  # (N,) bool, clean prediction correct
    robust: torch.Tensor  # (N,) bool, correct and no adversarial example found
    adversarial: torch.Tensor  # (N, C, H, W), x + delta where broken, x elsewhere


AttackFn = Callable[..., AttackResult]
ATTACKS: Registry[AttackFn] = Registry("attack")


# --------------------------------------------------------------------------- geometry


def l2_norms(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *[1] * (like.dim() - 1))


def project(x: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Into the l2 ball, then the [0,1] box: clipping x + delta only shrinks |delta_i|."""
    scale = (eps / l2_norms(delta).clamp_min(1e-12)).clamp(max=1.0)
    delta = delta * per_sample(scale, delta)
    return (x + delta).clamp(0.0, 1.0) - x


def random_start(x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    """A random direction at a uniformly random radius in [0, eps], clipped to the box."""
    direction = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
    direction = direction / per_sample(l2_norms(direction).clamp_min(1e-12), direction)
    radius = eps * torch.rand(x.shape[0], generator=generator).to(x.device, x.dtype)
    return project(x, direction * per_sample(radius, direction), eps)


# --------------------------------------------------------------------------- losses


def margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """max_{j != y} z_j - z_y: positive exactly when the point is misclassified."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.clone()
    others.scatter_(1, labels[:, None], -math.inf)
    return others.max(dim=1).values - true


def ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels, reduction="none")


LOSSES = {"ce": ce_loss, "margin": margin_loss}


# --------------------------------------------------------------------------- PGD


def step_size_schedule(name: str, initial: float, steps: int) -> Callable[[int], float]:
    if name == "constant":
        return lambda t: initial
    if name == "cosine":
        return lambda t: initial * 0.5 * (1 + math.cos(math.pi * t / max(steps, 1)))
    raise UsageError(f"attack.schedule={name} is unknown (valid: constant, cosine)")


def pgd_run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    steps: int,
    alpha: Callable[[int], float],
    generator: torch.Generator,
    random_init: bool,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One PGD run; returns (found, adversarial inputs, points with zero gradient)."""
    delta = random_start(x, eps, generator) if random_init else torch.zeros_like(x)
    found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    best = x.clone()
    zero_grads = 0
    for t in range(steps + 1):
        delta.requires_grad_(True)
        logits = model(x + delta)
        wrong = logits.argmax(1) != y
        fresh = wrong & ~found
        best[fresh] = (x + delta)[fresh].detach()
        found |= wrong
        if t == steps or bool(found.all()):
            break
        (grad,) = torch.autograd.grad(loss_fn(logits, y).sum(), delta)
        norms = l2_norms(grad)
        if t == 0:
            zero_grads = int((norms == 0).sum())
        step = grad / per_sample(norms.clamp_min(1e-12), grad)
        delta = project(x, delta.detach() + alpha(t) * step, eps)
    return found, best, zero_grads


@ATTACKS.register("pgd")
def pgd(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    *,
    steps: int = 50,
    restarts: int = 1,
    losses: tuple[str, ...] = ("ce", "margin"),
    step_size: float = 0.25,
    schedule: str = "cosine",
    random_init: bool = True,
    batch_size: int = 250,
    seed: int = 0,
) -> AttackResult:
    """l2 PGD: for every loss, `restarts` runs of `steps` normalised-gradient steps.

    Args:
        step_size: first step as a fraction of eps (0.25: the cosine schedule then covers
            about 6 eps of path in 50 steps, enough to cross the ball from any start).
        losses: any of "ce" (cross-entropy) and "margin" (max_{j!=y} z_j - z_y).
    """
    unknown = [name for name in losses if name not in LOSSES]
    if unknown:
        raise UsageError(f"attack.losses: unknown {unknown} (valid: {', '.join(LOSSES)})")
    generator = torch.Generator().manual_seed(int(seed))
    alpha = step_size_schedule(schedule, step_size * eps, steps)
    return run_batched(
        model,
        images,
        labels,
        eps,
        batch_size,
        lambda x, y: pgd_batch(model, x, y, eps, steps, restarts, losses, alpha, generator, random_init),
    )


def pgd_batch(model, x, y, eps, steps, restarts, losses, alpha, generator, random_init):
    broken = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    adversarial = x.clone()
    zero_grads = 0
    for loss_name in losses:
        for _ in range(restarts):
            todo = (~broken).nonzero().squeeze(1)
            if todo.numel() == 0:
                return broken, adversarial, zero_grads
            found, adv, zeros = pgd_run(
                model, x[todo], y[todo], eps, LOSSES[loss_name], steps, alpha, generator, random_init
            )
            zero_grads = max(zero_grads, zeros)
            broken[todo[found]] = True
            adversarial[todo[found]] = adv[found]
    return broken, adversarial, zero_grads


def run_batched(model, images, labels, eps, batch_size, attack_batch) -> AttackResult:
    """Attack the correctly classified points batch by batch; re-check what was found."""
    check_model(model)
    with torch.no_grad():
        correct = torch.cat(
            [
                model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]
                for i in range(0, len(labels), batch_size)
            ]
        )
    adversarial = images.clone()
    broken = torch.zeros_like(correct)
    if eps > 0:
        targets = correct.nonzero().squeeze(1)
        zero_grads = 0
        for start in range(0, targets.numel(), batch_size):
            idx = targets[start : start + batch_size]
            found, adv, zeros = attack_batch(images[idx], labels[idx])
            zero_grads += zeros
            broken[idx[found]] = True
            adversarial[idx[found]] = adv[found]
        if zero_grads:
            warnings.warn(
                f"{zero_grads} points had a zero gradient at the start of an attack "
                "(saturated or masked gradients): robust accuracy may be overstated",
                stacklevel=2,
            )
        broken &= confirm_broken(model, images, adversarial, labels, eps, broken, batch_size)
    return AttackResult(correct=correct, robust=correct & ~broken, adversarial=adversarial)


def confirm_broken(model, images, adversarial, labels, eps, broken, batch_size) -> torch.Tensor:
    """Re-evaluate every adversarial example in one pass and check its norm and box."""
    delta = adversarial - images
    norms = l2_norms(delta)
    if bool((norms[broken] > eps * (1 + NORM_TOLERANCE) + 1e-7).any()):
        raise DsnnError(f"attack produced a perturbation of norm {float(norms.max()):.6g} > eps={eps}")
    if bool((adversarial < 0).any() or (adversarial > 1).any()):
        raise DsnnError("attack left the [0,1] pixel box")
    with torch.no_grad():
        still = torch.cat(
            [
                model(adversarial[i : i + batch_size]).argmax(1) != labels[i : i + batch_size]
                for i in range(0, len(labels), batch_size)
            ]
        )
    return still


def check_model(model: nn.Module) -> None:
    if model.training:
        raise DsnnError("attacks need the model in eval mode (call model.eval())")


# Config keys that select the evaluation, not the attack's own settings.
EVALUATION_KEYS = {"name", "n_examples", "device"}


def attack_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The attack's own keyword arguments from its config node, checked against its signature."""
    fn = ATTACKS[cfg["name"]]
    settings = {k: v for k, v in cfg.items() if k not in EVALUATION_KEYS}
    if "losses" in settings:
        settings["losses"] = tuple(settings["losses"])
    accepted = set(inspect.signature(fn).parameters) - {"model", "images", "labels", "eps"}
    unknown = sorted(set(settings) - accepted)
    if unknown:
        raise UsageError(
            f"attack={cfg['name']} has no setting {', '.join(unknown)} (valid: {', '.join(sorted(accepted))})"
        )
    return settings


def build_attack(
    cfg: Mapping[str, Any],
) -> Callable[[nn.Module, torch.Tensor, torch.Tensor, float], AttackResult]:
    """An attack function with its config bound: attack(model, images, labels, eps)."""
    fn, settings = ATTACKS[cfg["name"]], attack_settings(cfg)
    return lambda model, images, labels, eps: fn(model, images, labels, eps, **settings)
