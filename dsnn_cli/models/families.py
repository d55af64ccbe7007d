"""Model families by name: each registration is the one place that states a family's facts.

A family declares, with keyword fields, its vector fields, the kind of integrator it takes
(the admitted integrators are derived from it), what a config of it proves (a Lipschitz
certificate and which, or none), the structure it preserves, and the step-size rules
that keep the claim true. Nothing outside this module tests a family's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from dsnn_cli.config import setting
from dsnn_cli.errors import UsageError
from dsnn_cli.models.activations import Activation, build_activation
from dsnn_cli.models.fields import (
    CONTRACTIVE_OPERATORS,
    ExpansiveField,
    GradientField,
    MassField,
    NaiveField,
    ResNetField,
)
from dsnn_cli.models.integrators import INTEGRATORS, Integrator
from dsnn_cli.models.layers import GradientFlow, Shear, SphereFlow, SplitStep, Step, equal_fractions
from dsnn_cli.models.peers import PEER_LAYERS, LayerThenActivation
from dsnn_cli.models.step_sizes import BoundedStepSize, IntervalStepSize, largest_expansive_step
from dsnn_cli.registry import Registry


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
class Claim:
    """What a configured family proves: a Lipschitz certificate (and which), or why there is none."""

    certified: bool
    wording: str


@dataclass(frozen=True)
class Family:
    """A model family: the one place that declares its fields, integrators, certificate and invariant.

    Attributes:
        name: the `model=` option.
        fields: the vector fields (or sub-flows) its dynamic layers integrate.
        make_steps: builds the dynamic layers of one block.
        integrator_kind: the kind of integrator its layers take ("runge_kutta" or "splitting").
        preserves: the property kept by construction, in words.
        claim: what a config of the family proves (None: no certificate, it preserves `preserves`).
        validate: refuses configs outside the region where the claim holds.
        euler_only: its layers are defined as explicit Euler steps (their proven factors are
            Euler factors), so it admits only the integrators that are one.
        spaces: the states it works on: "image" feature maps and/or "vector" states.
        lifting: vector nets may lift to model.width (False: the state must be the data).
        elementwise_activation: its proof reads the activation's divided differences as a
            diagonal matrix in [m, M] (gradient steps), so it refuses maxmin.
        network: "dynamics" (stages of dynamic layers, `networks.ImageNet`/`VectorNet`) or
            "layers" (Prach et al.'s skeleton of 1-Lipschitz layers, `networks.ConvNet`).
    """

    name: str
    fields: tuple[type, ...]
    make_steps: Callable[[StepContext], list[nn.Module]]
    integrator_kind: str
    preserves: str
    claim: Callable[[Mapping[str, Any]], Claim] | None = None
    validate: Callable[[Mapping[str, Any], Activation], None] | None = None
    euler_only: bool = False
    spaces: tuple[str, ...] = ("image", "vector")
    lifting: bool = True
    elementwise_activation: bool = False
    network: str = "dynamics"

    @property
    def integrators(self) -> tuple[str, ...]:
        """The admitted integrators, derived from each registered integrator's kind."""
        return tuple(
            name
            for name in INTEGRATORS
            if INTEGRATORS[name].kind == self.integrator_kind
            and (INTEGRATORS[name].is_explicit_euler or not self.euler_only)
        )

    def claim_for(self, cfg: Mapping[str, Any]) -> Claim:
        if self.claim is None:
            return Claim(False, f"preserves {self.preserves}")
        return self.claim(cfg)

    def certified(self, cfg: Mapping[str, Any]) -> bool:
        return self.claim_for(cfg).certified

    def check(self, cfg: Mapping[str, Any], activation: Activation) -> None:
        if self.elementwise_activation and not activation.elementwise:
            raise UsageError(
                f"model={self.name} cannot take model.activation={activation.module.__class__.__name__}: its "
                "gradient steps are proven for elementwise monotone activations (use leaky_relu, or "
                "model=convnet for layers followed by maxmin)"
            )
        if self.validate is not None:
            self.validate(cfg, activation)


FAMILIES: Registry[Family] = Registry("model")


def register(family: Family) -> Family:
    return FAMILIES.add(family.name, family)


def fractions_of(cfg: Mapping[str, Any]) -> list[float]:
    """Sub-step fractions alpha_i of h: model.substep_fractions, or S equal ones."""
    given = cfg["substep_fractions"]
    fractions = [float(a) for a in given] if given else equal_fractions(int(cfg["substeps"]))
    if not fractions or any(a <= 0 for a in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise UsageError(f"model.substep_fractions={fractions} must be positive and sum to 1")
    return fractions


SOFT_ORTHOGONALITY = Claim(False, "soft orthogonality penalty, no proven bound")


def repeat(ctx: StepContext, make: Callable[[], nn.Module]) -> list[nn.Module]:
    return [make() for _ in range(int(ctx.cfg["steps"]))]


# ------------------------------------------------------------------------------ resnet, naive


def resnet_steps(ctx: StepContext) -> list[nn.Module]:
    h = float(ctx.cfg["h"])
    return repeat(
        ctx, lambda: Step(ResNetField(ctx.space, ctx.width, ctx.activation), ctx.integrator, h, ctx.fractions)
    )


def naive_steps(ctx: StepContext) -> list[nn.Module]:
    h, penalty = float(ctx.cfg["h"]), float(ctx.cfg["ortho_penalty"])
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
    cfg = ctx.cfg
    return GradientField(
        ctx.space,
        ctx.width,
        ctx.activation,
        cfg["contractive"],
        float(cfg["ortho_penalty"]),
        hidden=int(cfg["contractive_width"]) * ctx.width,
        kernel_size=int(cfg["contractive_kernel"]),
        orthogonal_map=cfg.get("orthogonal_map", "cayley"),
    )


def expansive_activation(cfg: Mapping[str, Any], activation: Activation) -> Activation:
    """model.expansive_activation, or (null) model.activation. The expansive factor 1 + M tau
    reads only the largest slope, so these steps may take an activation (ReLU) whose smallest
    slope 0 would leave a contractive step without contraction."""
    chosen = cfg.get("expansive_activation")
    if chosen is None:
        return activation
    try:
        return build_activation(chosen)
    except UsageError as exc:
        raise UsageError(f"model.expansive_activation: {exc}") from None


def expansive_field(ctx: StepContext) -> ExpansiveField:
    init, bias = ctx.cfg["expansive_init"], float(ctx.cfg["expansive_bias"])
    operator = ctx.cfg.get("expansive_operator", "spectral")
    activation = expansive_activation(ctx.cfg, ctx.activation)
    return ExpansiveField(ctx.space, ctx.width, activation, init, bias, operator)


def contractive_step_size(cfg: Mapping[str, Any], activation: Activation) -> float:
    """model.h_contractive, or (null) 2 / (m + M): the step whose factor (M - m) / (M + m) is the
    smallest, where the gradient step reflects and scales every direction alike."""
    h_c = cfg["h_contractive"]
    return 2.0 / (activation.slope_min + activation.slope_max) if h_c is None else float(h_c)


def expansive_step_size(cfg: Mapping[str, Any], activation: Activation) -> float:
    """model.h_expansive, or (null) the largest value the step-size rule admits."""
    h_e = cfg["h_expansive"]
    if h_e is None:
        h_c = contractive_step_size(cfg, activation)
        expansive = expansive_activation(cfg, activation)
        return float(largest_expansive_step(h_c, fractions_of(cfg), activation, expansive))
    return float(h_e)


def lipschitz_steps(ctx: StepContext) -> list[nn.Module]:
    h_c = contractive_step_size(ctx.cfg, ctx.activation)
    h_e = expansive_step_size(ctx.cfg, ctx.activation)
    steps: list[nn.Module] = []
    for _ in range(int(ctx.cfg["steps"]) // 2):
        steps.append(Step(expansive_field(ctx), ctx.integrator, h_e, ctx.fractions))
        steps.append(Step(contractive_field(ctx), ctx.integrator, h_c, ctx.fractions))
    return steps


def check_pairs(cfg: Mapping[str, Any]) -> None:
    steps = int(cfg["steps"])
    if steps < 2 or steps % 2:
        raise UsageError(
            f"model.steps={steps} must be a positive even number (expansive and contractive alternate)"
        )
    contractive = cfg["contractive"]
    if contractive not in CONTRACTIVE_OPERATORS:
        raise UsageError(
            f"model.contractive={contractive} is unknown (valid: {', '.join(CONTRACTIVE_OPERATORS)})"
        )
    kernel = setting(cfg, "contractive_kernel", int, "model", low=1)
    if kernel % 2 == 0:
        raise UsageError(f"model.contractive_kernel={kernel} must be odd (1: per pixel)")
    setting(cfg, "contractive_width", int, "model", low=1)
    if cfg.get("orthogonal_map", "cayley") == "bro" and kernel != 1:
        raise UsageError(
            "model.orthogonal_map=bro is a per-pixel block reflector: it needs model.contractive_kernel=1"
        )
    setting(cfg, "expansive_init", str, "model", choices=("identity", "kaiming"))
    setting(cfg, "expansive_bias", float, "model")


def check_contractive_step(h_c: float, cfg: Mapping[str, Any], activation: Activation, key: str) -> None:
    limit = 2.0 / activation.slope_max
    largest_tau = h_c * max(fractions_of(cfg))
    if not 0.0 < largest_tau <= limit:
        raise UsageError(f"{key}={h_c:g} must give sub-steps alpha*h in (0, {limit:g}] (2 / max slope)")


def validate_lipschitz(cfg: Mapping[str, Any], activation: Activation) -> None:
    check_pairs(cfg)
    h_c = contractive_step_size(cfg, activation)
    check_contractive_step(h_c, cfg, activation, "model.h_contractive")
    expansive = expansive_activation(cfg, activation)
    h_e = cfg["h_expansive"]
    largest = float(largest_expansive_step(h_c, fractions_of(cfg), activation, expansive))
    if h_e is not None and not 0.0 <= float(h_e) <= largest * (1 + 1e-12):
        raise UsageError(
            f"model.h_expansive={float(h_e):g} breaks the Lipschitz constraint for "
            f"model.h_contractive={h_c:g}, slopes [{activation.slope_min:g}, {activation.slope_max:g}] "
            f"and expansive slopes up to {expansive.slope_max:g}; "
            f"the largest admissible h_expansive is {largest:.6g}"
        )


def lipschitz_claim(cfg: Mapping[str, Any]) -> Claim:
    """Certified with an orthogonal or norm-bounded contraction; a penalty proves nothing."""
    if not CONTRACTIVE_OPERATORS[cfg["contractive"]]:
        return SOFT_ORTHOGONALITY
    return Claim(True, f"{cfg['contractive']} contractive operator")


def flexible_steps(ctx: StepContext) -> list[nn.Module]:
    lo, hi = (float(v) for v in ctx.cfg["h_contractive_range"])
    init, fraction = float(ctx.cfg["h_contractive"]), float(ctx.cfg["expansive_fraction"])
    expansive = expansive_activation(ctx.cfg, ctx.activation)
    steps: list[nn.Module] = []
    for _ in range(int(ctx.cfg["steps"]) // 2):
        h_c = IntervalStepSize(lo, hi, init)
        h_e = BoundedStepSize(
            lambda h_c=h_c: largest_expansive_step(h_c.value(), ctx.fractions, ctx.activation, expansive),
            fraction,
        )
        steps.append(Step(expansive_field(ctx), ctx.integrator, h_e, ctx.fractions))
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
    fraction = float(cfg["expansive_fraction"])
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
    widths = [int(w) for w in cfg["widths"] or []] + ([int(cfg["width"])] if cfg["width"] else [])
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


register(
    Family(
        name="resnet",
        fields=(ResNetField,),
        make_steps=resnet_steps,
        integrator_kind="runge_kutta",
        preserves="nothing (baseline)",
    )
)
register(
    Family(
        name="naive",
        fields=(NaiveField,),
        make_steps=naive_steps,
        integrator_kind="runge_kutta",
        preserves="nothing (soft orthogonality)",
        claim=lambda cfg: SOFT_ORTHOGONALITY,
        euler_only=True,
    )
)
register(
    Family(
        name="nonexpansive",
        fields=(GradientField,),
        make_steps=nonexpansive_steps,
        integrator_kind="runge_kutta",
        preserves="1-Lipschitz layers",
        claim=lambda cfg: Claim(True, "spectral (||A|| <= 1)"),
        validate=validate_nonexpansive,
        euler_only=True,
        elementwise_activation=True,
    )
)
register(
    Family(
        name="lipschitz",
        fields=(ExpansiveField, GradientField),
        make_steps=lipschitz_steps,
        integrator_kind="runge_kutta",
        preserves="Lipschitz bound",
        claim=lipschitz_claim,
        validate=validate_lipschitz,
        euler_only=True,
        elementwise_activation=True,
    )
)
register(
    Family(
        name="lipschitz_flexible",
        fields=(ExpansiveField, GradientField),
        make_steps=flexible_steps,
        integrator_kind="runge_kutta",
        preserves="Lipschitz bound",
        claim=lipschitz_claim,
        validate=validate_flexible,
        euler_only=True,
        elementwise_activation=True,
    )
)
register(
    Family(
        name="volume",
        fields=(Shear,),
        make_steps=volume_steps,
        integrator_kind="splitting",
        preserves="volume (det J = 1)",
        validate=validate_volume,
    )
)
register(
    Family(
        name="mass",
        fields=(MassField,),
        make_steps=mass_steps,
        integrator_kind="runge_kutta",
        preserves="component sum",
        spaces=("vector",),
        lifting=False,
    )
)
register(
    Family(
        name="splitting",
        fields=(GradientFlow, SphereFlow),
        make_steps=splitting_steps,
        integrator_kind="splitting",
        preserves="norm of the sphere part",
        spaces=("vector",),
    )
)


# ------------------------------------------------------------------------------ convnet (the field's layers)


def convnet_steps(ctx: StepContext) -> list[nn.Module]:
    """`steps` layers of kind model.layer, each followed by the activation (one block)."""
    make = PEER_LAYERS[ctx.cfg["layer"]]
    size, kernel = ctx.space.size, ctx.space.kernel_size
    return repeat(ctx, lambda: LayerThenActivation(make(ctx.width, size, kernel, False), ctx.activation))


def validate_convnet(cfg: Mapping[str, Any], activation: Activation) -> None:
    PEER_LAYERS[cfg["layer"]]  # unknown names list the valid ones
    if activation.slope_max > 1.0:
        raise UsageError(f"model.activation must be 1-Lipschitz, got slopes up to {activation.slope_max:g}")


register(
    Family(
        name="convnet",
        fields=tuple(),
        make_steps=convnet_steps,
        integrator_kind="runge_kutta",
        preserves="Lipschitz bound",
        claim=lambda cfg: Claim(True, f"{cfg['layer']} layers, each bounded in float64"),
        validate=validate_convnet,
        euler_only=True,
        spaces=("image",),
        network="layers",
    )
)


def check_family_config(cfg: Mapping[str, Any]) -> None:
    """Checks every family shares: the number of dynamic layers and the sub-step fractions."""
    if int(cfg["steps"]) < 1:
        raise UsageError(f"model.steps={cfg['steps']} must be >= 1")
    if "substeps" in cfg:  # families of dynamic layers (convnet's layers take no sub-steps)
        fractions_of(cfg)
