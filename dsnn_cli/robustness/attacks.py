"""l2 adversarial attacks by name, each returning per-point results.

The evaluation contract (as AutoAttack's): inputs in [0, 1], normalisation inside the model,
logits out, model in eval mode. A point counts as broken only if a perturbed input with
||delta||_2 <= eps inside the [0, 1] box is misclassified when re-evaluated at the end.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dsnn_cli.config import setting
from dsnn_cli.devices import to_device
from dsnn_cli.errors import DsnnError, UsageError
from dsnn_cli.models.inference import predict
from dsnn_cli.registry import Registry
from dsnn_cli.robustness.certificates import logit_margins

log = logging.getLogger("dsnn.attack")

# Perturbations may exceed eps by float32 rounding of the projection, no more.
NORM_TOLERANCE = 1e-5


@dataclass
class AttackResult:
    """Per-point outcome at one eps: `robust[i]` is False once an attack broke point i.

    `stages` lists (attack, robust accuracy after it) along a cascade: a point stays robust
    only if every attack fails on it, so the accuracy never rises along the list.
    """

    correct: torch.Tensor  # (N,) bool, clean prediction correct
    robust: torch.Tensor  # (N,) bool, correct and no adversarial example found
    adversarial: torch.Tensor  # (N, C, H, W), x + delta where broken, x elsewhere
    stages: list[tuple[str, float]] = field(default_factory=list)


# A stage attacks one batch of still-robust points: (x, y) -> (found, adversarial, zero-gradient count).
Stage = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, int]]


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


def fast_gradient(x: torch.Tensor, grad: torch.Tensor, eps: float) -> torch.Tensor:
    """x moved by eps along each point's normalised loss gradient, in the box: the l2 fast
    gradient method (one PGD step from the clean point), what adversarial training replays."""
    direction = grad / per_sample(l2_norms(grad).clamp_min(1e-12), grad)
    return x + project(x, eps * direction, eps)


def random_start(x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    """A random direction at a uniformly random radius in [0, eps], clipped to the box."""
    direction = to_device(torch.randn(x.shape, generator=generator), x.device).to(x.dtype)
    direction = direction / per_sample(l2_norms(direction).clamp_min(1e-12), direction)
    radius = eps * to_device(torch.rand(x.shape[0], generator=generator), x.device).to(x.dtype)
    return project(x, direction * per_sample(radius, direction), eps)


# --------------------------------------------------------------------------- losses


def margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """max_{j != y} z_j - z_y: positive exactly when the point is misclassified."""
    return -logit_margins(logits, labels)


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


# PGD steps between two reads of which points are broken, on a GPU (on a CPU, where a read
# costs nothing, every step): broken points stay in the batch, frozen, until the next read.
PGD_READ_EVERY = 10


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
    """One PGD run; returns (found, adversarial inputs, points with zero gradient).

    Broken points leave the batch at every read of the device (every step on a CPU, every
    PGD_READ_EVERY steps elsewhere: a read waits for the device), so the cost falls with the
    robust accuracy; between reads they stay, frozen at the point that broke them.
    """
    read_every = 1 if x.device.type == "cpu" else PGD_READ_EVERY
    delta = random_start(x, eps, generator) if random_init else torch.zeros_like(x)
    found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    best = x.clone()
    active = torch.arange(x.shape[0], device=x.device)
    zero_grads = torch.zeros((), dtype=torch.long, device=x.device)
    for t in range(steps + 1):
        xa, ya = x[active], y[active]
        da = delta[active].requires_grad_(True)
        logits = model(xa + da)
        before = found[active]
        wrong = (logits.argmax(1) != ya) & ~before  # broken at this step
        best[active] = torch.where(per_sample(wrong, xa), (xa + da).detach(), best[active])
        broken = before | wrong
        found[active] = broken
        if t == steps:
            break
        kept = None
        if t % read_every == 0:
            kept = active[~broken]  # the one read of this step
            if kept.numel() == 0:
                break
        (grad,) = torch.autograd.grad(loss_fn(logits, ya).sum(), da)
        norms = l2_norms(grad)
        if t == 0:
            zero_grads = (norms == 0).sum()
        step = grad / per_sample(norms.clamp_min(1e-12), grad)
        moved = project(xa, da.detach() + alpha(t) * step, eps)
        delta[active] = torch.where(per_sample(broken, moved), da.detach(), moved)
        if kept is not None:
            active = kept
    return found, best, int(zero_grads)


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
    stage = lambda x, y: pgd_batch(model, x, y, eps, steps, restarts, losses, alpha, generator, random_init)  # noqa: E731
    return run_cascade(model, images, labels, eps, batch_size, [("pgd", stage)])


@ATTACKS.register("paper")
def paper(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    *,
    steps: int = 10,
    step_size: float = 0.025,
    batch_size: int = 256,
    seed: int = 0,
) -> AttackResult:
    """The protocol behind the paper's tables: 10 steps of 0.025 eps, cross-entropy, one start.

    Its steps can move at most 0.25 eps from the random start, so it under-estimates the
    attainable damage; it is here to reproduce published numbers and show the gap.
    """
    return pgd(
        model,
        images,
        labels,
        eps,
        steps=steps,
        restarts=1,
        losses=("ce",),
        step_size=step_size,
        schedule="constant",
        random_init=True,
        batch_size=batch_size,
        seed=seed,
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


def run_cascade(
    model, images, labels, eps: float, batch_size: int, stages: list[tuple[str, Stage]]
) -> AttackResult:
    """Run the stages in order on the points still robust; confirm every break as it is found."""
    check_model(model)
    sanity_check(model, images[:batch_size])
    correct = predict(model, images.split(batch_size)).argmax(1).to(labels.device) == labels
    adversarial = images.clone()
    broken = torch.zeros_like(correct)
    history: list[tuple[str, float]] = []
    zero_grads = 0
    for name, stage in stages if eps > 0 else []:
        targets = (correct & ~broken).nonzero().squeeze(1)
        for start in range(0, targets.numel(), batch_size):
            idx = targets[start : start + batch_size]
            found, adv, zeros = stage(images[idx], labels[idx])
            zero_grads += zeros
            found = found & confirm_broken(images[idx], adv, labels[idx], eps, model)
            broken[idx[found]] = True
            adversarial[idx[found]] = adv[found]
        history.append((name, float((correct & ~broken).float().mean())))
    if zero_grads:
        warnings.warn(
            f"{zero_grads} points had a zero gradient at the start of an attack "
            "(saturated or masked gradients): robust accuracy may be overstated",
            stacklevel=2,
        )
    return AttackResult(correct=correct, robust=correct & ~broken, adversarial=adversarial, stages=history)


# --------------------------------------------------------------------------- AutoAttack


def reference_stage(attack: Any) -> Stage:
    """One component of the reference AutoAttack code (`pyautoattack`, Croce & Hein's own) as a
    cascade stage: its output for every point is a candidate that run_cascade re-evaluates."""

    def stage(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        candidates = torch.ones(y.shape[0], dtype=torch.bool, device=y.device)
        return candidates, attack.perturb(x, y).detach(), 0

    return stage


def number_of_classes(model: nn.Module, images: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(images[:1]).shape[1])


def autoattack_stages(
    model,
    images,
    eps: float,
    steps: int,
    restarts: int,
    n_target_classes: int,
    seed: int,
    names: tuple[str, ...],
    square_queries: int = 5000,
) -> list[tuple[str, Stage]]:
    """AutoAttack's l2 components from the reference code, set as its `standard` version sets
    them: APGD-CE, APGD-T (targeted DLR), FAB-T and Square (p_init 0.8, no rescaled schedule)."""
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    from pyautoattack.fab_pt import FABAttack_PT
    from pyautoattack.square import SquareAttack

    classes = number_of_classes(model, images)
    targets = max(1, min(int(n_target_classes), classes - 1))
    device = images.device
    common = {"norm": "L2", "eps": eps, "seed": seed, "device": device, "verbose": False}
    makers = {
        "apgd-ce": lambda: APGDAttack(model, n_iter=steps, n_restarts=restarts, loss="ce", **common),
        "apgd-t": lambda: APGDAttack_targeted(
            model, n_iter=steps, n_restarts=restarts, n_target_classes=targets, **common
        ),
        "fab-t": lambda: FABAttack_PT(
            model, n_iter=steps, n_restarts=restarts, targeted=True, n_target_classes=targets, **common
        ),
        "square": lambda: SquareAttack(
            model, n_queries=square_queries, n_restarts=restarts, p_init=0.8, resc_schedule=False, **common
        ),
    }
    return [(name, reference_stage(makers[name]())) for name in names]


@ATTACKS.register("apgd")
def apgd(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    *,
    steps: int = 100,
    restarts: int = 1,
    n_target_classes: int = 9,
    batch_size: int = 250,
    seed: int = 0,
) -> AttackResult:
    """APGD-CE then APGD-T (targeted DLR loss): the white-box core of AutoAttack, the reference code."""
    stages = autoattack_stages(
        model, images, eps, steps, restarts, n_target_classes, seed, ("apgd-ce", "apgd-t")
    )
    return run_cascade(model, images, labels, eps, batch_size, stages)


@ATTACKS.register("autoattack")
def autoattack(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    *,
    steps: int = 100,
    restarts: int = 1,
    n_target_classes: int = 9,
    square_queries: int = 5000,
    batch_size: int = 250,
    seed: int = 0,
) -> AttackResult:
    """The standard AutoAttack cascade (APGD-CE, APGD-T, FAB-T, Square) of the reference code,
    in our bookkeeping (every break confirmed, certificates checked), accuracy after each."""
    names = ("apgd-ce", "apgd-t", "fab-t", "square")
    stages = autoattack_stages(
        model, images, eps, steps, restarts, n_target_classes, seed, names, square_queries
    )
    return run_cascade(model, images, labels, eps, batch_size, stages)


def sanity_check(model: nn.Module, images: torch.Tensor) -> None:
    """AutoAttack's checks: deterministic outputs, and logits rather than probabilities."""
    if images.numel() == 0:
        return
    with torch.no_grad():
        first, second = model(images), model(images)
    if not torch.equal(first, second):
        warnings.warn(
            "the model's outputs differ between two identical forward passes: a randomised "
            "model needs an EOT attack, and robust accuracy may be overstated",
            stacklevel=3,
        )
    sums = first.sum(1)
    if bool(((first >= 0) & (first <= 1)).all()) and torch.allclose(sums, torch.ones_like(sums)):
        warnings.warn("the model seems to output probabilities; attacks expect logits", stacklevel=3)


def confirm_broken(images, adversarial, labels, eps: float, model: nn.Module) -> torch.Tensor:
    """Which adversarial examples are misclassified on re-evaluation; each must lie in ball and box."""
    norms = l2_norms(adversarial - images)
    if bool((norms > eps * (1 + NORM_TOLERANCE) + 1e-7).any()):
        raise DsnnError(f"an attack produced a perturbation of norm {float(norms.max()):.6g} > eps={eps}")
    if bool((adversarial < 0).any() or (adversarial > 1).any()):
        raise DsnnError("an attack left the [0,1] pixel box")
    with torch.no_grad():
        return model(adversarial).argmax(1) != labels


def check_model(model: nn.Module) -> None:
    if model.training:
        raise DsnnError("attacks need the model in eval mode (call model.eval())")


# Config keys that select the evaluation, not the attack's own settings.
EVALUATION_KEYS = {"name", "n_examples", "device"}
# The ranges of the settings the attacks share (each attack takes the ones in its signature).
SETTING_RANGES: dict[str, dict[str, Any]] = {
    "steps": {"kind": int, "low": 1},
    "restarts": {"kind": int, "low": 1},
    "step_size": {"kind": float, "low": 0, "low_open": True},
    "batch_size": {"kind": int, "low": 1},
    "n_target_classes": {"kind": int, "low": 1},
    "square_queries": {"kind": int, "low": 1},
    "seed": {"kind": int},
    "random_init": {"kind": bool},
    "schedule": {"kind": str, "choices": ("constant", "cosine")},
}


def attack_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The attack's own keyword arguments from its config node, checked against its signature
    and the settings' ranges (one UsageError line naming the key)."""
    settings = {k: v for k, v in cfg.items() if k not in EVALUATION_KEYS}
    if "losses" in settings:
        settings["losses"] = tuple(settings["losses"])
    ATTACKS.check_settings(cfg["name"], settings, n_args=4)  # after model, images, labels, eps
    for key, rule in SETTING_RANGES.items():
        if key in settings:
            settings[key] = setting(settings, key, prefix="attack", **rule)
    if "n_examples" in cfg:
        setting(cfg, "n_examples", int, "attack", low=1, nullable=True)
    return settings


def build_attack(
    name: str, settings: Mapping[str, Any]
) -> Callable[[nn.Module, torch.Tensor, torch.Tensor, float], AttackResult]:
    """An attack function with its checked settings bound: attack(model, images, labels, eps)."""
    fn = ATTACKS[name]
    return lambda model, images, labels, eps: fn(model, images, labels, eps, **settings)
