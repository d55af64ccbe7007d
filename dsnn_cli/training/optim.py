"""Optimizers and learning-rate schedules by name.

Schedules are functions of the fractional epoch t = epoch + batch / batches_per_epoch,
stepped every batch, so `trainer.limit_batches` and resumed runs see the same curve.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from dsnn_cli.config import check
from dsnn_cli.errors import UsageError
from dsnn_cli.registry import Registry

OPTIMIZERS: Registry = Registry("optim")
SCHEDULES: Registry = Registry("scheduler")


def rate(lr: float, weight_decay: float) -> tuple[float, float]:
    return check("optim.lr", lr, float, low=0, low_open=True), check(
        "optim.weight_decay", weight_decay, float, low=0
    )


def moments(betas: Any) -> tuple[float, float]:
    if not isinstance(betas, (list, tuple)) or len(betas) != 2:
        raise UsageError(f"optim.betas={betas} must be two numbers in [0, 1)")
    return tuple(check("optim.betas", b, float, low=0, high=0.9999) for b in betas)  # type: ignore[return-value]


@OPTIMIZERS.register("sgd")
def sgd(params, lr: float, momentum: float, weight_decay: float, nesterov: bool):
    lr, weight_decay = rate(lr, weight_decay)
    momentum = check("optim.momentum", momentum, float, low=0, high=0.9999)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


@OPTIMIZERS.register("adam")
def adam(params, lr: float, betas: Any, weight_decay: float):
    lr, weight_decay = rate(lr, weight_decay)
    return torch.optim.Adam(params, lr=lr, betas=moments(betas), weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def adamw(params, lr: float, betas: Any, weight_decay: float):
    lr, weight_decay = rate(lr, weight_decay)
    return torch.optim.AdamW(params, lr=lr, betas=moments(betas), weight_decay=weight_decay)


def build_optimizer(cfg: Mapping[str, Any], params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return OPTIMIZERS.build(cfg["name"], {k: v for k, v in cfg.items() if k != "name"}, params)


@SCHEDULES.register("none")
def constant(epochs: int) -> Callable[[float], float]:
    return lambda t: 1.0


@SCHEDULES.register("step")
def step(epochs: int, step_size: int, gamma: float) -> Callable[[float], float]:
    check("scheduler.step_size", step_size, int, low=1)
    check("scheduler.gamma", gamma, float, low=0, high=1, low_open=True)
    return lambda t: gamma ** math.floor(t / step_size)


@SCHEDULES.register("cosine")
def cosine(epochs: int, warmup_epochs: float, final_factor: float) -> Callable[[float], float]:
    check("scheduler.warmup_epochs", warmup_epochs, float, low=0)
    check("scheduler.final_factor", final_factor, float, low=0, high=1)

    def factor(t: float) -> float:
        if t < warmup_epochs:
            return (t + 1e-3) / warmup_epochs
        progress = min(1.0, (t - warmup_epochs) / max(epochs - warmup_epochs, 1e-9))
        return final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


@SCHEDULES.register("onecycle")
def onecycle(epochs: int, peak_epoch: float, final_factor: float) -> Callable[[float], float]:
    """Linear warm-up to the peak (as a fraction of training), then linear decay."""
    check("scheduler.peak_epoch", peak_epoch, float, low=0, high=1, low_open=True)
    check("scheduler.final_factor", final_factor, float, low=0, high=1)
    peak = peak_epoch * epochs

    def factor(t: float) -> float:
        if t < peak:
            return 0.1 + 0.9 * t / peak
        return final_factor + (1 - final_factor) * max(0.0, (epochs - t) / max(epochs - peak, 1e-9))

    return factor


class Schedule:
    """The learning rate as a function of training progress t, in (fractional) epochs.

    Why not a torch LRScheduler: the loop sets t from the batch count or from the clock
    (`trainer.max_minutes`), and a resumed run recomputes the rate from t alone, so there is
    no scheduler state to save.
    """

    def __init__(self, factor: Callable[[float], float], optimizer: torch.optim.Optimizer) -> None:
        self.factor = factor
        self.optimizer = optimizer
        self.base = [group["lr"] for group in optimizer.param_groups]

    def set(self, t: float, scale: float = 1.0) -> float:
        """Set every group's rate for progress t, times `scale` (lowered after a divergence);
        returns the first group's."""
        for group, base in zip(self.optimizer.param_groups, self.base, strict=True):
            group["lr"] = base * self.factor(t) * scale
        return self.optimizer.param_groups[0]["lr"]


def build_schedule(cfg: Mapping[str, Any], optimizer: torch.optim.Optimizer, epochs: int) -> Schedule:
    """The `scheduler` group's schedule over `epochs` epochs of training."""
    factor = SCHEDULES.build(cfg["name"], {k: v for k, v in cfg.items() if k != "name"}, epochs)
    return Schedule(factor, optimizer)
