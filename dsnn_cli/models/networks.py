"""The architectures the families fill: the CIFAR network and a vector network.

Image network: normalisation, a stem into the first width, then per stage `steps` dynamic
layers and a 2x2 downsampling into the next width, then a linear head (`stages.py` has the
choices and their factors). The normalisation contributes 1 / min(std) (1 for mean-only).
`lipschitz_factors` covers everything up to the head's input, the features; certificates
then bound each logit difference z_i - z_j by L ||w_i - w_j|| through the head's rows.

Layer network (`model=convnet`, Prach et al. 2024): zero channels, a 1x1 layer and the
activation, blocks of `steps` k x k layers each followed by the activation and closed by
first-channels + pixel unshuffle (doubling the channels), a global max-pool, a 1x1 layer on
the last map and the first `classes` channels as logits; every layer of one kind
(`model.layer`, from `peers.py`), each with its own proven factor.

Vector network (low-dimensional states: ODE flow maps, function regression): an optional
lift to `model.width`, the dynamic layers, an optional linear read-out. With
``model.width: null`` the state is the data itself, so the network *is* a composition of
structure-preserving steps (mass, volume) end to end.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from dsnn_cli.config import convert, setting, to_plain
from dsnn_cli.devices import autocast_dtype
from dsnn_cli.errors import UsageError
from dsnn_cli.models.activations import build_activation
from dsnn_cli.models.families import (
    FAMILIES,
    Family,
    StepContext,
    check_family_config,
    fractions_of,
)
from dsnn_cli.models.integrators import INTEGRATORS
from dsnn_cli.models.operators import BOUNDED_OPERATORS, ConstrainedNorm, DenseOperator
from dsnn_cli.models.peers import PEER_LAYERS, LayerThenActivation
from dsnn_cli.models.spaces import ORTHOGONAL_MAPS, VECTOR_ORTHOGONALS, ImageSpace, VectorSpace
from dsnn_cli.models.stages import DOWNSAMPLES, HEADS, STEMS, FirstChannelsUnshuffle, PadChannels

NORMALIZATIONS = ("mean", "mean_std", "none")


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


class Stage(nn.Module):
    """The dynamic layers of one resolution, then the downsampling into the next."""

    def __init__(self, steps: list[nn.Module], downsample: nn.Module) -> None:
        super().__init__()
        self.steps = nn.ModuleList(steps)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            x = step(x)
        return self.downsample(x)


class DynamicsNet(nn.Module):
    """What both architectures share: config, calibration, penalties and certificates."""

    family: str
    config: dict[str, Any]

    def calibrate(self) -> None:
        """Replace power-iteration norm estimates by proven bounds (before any evaluation)."""
        for module in self.modules():
            if isinstance(module, ConstrainedNorm):
                module.calibrate()

    def regularization(self) -> torch.Tensor | None:
        """Sum of the soft-constraint penalties of all layers (None when there are none)."""
        terms = [
            t
            for m in self.modules()
            if hasattr(m, "regularization") and m is not self
            for t in [m.regularization()]
            if t is not None
        ]
        return torch.stack(terms).sum() if terms else None

    def certificate(self) -> dict[str, Any]:
        """Which variant certifies, and the bound the construction promises (config only)."""
        family = FAMILIES[self.family]
        claim = family.claim_for(self.config["model"])
        declared = None
        if claim.certified:
            factors = self.lipschitz_factors(nominal=True)
            declared = None if factors is None else float(torch.tensor([f for _, f in factors]).prod())
        return {
            "family": self.family,
            "certified": claim.certified,
            "variant": claim.wording if claim.certified else None,
            "declared_bound": declared,
            "preserves": family.preserves,
            "note": claim.wording,
        }


class ImageNet(DynamicsNet):
    """The CIFAR architecture: images in [0, 1] of the size it was built for, logits out."""

    def __init__(self, family: Family, cfg: Mapping[str, Any], data_info: Mapping[str, Any]):
        super().__init__()
        self.family = family.name
        self.certified = family.certified(cfg)
        self.config = {"model": dict(cfg), "data_info": dict(data_info)}
        activation = build_activation(cfg["activation"])
        integrator = INTEGRATORS[integrator_name(cfg)]
        widths = [int(w) for w in cfg["widths"]]
        size = self.input_size = image_size(data_info)
        if any(s % 2 ** len(widths) for s in size):
            raise UsageError(
                f"image size {size} is not divisible by 2^{len(widths)} (one 2x2 downsampling per stage "
                f"of model.widths={widths}); use fewer stages or another data.image_size"
            )
        kernel, constrained = int(cfg["kernel_size"]), self.certified
        self.normalize = make_normalize(cfg, data_info)
        self.stem = STEMS[cfg["stem"]](int(data_info["in_channels"]), widths[0], size, kernel, constrained)
        stages = []
        for i, (width, count) in enumerate(zip(widths, step_counts(cfg), strict=True)):
            space = ImageSpace(size, kernel)
            steps = family.make_steps(
                StepContext({**cfg, "steps": count}, width, space, activation, integrator, fractions_of(cfg))
            )
            following = widths[i + 1] if i + 1 < len(widths) else width
            stages.append(
                Stage(steps, DOWNSAMPLES[cfg["downsample"]](width, following, size, kernel, constrained))
            )
            size = (size[0] // 2, size[1] // 2)
        self.stages = nn.ModuleList(stages)
        features = widths[-1] * size[0] * size[1]
        self.dense = nn.ModuleList(dense_steps(family, cfg, features, activation, integrator))
        self.head = HEADS[cfg["head"]](features, int(data_info["num_classes"]), constrained)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the head reads: the flattened output of the last stage."""
        check_input_size(x, self.input_size)
        x = self.stem(self.normalize(x))
        x = x.to(autocast_dtype(x))  # under bf16 autocast the activations stay bf16 from here on
        for stage in self.stages:
            x = stage(x)
        x = torch.flatten(x, 1)
        for step in self.dense:
            x = step(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def classifier_rows(self) -> torch.Tensor:
        """The head's rows w_i as applied (a logit difference z_i - z_j is L ||w_i - w_j||-Lipschitz)."""
        return self.head.rows()

    def lipschitz_factors(self, nominal: bool = False) -> list[tuple[str, float]] | None:
        """Proven l2 Lipschitz factor of every layer up to the features, or None if not certified."""
        if not self.certified:
            return None
        factors = [
            ("normalize", self.normalize.lipschitz_factor()),
            ("stem", self.stem.lipschitz_factor(nominal)),
        ]
        for i, stage in enumerate(self.stages):
            for s, step in enumerate(stage.steps):
                factor = step.lipschitz_factor(nominal)
                if factor is None:
                    return None
                factors.append((f"stages.{i}.steps.{s}", factor))
            factors.append((f"stages.{i}.downsample", stage.downsample.lipschitz_factor(nominal)))
        for s, step in enumerate(self.dense):
            factor = step.lipschitz_factor(nominal)
            if factor is None:
                return None
            factors.append((f"dense.{s}", factor))
        return factors


class ConvNet(DynamicsNet):
    """Prach et al.'s skeleton of 1-Lipschitz layers of one kind (`model.layer`)."""

    def __init__(self, family: Family, cfg: Mapping[str, Any], data_info: Mapping[str, Any]):
        super().__init__()
        self.family = family.name
        self.certified = True
        self.config = {"model": dict(cfg), "data_info": dict(data_info)}
        activation = build_activation(cfg["activation"])
        make = PEER_LAYERS[cfg["layer"]]
        widths, counts = [int(w) for w in cfg["widths"]], step_counts(cfg)
        size = self.input_size = image_size(data_info)
        if any(s % 2 ** len(widths) for s in size):
            raise UsageError(
                f"image size {size} is not divisible by 2^{len(widths)} (one 2x2 downsampling per block "
                f"of model.widths={widths}); use fewer blocks or another data.image_size"
            )
        self.normalize = make_normalize(cfg, data_info)
        self.stem = PadChannels(int(data_info["in_channels"]), widths[0])
        self.lift = LayerThenActivation(make(widths[0], size, 1, True), activation)
        stages = []
        for i, (width, count) in enumerate(zip(widths, counts, strict=True)):
            kernel = int(cfg["kernel_size"]) if i + 1 < len(widths) else 1  # the 2x2 map: 1x1 layers
            steps = family.make_steps(
                StepContext({**cfg, "steps": count}, width, ImageSpace(size, kernel), activation, None, [1.0])
            )
            following = widths[i + 1] if i + 1 < len(widths) else 2 * width  # theirs: always 2 x width
            stages.append(Stage(steps, FirstChannelsUnshuffle(width, following)))
            size = (size[0] // 2, size[1] // 2)
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveMaxPool2d(1)  # per channel, |max a - max b| <= max |a - b|: factor 1
        features = 2 * widths[-1]
        self.last = LayerThenActivation(make(features, (1, 1), 1, True), None)
        self.head = HEADS["first"](features, int(data_info["num_classes"]), True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.input_size)
        x = self.lift(self.stem(self.normalize(x)))
        x = x.to(autocast_dtype(x))
        for stage in self.stages:
            x = stage(x)
        return torch.flatten(self.last(self.pool(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def classifier_rows(self) -> torch.Tensor:
        return self.head.rows()

    def lipschitz_factors(self, nominal: bool = False) -> list[tuple[str, float]]:
        factors = [
            ("normalize", self.normalize.lipschitz_factor()),
            ("lift", self.lift.lipschitz_factor(nominal)),
        ]
        for i, stage in enumerate(self.stages):
            factors += [
                (f"stages.{i}.steps.{s}", step.lipschitz_factor(nominal))
                for s, step in enumerate(stage.steps)
            ]
        factors.append(("last", self.last.lipschitz_factor(nominal)))
        return factors


class VectorNet(DynamicsNet):
    """Low-dimensional states: lift (optional), dynamic layers, read-out (optional)."""

    def __init__(self, family: Family, cfg: Mapping[str, Any], data_info: Mapping[str, Any]):
        super().__init__()
        self.family = family.name
        self.certified = family.certified(cfg)
        self.config = {"model": dict(cfg), "data_info": dict(data_info)}
        if isinstance(cfg["steps"], (list, tuple)):
            raise UsageError(
                f"model.steps={cfg['steps']} is a list (one count per image stage); "
                "vector data takes one count"
            )
        dim_in, dim_out = int(data_info["dim_in"]), int(data_info["dim_out"])
        width = int(cfg["width"] or dim_in)
        if not family.lifting and not (width == dim_in == dim_out):
            raise UsageError(
                f"model={family.name} keeps a property of its state, so the state must be the data: "
                "use model.width=null and data whose input and output dimensions agree "
                f"(got {dim_in} -> {dim_out})"
            )
        constrained = self.certified
        self.lift = DenseOperator(dim_in, width, constrained) if width != dim_in else nn.Identity()
        context = StepContext(
            cfg,
            width,
            VectorSpace(),
            build_activation(cfg["activation"]),
            INTEGRATORS[integrator_name(cfg)],
            fractions_of(cfg),
        )
        self.steps = nn.ModuleList(family.make_steps(context))
        self.head = DenseOperator(width, dim_out, constrained) if width != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lift(x)
        x = x.to(autocast_dtype(x))  # under bf16 autocast the activations stay bf16 from here on
        for step in self.steps:
            x = step(x)
        return self.head(x)

    def lipschitz_factors(self, nominal: bool = False) -> list[tuple[str, float]] | None:
        if not self.certified:
            return None
        factors = []
        if isinstance(self.lift, DenseOperator):
            factors.append(("lift", 1.0 if nominal else self.lift.norm_bound()))
        for s, step in enumerate(self.steps):
            factor = step.lipschitz_factor(nominal)
            if factor is None:
                return None
            factors.append((f"steps.{s}", factor))
        if isinstance(self.head, DenseOperator):
            factors.append(("head", 1.0 if nominal else self.head.norm_bound()))
        return factors


def certificate_note(info: Mapping[str, Any]) -> str:
    """Why a model has (or lacks) a certificate, in words for tables: from `certificate()`."""
    if info["certified"]:
        return f"model={info['family']}: {info['variant']}, declared bound {info['declared_bound']:.6g}"
    return f"model={info['family']}: {info['note']}"


def dense_steps(
    family: Family, cfg: Mapping[str, Any], features: int, activation: Any, integrator: Any
) -> list[nn.Module]:
    """`model.dense_steps` dynamic layers of the family on the flattened features, before the head.

    Why: after the last downsampling every feature can interact with every other in one dense
    step, which the per-stage convolutions reach only through depth. Their isometries are
    square (contractive_width applies to the per-pixel channels only); `model.dense_orthogonal`
    chooses one features x features Cayley solve or the far cheaper shuffled blocks.
    """
    count = int(cfg["dense_steps"])
    if count == 0:
        return []
    dense_cfg = {**cfg, "steps": count, "contractive_width": 1}
    return family.make_steps(
        StepContext(
            dense_cfg,
            features,
            VectorSpace(cfg.get("dense_orthogonal", "cayley")),
            activation,
            integrator,
            fractions_of(cfg),
        )
    )


def check_input_size(x: torch.Tensor, size: tuple[int, int]) -> None:
    """Refuse images of another size than the network was built for: its layers' bounds (and
    the FFT layers' tori) hold for that size only."""
    if tuple(x.shape[-2:]) != size:
        raise UsageError(
            f"the model was built (and certified) for {size[0]}x{size[1]} images, "
            f"got {x.shape[-2]}x{x.shape[-1]}: its convolution bounds hold for that size only"
        )


def image_size(data_info: Mapping[str, Any]) -> tuple[int, int]:
    size = data_info["image_size"]
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def integrator_name(cfg: Mapping[str, Any]) -> str:
    integrator = cfg["integrator"]
    return integrator if isinstance(integrator, str) else str(integrator["name"])


def make_normalize(cfg: Mapping[str, Any], data_info: Mapping[str, Any]) -> Normalize:
    mode = cfg["normalize"]
    if mode not in NORMALIZATIONS:
        raise UsageError(f"model.normalize={mode} is unknown (valid: {', '.join(NORMALIZATIONS)})")
    channels = int(data_info["in_channels"])
    mean = list(data_info["mean"]) if mode != "none" else [0.0] * channels
    std = list(data_info["std"]) if mode == "mean_std" else [1.0] * channels
    return Normalize(mean, std)


# The numeric keys of the model groups (each family has the ones it uses); the families check
# the step sizes against the region where their claim holds.
MODEL_KEYS: dict[str, dict[str, Any]] = {
    "width": {"kind": int, "low": 1, "nullable": True},
    "substeps": {"kind": int, "low": 1},
    "dense_steps": {"kind": int, "low": 0},
    "kernel_size": {"kind": int, "low": 1},
    "h": {"kind": float},
    "h_contractive": {"kind": float, "nullable": True},
    "h_expansive": {"kind": float, "low": 0, "nullable": True},
    "ortho_penalty": {"kind": float, "low": 0},
    "expansive_fraction": {"kind": float},
    "contractive": {"kind": str},
    "normalize": {"kind": str, "choices": NORMALIZATIONS},
    "dense_orthogonal": {"kind": str, "choices": VECTOR_ORTHOGONALS},
    "orthogonal_map": {"kind": str, "choices": ORTHOGONAL_MAPS},
    "expansive_operator": {"kind": str, "choices": BOUNDED_OPERATORS},
}


def step_counts(cfg: Mapping[str, Any]) -> list[int]:
    """Dynamic layers per stage: `model.steps` is one count for every stage or a list with one
    count per entry of `model.widths` (vector networks take one count)."""
    steps, stages = cfg["steps"], len(cfg.get("widths") or [None])
    counts = list(steps) if isinstance(steps, (list, tuple)) else [steps] * stages
    if len(counts) != stages or any(convert(n, int) is None or int(n) < 1 for n in counts):
        raise UsageError(
            f"model.steps={steps} must be a count >= 1 or a list of {stages} such counts "
            f"(one per entry of model.widths)"
        )
    return [int(n) for n in counts]


def check_model_config(cfg: Mapping[str, Any]) -> Family:
    """Validate a model config before any data is loaded; returns its family.

    Raises:
        UsageError: unknown family or integrator, a value of the wrong type or range, or step
            sizes outside the region where the family's claim holds.
    """
    cfg = to_plain(cfg)
    family = FAMILIES[cfg["name"]]
    for key, rule in MODEL_KEYS.items():
        if key in cfg:
            setting(cfg, key, prefix="model", **rule)
    if "widths" in cfg and (
        not cfg["widths"] or any(convert(w, int) is None or int(w) < 1 for w in cfg["widths"])
    ):
        raise UsageError(f"model.widths={cfg['widths']} must be a non-empty list of channel counts >= 1")
    if "kernel_size" in cfg and int(cfg["kernel_size"]) % 2 == 0:
        raise UsageError(f"model.kernel_size={cfg['kernel_size']} must be odd (a 'same' convolution)")
    for registry in (STEMS, DOWNSAMPLES, HEADS):
        key = registry.key.split(".")[-1]
        if key in cfg:
            registry[cfg[key]]  # unknown names list the valid ones
    integrator = integrator_name(cfg)
    INTEGRATORS[integrator]  # unknown names list the valid ones
    if integrator not in family.integrators:
        raise UsageError(
            f"model={family.name} does not admit model/integrator={integrator} "
            f"(admitted: {', '.join(family.integrators)})"
        )
    activation = build_activation(cfg["activation"])
    dense = [int(cfg["dense_steps"])] if cfg.get("dense_steps") else []
    for count in sorted(set(step_counts(cfg) + dense)):
        stage_cfg = {**cfg, "steps": count}
        check_family_config(stage_cfg)
        family.check(stage_cfg, activation)
    return family


def build_model(cfg: Mapping[str, Any], data_info: Mapping[str, Any]) -> DynamicsNet:
    """Build a model from its config node (``model``) and the facts of the data it fits."""
    cfg, data_info = to_plain(cfg), to_plain(data_info)
    family = check_model_config(cfg)
    kind = data_info.get("kind", "image")
    if kind not in family.spaces:
        raise UsageError(
            f"model={family.name} works on {' and '.join(family.spaces)} data, not {kind} data "
            "(see the experiment presets: dsnn train --help)"
        )
    if family.network == "layers":
        return ConvNet(family, cfg, data_info)
    return (ImageNet if kind == "image" else VectorNet)(family, cfg, data_info)
