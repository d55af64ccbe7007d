"""The CIFAR architecture of the paper and the model families that fill it, by name.

A network is: normalisation, then per block a lifting convolution, `steps` dynamic layers
(each an integrator step of a vector field, in `substeps` sub-steps) and a 2x2 max-pool,
then a linear head. Families choose the vector fields:

* ``resnet``       x + h B s(Ax + b), unconstrained (no certificate);
* ``nonexpansive`` x - h A^T s(Ax + b), ||A|| <= 1, 0 <= h <= 2 / M: every layer 1-Lipschitz;
* ``lipschitz``    the paper's switching scheme: expansive x + h_E s(Wx + v) alternating with
  contractive x - h_C A^T s(Ax + b).

In the certified families the lifting convolutions and the head have norm <= 1, max-pooling
over disjoint windows is 1-Lipschitz, and the normalisation contributes 1 / min(std).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dsnn_cli.activations import Activation, build_activation
from dsnn_cli.errors import UsageError
from dsnn_cli.integrators import INTEGRATORS, Integrator
from dsnn_cli.operators import ConstrainedNorm, ConvOperator, DenseOperator
from dsnn_cli.registry import Registry
from dsnn_cli.steps import ExpansiveField, GradientField, ResNetField, Step

NORMALIZATIONS = ("mean", "mean_std", "none")


@dataclass(frozen=True)
class StepContext:
    """What a family needs to build the dynamic layers of one block."""

    cfg: Mapping[str, Any]
    width: int
    size: tuple[int, int]
    activation: Activation
    integrator: Integrator


@dataclass(frozen=True)
class Family:
    """A model family: its vector fields, admitted integrators and whether it is certified."""

    name: str
    certified: bool
    integrators: tuple[str, ...]
    make_steps: Callable[[StepContext], list[Step]]
    validate: Callable[[Mapping[str, Any], Activation], None]
    default_normalize: str


FAMILIES: Registry[Family] = Registry("model")


class Normalize(nn.Module):
    """(x - mean) / std inside the model, so attacks and certificates work in [0,1] pixels."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def lipschitz_factor(self) -> float:
        return 1.0 / float(self.std.min())


class Block(nn.Module):
    """Lifting convolution, dynamic layers, 2x2 max-pool."""

    def __init__(self, lift: ConvOperator, steps: list[Step]) -> None:
        super().__init__()
        self.lift = lift
        self.steps = nn.ModuleList(steps)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lift(x)
        for step in self.steps:
            x = step(x)
        return self.pool(x)


class DSNN(nn.Module):
    """A dynamical-systems-based classifier: images in [0, 1], logits out."""

    def __init__(self, family: Family, cfg: Mapping[str, Any], data_info: Mapping[str, Any]):
        super().__init__()
        self.family = family.name
        self.certified = family.certified
        self.config = {"model": dict(cfg), "data_info": dict(data_info)}
        activation_cfg = cfg.get("activation", "leaky_relu")
        integrator = INTEGRATORS[integrator_name(cfg)]
        widths = [int(w) for w in cfg["widths"]]
        size = image_size(data_info)
        if any(s % 2 ** len(widths) for s in size):
            raise UsageError(
                f"image size {size} is not divisible by 2^{len(widths)} (one 2x2 pool per block "
                f"of model.widths={widths}); use fewer blocks or another data.image_size"
            )
        self.normalize = make_normalize(cfg, family, data_info)
        blocks, channels = [], int(data_info["in_channels"])
        for width in widths:
            lift = ConvOperator(channels, width, size, int(cfg["kernel_size"]), family.certified)
            context = StepContext(cfg, width, size, build_activation(activation_cfg), integrator)
            blocks.append(Block(lift, family.make_steps(context)))
            channels, size = width, (size[0] // 2, size[1] // 2)
        self.blocks = nn.ModuleList(blocks)
        features = channels * size[0] * size[1]
        self.head = DenseOperator(features, int(data_info["num_classes"]), family.certified)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        for block in self.blocks:
            x = block(x)
        return self.head(torch.flatten(x, 1))

    def calibrate(self) -> None:
        """Replace power-iteration norm estimates by proven bounds (before any evaluation)."""
        for module in self.modules():
            if isinstance(module, ConstrainedNorm):
                module.calibrate()

    def lipschitz_factors(self) -> list[tuple[str, float]] | None:
        """Proven l2 Lipschitz factor of every layer in order, or None if not certified."""
        if not self.certified:
            return None
        factors = [("normalize", self.normalize.lipschitz_factor())]
        for b, block in enumerate(self.blocks):
            factors.append((f"blocks.{b}.lift", block.lift.norm_bound()))
            for s, step in enumerate(block.steps):
                factor = step.lipschitz_factor()
                if factor is None:
                    return None
                factors.append((f"blocks.{b}.steps.{s}", factor))
            factors.append((f"blocks.{b}.pool", 1.0))
        factors.append(("head", self.head.norm_bound()))
        return factors


def image_size(data_info: Mapping[str, Any]) -> tuple[int, int]:
    size = data_info["image_size"]
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def integrator_name(cfg: Mapping[str, Any]) -> str:
    integrator = cfg.get("integrator", "euler")
    return integrator if isinstance(integrator, str) else str(integrator["name"])


def make_normalize(cfg: Mapping[str, Any], family: Family, data_info: Mapping[str, Any]):
    mode = cfg.get("normalize") or family.default_normalize
    if mode not in NORMALIZATIONS:
        raise UsageError(f"model.normalize={mode} is unknown (valid: {', '.join(NORMALIZATIONS)})")
    channels = int(data_info["in_channels"])
    mean = list(data_info["mean"]) if mode != "none" else [0.0] * channels
    std = list(data_info["std"]) if mode == "mean_std" else [1.0] * channels
    return Normalize(mean, std)


# ----------------------------------------------------------------------------- families


def resnet_steps(ctx: StepContext) -> list[Step]:
    k, h, sub = int(ctx.cfg["kernel_size"]), float(ctx.cfg["h"]), int(ctx.cfg["substeps"])
    return [
        Step(ResNetField(ctx.width, ctx.size, ctx.activation, k), ctx.integrator, h, sub)
        for _ in range(int(ctx.cfg["steps"]))
    ]


def nonexpansive_steps(ctx: StepContext) -> list[Step]:
    k, h, sub = int(ctx.cfg["kernel_size"]), float(ctx.cfg["h"]), int(ctx.cfg["substeps"])
    return [
        Step(GradientField(ctx.width, ctx.size, ctx.activation, k), ctx.integrator, h, sub)
        for _ in range(int(ctx.cfg["steps"]))
    ]


def lipschitz_steps(ctx: StepContext) -> list[Step]:
    k, sub = int(ctx.cfg["kernel_size"]), int(ctx.cfg["substeps"])
    h_c = float(ctx.cfg["h_contractive"])
    h_e = expansive_step_size(ctx.cfg, ctx.activation)
    steps: list[Step] = []
    for _ in range(int(ctx.cfg["steps"]) // 2):
        steps.append(Step(ExpansiveField(ctx.width, ctx.size, ctx.activation, k), ctx.integrator, h_e, sub))
        steps.append(Step(GradientField(ctx.width, ctx.size, ctx.activation, k), ctx.integrator, h_c, sub))
    return steps


def no_constraint(cfg: Mapping[str, Any], activation: Activation) -> None:
    return None


def validate_nonexpansive(cfg: Mapping[str, Any], activation: Activation) -> None:
    h, limit = float(cfg["h"]), 2.0 / activation.slope_max
    if not 0.0 <= h <= limit:
        raise UsageError(
            f"model.h={h:g} breaks non-expansiveness: it must lie in [0, {limit:g}] (2 / max slope)"
        )


def contraction_factor(tau: float, activation: Activation) -> float:
    """Factor max(|1 - m tau|, |1 - M tau|) of an Euler gradient step with A^T A = I."""
    return max(abs(1.0 - activation.slope_min * tau), abs(1.0 - activation.slope_max * tau))


def largest_expansive_step(cfg: Mapping[str, Any], activation: Activation) -> float:
    """Largest h_E with c(tau_C) (1 + M tau_E) <= 1 per sub-step (taus are h / substeps)."""
    substeps = int(cfg["substeps"])
    c = contraction_factor(float(cfg["h_contractive"]) / substeps, activation)
    if c >= 1.0:
        return 0.0
    if c == 0.0:
        return math.inf
    return substeps * (1.0 / c - 1.0) / activation.slope_max


def expansive_step_size(cfg: Mapping[str, Any], activation: Activation) -> float:
    h_e = cfg.get("h_expansive")
    return largest_expansive_step(cfg, activation) if h_e is None else float(h_e)


def validate_lipschitz(cfg: Mapping[str, Any], activation: Activation) -> None:
    if int(cfg["steps"]) % 2 or int(cfg["steps"]) < 2:
        raise UsageError(
            f"model.steps={cfg['steps']} must be a positive even number "
            "(expansive and contractive steps alternate)"
        )
    h_c, limit = float(cfg["h_contractive"]), 2.0 / activation.slope_max
    if not 0.0 < h_c / int(cfg["substeps"]) <= limit:
        raise UsageError(
            f"model.h_contractive={h_c:g} must give sub-steps in (0, {limit:g}] "
            f"(model.substeps={cfg['substeps']})"
        )
    h_e, largest = cfg.get("h_expansive"), largest_expansive_step(cfg, activation)
    if h_e is not None and not 0.0 <= float(h_e) <= largest * (1 + 1e-12):
        raise UsageError(
            f"model.h_expansive={float(h_e):g} breaks the Lipschitz constraint for "
            f"model.h_contractive={h_c:g} and this activation; the largest admissible "
            f"h_expansive is {largest:.6g}"
        )


FAMILIES.add(
    "resnet", Family("resnet", False, ("euler", "heun", "rk4"), resnet_steps, no_constraint, "mean_std")
)
FAMILIES.add(
    "nonexpansive",
    Family("nonexpansive", True, ("euler",), nonexpansive_steps, validate_nonexpansive, "mean"),
)
FAMILIES.add("lipschitz", Family("lipschitz", True, ("euler",), lipschitz_steps, validate_lipschitz, "mean"))


def check_model_config(cfg: Mapping[str, Any]) -> Family:
    """Validate a model config before any data is loaded; returns its family.

    Raises:
        UsageError: unknown family or integrator, or step sizes outside the certified region.
    """
    cfg = to_plain(cfg)
    family = FAMILIES[cfg["name"]]
    integrator = integrator_name(cfg)
    INTEGRATORS[integrator]  # unknown names list the valid ones
    if integrator not in family.integrators:
        raise UsageError(
            f"model={family.name} does not admit model/integrator={integrator} "
            f"(admitted: {', '.join(family.integrators)})"
        )
    family.validate(cfg, build_activation(cfg.get("activation", "leaky_relu")))
    return family


def build_model(cfg: Mapping[str, Any], data_info: Mapping[str, Any]) -> DSNN:
    """Build a model from its config node (``model``) and the data it classifies."""
    cfg = to_plain(cfg)
    return DSNN(check_model_config(cfg), cfg, to_plain(data_info))


def to_plain(cfg: Any) -> Any:
    """OmegaConf nodes to plain Python containers (checkpoints store plain data only)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(cfg, (DictConfig, ListConfig)):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return cfg
