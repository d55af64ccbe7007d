"""Optimizers and learning-rate schedules by name.

Schedules are functions of the fractional epoch t = epoch + batch / batches_per_epoch,
stepped every batch, so `trainer.limit_batches` and resumed runs see the same curve.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from dsnn_cli.errors import UsageError
from dsnn_cli.registry import Registry

OPTIMIZERS: Registry = Registry("optim")
SCHEDULES: Registry = Registry("scheduler")


@OPTIMIZERS.register("sgd")
def sgd(params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, nesterov: bool = False):
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


@OPTIMIZERS.register("adam")
def adam(params, lr: float, betas=(0.9, 0.999), weight_decay: float = 0.0):
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def adamw(params, lr: float, betas=(0.9, 0.999), weight_decay: float = 0.01):
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


def build_optimizer(cfg: Mapping[str, Any], params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    if float(kwargs.get("lr", 0)) <= 0:
        raise UsageError(f"optim.lr={kwargs.get('lr')} must be > 0")
    return OPTIMIZERS.build(cfg["name"], kwargs, params)


@SCHEDULES.register("none")
def constant(epochs: int) -> Callable[[float], float]:
    return lambda t: 1.0


@SCHEDULES.register("step")
def step(epochs: int, step_size: int = 30, gamma: float = 0.1) -> Callable[[float], float]:
    return lambda t: gamma ** math.floor(t / step_size)


@SCHEDULES.register("cosine")
def cosine(epochs: int, warmup_epochs: float = 0.0, final_factor: float = 0.0) -> Callable[[float], float]:
    def factor(t: float) -> float:
        if t < warmup_epochs:
            return (t + 1e-3) / warmup_epochs
        progress = min(1.0, (t - warmup_epochs) / max(epochs - warmup_epochs, 1e-9))
        return final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


@SCHEDULES.register("onecycle")
def onecycle(epochs: int, peak_epoch: float = 0.25, final_factor: float = 0.0) -> Callable[[float], float]:
    """Linear warm-up to the peak (as a fraction of training), then linear decay."""
    peak = peak_epoch * epochs

    def factor(t: float) -> float:
        if t < peak:
            return 0.1 + 0.9 * t / peak
        return final_factor + (1 - final_factor) * max(0.0, (epochs - t) / max(epochs - peak, 1e-9))

    return factor


def build_scheduler(cfg: Mapping[str, Any], optimizer, epochs: int, batches_per_epoch: int):
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    factor = SCHEDULES.build(cfg["name"], kwargs, epochs)
    per_batch = max(batches_per_epoch, 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: factor(i / per_batch))
