"""Model families by name: their vector fields, admitted integrators and step-size rules.

Every family declares the integrators it admits (others are refused with a one-line
error), the spaces it works on (image feature maps, low-dimensional vectors), whether a
config of it carries a Lipschitz certificate, and the structure it preserves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from dsnn_cli.errors import UsageError
from dsnn_cli.models.activations import Activation
from dsnn_cli.models.fields import (
    GRADIENT_OPERATORS,
    ExpansiveField,
    GradientField,
    MassField,
    NaiveField,
    ResNetField,
)
from dsnn_cli.models.integrators import Integrator
from dsnn_cli.models.layers import GradientFlow, Shear, SphereFlow, SplitStep, Step, equal_fractions
from dsnn_cli.models.step_sizes import BoundedStepSize, IntervalStepSize, largest_expansive_step
from dsnn_cli.registry import Registry

RUNGE_KUTTA = ("euler", "heun", "rk4")
SPLITTINGS = ("strang", "lie_trotter")
# Configs written before orthogonal operators existed have no model.contractive: they used ||A|| <= 1.
LEGACY_CONTRACTIVE = "spectral"


def contractive_kind(cfg: Mapping[str, Any]) -> str:
    return str(cfg.get("contractive") or LEGACY_CONTRACTIVE)


@dataclass(frozen=True)
class StepContext:
    """What a family needs to build the dynamic layers of one block (or one vector net)."""

    cfg: Mapping[str, Any]
    width: int
    space: Any
    activation: Activation
    integrator: Integrator
    fractions: list[float]


@dataclass(frozen=True)
class Family:
    """A model family and the facts tests and configs check about it."""

    name: str
    spaces: tuple[str, ...]
    integrators: tuple[str, ...]
    make_steps: Callable[[StepContext], list[nn.Module]]
    validate: Callable[[Mapping[str, Any], Activation], None]
    certified: Callable[[Mapping[str, Any]], bool]
    preserves: str
    default_normalize: str = "mean"
    lifting: bool = True  # vector nets may lift to model.width (mass may not: it keeps sum(y))


FAMILIES: Registry[Family] = Registry("model")


def fractions_of(cfg: Mapping[str, Any]) -> list[float]:
    """Sub-step fractions alpha_i of h: model.substep_fractions, or S equal ones."""
    given = cfg.get("substep_fractions")
    fractions = [float(a) for a in given] if given else equal_fractions(int(cfg.get("substeps", 1)))
    if not fractions or any(a <= 0 for a in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise UsageError(f"model.substep_fractions={fractions} must be positive and sum to 1")
    return fractions


def never(cfg: Mapping[str, Any]) -> bool:
    return False


def always(cfg: Mapping[str, Any]) -> bool:
    return True


def nothing_to_check(cfg: Mapping[str, Any], activation: Activation) -> None:
    return None


def repeat(ctx: StepContext, make: Callable[[], nn.Module]) -> list[nn.Module]:
    return [make() for _ in range(int(ctx.cfg["steps"]))]


# ------------------------------------------------------------------------------ resnet, naive


def resnet_steps(ctx: StepContext) -> list[nn.Module]:
    h = float(ctx.cfg["h"])
    return repeat(
        ctx, lambda: Step(ResNetField(ctx.space, ctx.width, ctx.activation), ctx.integrator, h, ctx.fractions)
    )


def naive_steps(ctx: StepContext) -> list[nn.Module]:
    h, penalty = float(ctx.cfg["h"]), float(ctx.cfg.get("ortho_penalty", 0.0))
    return repeat(
        ctx,
        lambda: Step(
            NaiveField(ctx.space, ctx.width, ctx.activation, penalty), ctx.integrator, h, ctx.fractions
        ),
    )


# ------------------------------------------------------------------------------ nonexpansive


def nonexpansive_steps(ctx: StepContext) -> list[nn.Module]:
    h = float(ctx.cfg["h"])
    return repeat(
        ctx,
        lambda: Step(
            GradientField(ctx.space, ctx.width, ctx.activation, "spectral"), ctx.integrator, h, ctx.fractions
        ),
    )


def validate_nonexpansive(cfg: Mapping[str, Any], activation: Activation) -> None:
    h, limit = float(cfg["h"]), 2.0 / activation.slope_max
    largest_tau = h * max(fractions_of(cfg))
    if h < 0 or largest_tau > limit:
        raise UsageError(
            f"model.h={h:g} breaks non-expansiveness: each sub-step alpha*h must lie in [0, {limit:g}] "
            f"(2 / max slope); the largest admissible h is {limit / max(fractions_of(cfg)):g}"
        )


# ------------------------------------------------------------------------------ lipschitz


def contractive_field(ctx: StepContext) -> GradientField:
    return GradientField(
        ctx.space,
        ctx.width,
        ctx.activation,
        contractive_kind(ctx.cfg),
        float(ctx.cfg.get("ortho_penalty", 0.0)),
    )


def expansive_step_size(cfg: Mapping[str, Any], activation: Activation) -> float:
    """model.h_expansive, or (null) the largest value the step-size rule admits."""
    h_e = cfg.get("h_expansive")
    if h_e is None:
        return float(largest_expansive_step(float(cfg["h_contractive"]), fractions_of(cfg), activation))
    return float(h_e)


def lipschitz_steps(ctx: StepContext) -> list[nn.Module]:
    h_c, h_e = float(ctx.cfg["h_contractive"]), expansive_step_size(ctx.cfg, ctx.activation)
    steps: list[nn.Module] = []
    for _ in range(int(ctx.cfg["steps"]) // 2):
        steps.append(
            Step(ExpansiveField(ctx.space, ctx.width, ctx.activation), ctx.integrator, h_e, ctx.fractions)
        )
        steps.append(Step(contractive_field(ctx), ctx.integrator, h_c, ctx.fractions))
    return steps


def check_pairs(cfg: Mapping[str, Any]) -> None:
    steps = int(cfg["steps"])
    if steps < 2 or steps % 2:
        raise UsageError(
            f"model.steps={steps} must be a positive even number (expansive and contractive alternate)"
        )
    contractive = contractive_kind(cfg)
    if contractive not in ("orthogonal", "spectral", "penalty"):
        raise UsageError(f"model.contractive={contractive} is unknown (valid: orthogonal, spectral, penalty)")


def check_contractive_step(h_c: float, cfg: Mapping[str, Any], activation: Activation, key: str) -> None:
    limit = 2.0 / activation.slope_max
    largest_tau = h_c * max(fractions_of(cfg))
    if not 0.0 < largest_tau <= limit:
        raise UsageError(f"{key}={h_c:g} must give sub-steps alpha*h in (0, {limit:g}] (2 / max slope)")


def validate_lipschitz(cfg: Mapping[str, Any], activation: Activation) -> None:
    check_pairs(cfg)
    h_c = float(cfg["h_contractive"])
    check_contractive_step(h_c, cfg, activation, "model.h_contractive")
    h_e, largest = cfg.get("h_expansive"), float(largest_expansive_step(h_c, fractions_of(cfg), activation))
    if h_e is not None and not 0.0 <= float(h_e) <= largest * (1 + 1e-12):
        raise UsageError(
            f"model.h_expansive={float(h_e):g} breaks the Lipschitz constraint for "
            f"model.h_contractive={h_c:g} and slopes [{activation.slope_min:g}, {activation.slope_max:g}]; "
            f"the largest admissible h_expansive is {largest:.6g}"
        )


def lipschitz_certified(cfg: Mapping[str, Any]) -> bool:
    return contractive_kind(cfg) in ("orthogonal", "spectral")


def flexible_steps(ctx: StepContext) -> list[nn.Module]:
    lo, hi = (float(v) for v in ctx.cfg["h_contractive_range"])
    init, fraction = float(ctx.cfg["h_contractive"]), float(ctx.cfg.get("expansive_fraction", 0.9))
    steps: list[nn.Module] = []
    for _ in range(int(ctx.cfg["steps"]) // 2):
        h_c = IntervalStepSize(lo, hi, init)
        h_e = BoundedStepSize(
            lambda h_c=h_c: largest_expansive_step(h_c.value(), ctx.fractions, ctx.activation), fraction
        )
        steps.append(
            Step(ExpansiveField(ctx.space, ctx.width, ctx.activation), ctx.integrator, h_e, ctx.fractions)
        )
        steps.append(Step(contractive_field(ctx), ctx.integrator, h_c, ctx.fractions))
    return steps


def validate_flexible(cfg: Mapping[str, Any], activation: Activation) -> None:
    check_pairs(cfg)
    lo, hi = (float(v) for v in cfg["h_contractive_range"])
    if not lo < hi:
        raise UsageError(f"model.h_contractive_range=[{lo:g}, {hi:g}] must be an interval lo < hi")
    check_contractive_step(lo, cfg, activation, "model.h_contractive_range[0]")
    check_contractive_step(hi, cfg, activation, "model.h_contractive_range[1]")
    if not lo <= float(cfg["h_contractive"]) <= hi:
        raise UsageError(f"model.h_contractive={cfg['h_contractive']} must lie in model.h_contractive_range")
    fraction = float(cfg.get("expansive_fraction", 0.9))
    if not 0.0 < fraction < 1.0:
        raise UsageError(
            f"model.expansive_fraction={fraction:g} must lie in (0, 1): h_E = fraction x its bound"
        )


# ------------------------------------------------------------------------------ volume, mass, splitting


def volume_steps(ctx: StepContext) -> list[nn.Module]:
    sizes = (ctx.width // 2, ctx.width - ctx.width // 2)
    h = float(ctx.cfg["h"])
    return repeat(
        ctx,
        lambda: SplitStep(
            [Shear(ctx.space, sizes, 0, ctx.activation), Shear(ctx.space, sizes, 1, ctx.activation)],
            ctx.integrator,
            h,
            ctx.fractions,
        ),
    )


def validate_volume(cfg: Mapping[str, Any], activation: Activation) -> None:
    widths = [int(w) for w in cfg.get("widths") or []] + ([int(cfg["width"])] if cfg.get("width") else [])
    if any(w < 2 for w in widths):
        raise UsageError("model=volume splits its state in two: every width must be >= 2")


def mass_steps(ctx: StepContext) -> list[nn.Module]:
    h = float(ctx.cfg["h"])
    return repeat(
        ctx, lambda: Step(MassField(ctx.space, ctx.width, ctx.activation), ctx.integrator, h, ctx.fractions)
    )


def splitting_steps(ctx: StepContext) -> list[nn.Module]:
    h = float(ctx.cfg["h"])
    return repeat(
        ctx,
        lambda: SplitStep(
            [
                GradientFlow(ctx.space, ctx.width, ctx.activation),
                SphereFlow(ctx.space, ctx.width, ctx.activation),
            ],
            ctx.integrator,
            h,
            ctx.fractions,
        ),
    )


BOTH = ("image", "vector")
FAMILIES.add(
    "resnet",
    Family(
        "resnet", BOTH, RUNGE_KUTTA, resnet_steps, nothing_to_check, never, "nothing (baseline)", "mean_std"
    ),
)
FAMILIES.add(
    "naive",
    Family(
        "naive",
        BOTH,
        ("euler",),
        naive_steps,
        nothing_to_check,
        never,
        "nothing (soft orthogonality)",
        "mean",
    ),
)
FAMILIES.add(
    "nonexpansive",
    Family(
        "nonexpansive",
        BOTH,
        ("euler",),
        nonexpansive_steps,
        validate_nonexpansive,
        always,
        "1-Lipschitz layers",
    ),
)
FAMILIES.add(
    "lipschitz",
    Family(
        "lipschitz",
        BOTH,
        ("euler",),
        lipschitz_steps,
        validate_lipschitz,
        lipschitz_certified,
        "Lipschitz bound",
    ),
)
FAMILIES.add(
    "lipschitz_flexible",
    Family(
        "lipschitz_flexible",
        BOTH,
        ("euler",),
        flexible_steps,
        validate_flexible,
        lipschitz_certified,
        "Lipschitz bound",
    ),
)
FAMILIES.add(
    "volume", Family("volume", BOTH, SPLITTINGS, volume_steps, validate_volume, never, "volume (det J = 1)")
)
FAMILIES.add(
    "mass",
    Family(
        "mass", ("vector",), RUNGE_KUTTA, mass_steps, nothing_to_check, never, "component sum", lifting=False
    ),
)
FAMILIES.add(
    "splitting",
    Family(
        "splitting",
        ("vector",),
        SPLITTINGS,
        splitting_steps,
        nothing_to_check,
        never,
        "norm of the sphere part",
    ),
)


def check_family_config(cfg: Mapping[str, Any], activation: Activation) -> None:
    """Checks every family shares: step counts, sub-step fractions, contractive operator names."""
    if int(cfg.get("steps", 1)) < 1:
        raise UsageError(f"model.steps={cfg.get('steps')} must be >= 1")
    fractions_of(cfg)
    if cfg.get("contractive") is not None and cfg["contractive"] not in GRADIENT_OPERATORS:
        raise UsageError(f"model.contractive={cfg['contractive']} is unknown")
