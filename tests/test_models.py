"""Certificates of the model families: a measured Lipschitz constant never exceeds the bound."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import measured_lipschitz, model_config

from dsnn_cli.errors import UsageError
from dsnn_cli.models.activations import build_activation
from dsnn_cli.models.families import FAMILIES
from dsnn_cli.models.fields import ExpansiveField, GradientField
from dsnn_cli.models.integrators import INTEGRATORS
from dsnn_cli.models.layers import Step
from dsnn_cli.models.networks import build_model
from dsnn_cli.models.operators import ConvOperator
from dsnn_cli.models.spaces import ImageSpace, VectorSpace
from dsnn_cli.models.step_sizes import largest_expansive_step
from dsnn_cli.robustness.certificates import lipschitz_bound, pairwise_certificate

INFO = {
    "kind": "image",
    "in_channels": 3,
    "image_size": 8,
    "num_classes": 5,
    "mean": [0.5, 0.4, 0.3],
    "std": [0.2, 0.3, 0.25],
}
VECTOR_INFO = {"kind": "vector", "dim_in": 3, "dim_out": 2}
LEAKY = build_activation({"name": "leaky_relu", "alpha": 0.5})
REL = 1e-5
CERTIFIED = [
    ("nonexpansive", {}),
    ("lipschitz", {"contractive": "orthogonal"}),
    ("lipschitz", {"contractive": "spectral"}),
    ("lipschitz", {"contractive_kernel": 1, "contractive_width": 2, "substeps": 1, "h_contractive": None}),
    ("lipschitz", {"contractive_kernel": 3, "contractive_width": 2, "expansive_init": "identity"}),
    ("lipschitz", {"stem": "conv", "downsample": "maxpool", "head": "dense"}),
    ("lipschitz", {"expansive_activation": "relu"}),  # slope-0 expansions, leaky contractions
    ("lipschitz_flexible", {}),
]
IDS = [f"{f}-{'-'.join(f'{k}={v}' for k, v in e.items())}" for f, e in CERTIFIED]
# Image-only layouts: per-stage step counts, a learned projection, dense steps on the features.
IMAGE_CERTIFIED = [
    *CERTIFIED,
    ("lipschitz", {"steps": [2, 4], "downsample": "unshuffle_project", "dense_steps": 2, "substeps": 1}),
    ("lipschitz", {"dense_steps": 2, "dense_orthogonal": "cayley"}),
    ("lipschitz", {"dense_steps": 2, "dense_orthogonal": "shuffled_blocks", "head": "dense"}),
    ("nonexpansive", {"steps": [1, 2], "dense_steps": 1}),
    # the peers' pieces in our steps: block-reflector contractions, AOL-rescaled expansions
    (
        "lipschitz",
        {"orthogonal_map": "bro", "expansive_operator": "aol", "dense_steps": 2, "dense_orthogonal": "bro"},
    ),
]
IMAGE_IDS = [f"{f}-{'-'.join(f'{k}={v}' for k, v in e.items())}" for f, e in IMAGE_CERTIFIED]


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 1.0])
def test_leaky_relu_is_max_x_alpha_x_with_slopes_in_its_interval(alpha):
    """The fused kernel computes max{x, alpha x}; every derivative, the kink included, is in [alpha, 1]."""
    act = build_activation({"name": "leaky_relu", "alpha": alpha})
    x = torch.cat(
        [torch.randn(1000, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)]
    ).requires_grad_()
    y = act.module(x)
    assert torch.equal(y, torch.maximum(x, alpha * x))
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert ((grad >= act.slope_min) & (grad <= act.slope_max)).all()
    a, b = torch.randn(2, 1000, dtype=torch.float64)
    quotient = (act.module(a) - act.module(b)) / (a - b)
    assert (quotient >= alpha - 1e-12).all() and (quotient <= 1 + 1e-12).all()


# The settings every family's tests share, where the family's YAML has the key.
SHARED = {
    "widths": [3, 4],
    "width": None,
    "steps": 2,
    "substeps": 2,
    "kernel_size": 3,
    "activation": {"name": "leaky_relu", "alpha": 0.5},
    "integrator": {"name": "euler"},
    "h": 1.0,
    "h_contractive": 1.0,
    "h_expansive": None,
    "contractive": "orthogonal",
    "h_contractive_range": [0.5, 2.0],
    "expansive_fraction": 0.9,
    "ortho_penalty": 0.01,
}


def model_cfg(name: str, **overrides) -> dict:
    defaults = model_config(name)
    return {**defaults, **{k: v for k, v in SHARED.items() if k in defaults}, **overrides}


def randomize_biases(model: torch.nn.Module, scale: float = 0.5) -> None:
    """Move pre-activations across the kinks so both slopes of the activation are in play."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, scale)


def dense_norm(op: ConvOperator) -> float:
    c_in = op.weight.shape[1]
    n = c_in * op.input_size[0] * op.input_size[1]
    basis = torch.eye(n, dtype=torch.float64).view(n, c_in, *op.input_size)
    weight = op.effective_weight().double()
    return float(torch.linalg.matrix_norm(op.apply_with(basis, weight).detach().reshape(n, -1), ord=2))


def test_calibrated_operator_has_norm_at_most_one():
    op = ConvOperator(3, 4, (5, 5), constrained=True)
    with torch.no_grad():
        op.weight.mul_(10)
    op.calibrate()
    op.eval()
    exact = dense_norm(op)
    assert exact <= 1.0
    assert exact >= 0.75  # normalised by a bound within 1.25x of the exact norm
    assert op.norm_bound() >= exact


def test_training_sigma_converges_to_operator_norm_from_below():
    op = ConvOperator(4, 4, (6, 6), constrained=True)
    op.train()
    for _ in range(200):
        op.effective_weight()
    exact = op.exact_norm_bound(op.weight)
    assert float(op.sigma) <= exact * (1 + 1e-6)
    assert float(op.sigma) == pytest.approx(exact, rel=0.3)


@pytest.mark.parametrize("space", [ImageSpace((5, 5), 3), VectorSpace()], ids=["image", "vector"])
@pytest.mark.parametrize("kind", ["expansive", "spectral", "orthogonal"])
@pytest.mark.parametrize("tau", [0.3, 1.0, 1.9])
def test_step_factor_bounds_measured_step(space, kind, tau):
    torch.manual_seed(1)
    field = ExpansiveField(space, 3, LEAKY) if kind == "expansive" else GradientField(space, 3, LEAKY, kind)
    field = field.double()
    randomize_biases(field)
    step = Step(field, INTEGRATORS["euler"], tau, [1.0]).eval()
    shape = (8, 3, 5, 5) if isinstance(space, ImageSpace) else (8, 3)
    x = torch.randn(shape, dtype=torch.float64)
    assert measured_lipschitz(step, x) <= step.lipschitz_factor() * (1 + REL)


def test_expansive_factor_is_attained_by_identity_kernel():
    field = ExpansiveField(ImageSpace((4, 4), 3), 2, LEAKY).double()
    with torch.no_grad():
        field.W.weight.zero_()
        field.W.weight[0, 0, 1, 1] = field.W.weight[1, 1, 1, 1] = 1.0
        field.bias.fill_(100.0)  # every pre-activation in the slope-1 region
    field.W.calibrate()
    step = Step(field, INTEGRATORS["euler"], 0.4, [1.0]).eval()
    x = torch.rand(4, 2, 4, 4, dtype=torch.float64)
    assert measured_lipschitz(step, x) == pytest.approx(step.lipschitz_factor(), rel=1e-6)


def test_orthogonal_contraction_factor_is_attained():
    """With A^T A = I and all pre-activations on the slope-1/2 side, the step is (1 - tau/2) I."""
    field = GradientField(VectorSpace(), 3, LEAKY, "orthogonal").double()
    with torch.no_grad():
        field.bias.fill_(-100.0)
    step = Step(field, INTEGRATORS["euler"], 0.5, [1.0]).eval()
    # factor max(|1 - tau/2|, |1 - tau|) = 0.75 at tau = 0.5, attained on the slope-1/2 side
    assert step.lipschitz_factor() == pytest.approx(0.75, abs=1e-12)
    x = torch.randn(4, 3, dtype=torch.float64)
    assert measured_lipschitz(step, x) == pytest.approx(0.75, rel=1e-6)


@pytest.mark.parametrize("family,extra", IMAGE_CERTIFIED, ids=IMAGE_IDS)
@pytest.mark.parametrize("normalize", ["mean", "mean_std"])
def test_network_bound_dominates_measured_lipschitz(family, extra, normalize):
    torch.manual_seed(0)
    model = build_model(model_cfg(family, normalize=normalize, **extra), INFO).double().eval()
    randomize_biases(model)
    bound = lipschitz_bound(model)
    x = torch.rand(12, 3, 8, 8, dtype=torch.float64)
    measured = measured_lipschitz(model.features, x)
    assert 0 < measured <= bound * (1 + REL)
    declared = model.certificate()["declared_bound"]
    assert bound <= declared * (1 + 1e-5)


@pytest.mark.parametrize("family,extra", IMAGE_CERTIFIED, ids=IMAGE_IDS)
def test_pairwise_certificate_dominates_measured_logit_differences(family, extra):
    """Each z_i - z_j is L ||w_i - w_j||-Lipschitz: what certified radii divide by."""
    torch.manual_seed(1)
    model = build_model(model_cfg(family, **extra), INFO).double().eval()
    randomize_biases(model)
    certificate = pairwise_certificate(model)
    x = torch.rand(12, 3, 8, 8, dtype=torch.float64)
    for i, j in [(0, 1), (2, 4), (3, 1)]:
        difference = lambda inputs, i=i, j=j: (model(inputs)[:, i] - model(inputs)[:, j])[:, None]  # noqa: E731
        measured = measured_lipschitz(difference, x)
        assert 0 < measured <= float(certificate.pairs[i, j]) * (1 + REL)
    assert float(certificate.pairs.max()) <= 2 * certificate.bound * (1 + 1e-12)


@pytest.mark.parametrize("family,extra", CERTIFIED, ids=IDS)
def test_vector_network_bound_dominates_measured_lipschitz(family, extra):
    torch.manual_seed(0)
    model = build_model(model_cfg(family, width=4, **extra), VECTOR_INFO).double().eval()
    randomize_biases(model, 1.0)
    x = torch.randn(32, 3, dtype=torch.float64)
    assert measured_lipschitz(model, x) <= lipschitz_bound(model) * (1 + REL)


def test_orthogonal_lipschitz_network_is_one_lipschitz_by_construction():
    model = build_model(model_cfg("lipschitz", normalize="mean"), INFO).eval()
    assert model.certificate()["declared_bound"] <= 1.0 + 1e-9
    assert lipschitz_bound(model) <= 1.0 + 1e-5


def test_bound_recomputes_norms_instead_of_trusting_sigma():
    """Break the constraint behind the model's back: the bound must follow the weights."""
    model = build_model(model_cfg("nonexpansive", stem="conv"), INFO).double().eval()
    before = lipschitz_bound(model)
    with torch.no_grad():
        model.stem.conv.weight.mul_(50.0)  # sigma is stale: the lift's norm now far exceeds 1
    after = lipschitz_bound(model)
    assert after > 5 * before
    x = torch.rand(8, 3, 8, 8, dtype=torch.float64)
    assert measured_lipschitz(model.features, x) <= after * (1 + REL)


def test_normalisation_factor_enters_the_bound():
    torch.manual_seed(3)
    plain = build_model(model_cfg("lipschitz", normalize="mean"), INFO)
    torch.manual_seed(3)
    scaled = build_model(model_cfg("lipschitz", normalize="mean_std"), INFO)
    assert lipschitz_bound(scaled) == pytest.approx(lipschitz_bound(plain) / min(INFO["std"]), rel=1e-6)


@pytest.mark.parametrize(
    "family,extra",
    [
        ("resnet", {}),
        ("naive", {}),
        ("lipschitz", {"contractive": "penalty"}),
        ("volume", {"integrator": {"name": "strang"}}),
    ],
)
def test_uncertified_models_have_no_bound(family, extra):
    model = build_model(model_cfg(family, **extra), INFO)
    assert lipschitz_bound(model) is None
    assert model.certificate()["certified"] is False


def test_soft_penalties_enter_the_loss():
    naive = build_model(model_cfg("naive"), INFO)
    penalty = naive.regularization()
    assert penalty is not None and float(penalty.detach()) > 0
    penalty.backward()
    assert naive.stages[0].steps[0].field.A.weight.grad is not None
    assert build_model(model_cfg("lipschitz"), INFO).regularization() is None


def test_nonexpansive_layers_have_factor_one():
    model = build_model(model_cfg("nonexpansive", h=2.0), INFO)
    factors = dict(model.lipschitz_factors())
    steps = [v for k, v in factors.items() if ".steps." in k]
    assert steps and all(v <= 1.0 + 1e-6 for v in steps)


def test_step_size_rule():
    # tau_C = 0.5, slopes [1/2, 1]: c = max(|1 - 1/4|, |1 - 1/2|) = 3/4, tau_E = 1/3, h_E = 2/3
    assert largest_expansive_step(1.0, [0.5, 0.5], LEAKY) == pytest.approx(2 / 3)
    # the best contraction, tau_C = 4/3: c = 1/3 and tau_E = 2
    assert largest_expansive_step(4 / 3, [1.0], LEAKY) == pytest.approx(2.0)
    with pytest.raises(UsageError, match=r"largest admissible h_expansive is 0\.666667"):
        build_model(model_cfg("lipschitz", h_expansive=0.7), INFO)
    build_model(model_cfg("lipschitz", h_expansive=0.6), INFO)
    relu = build_activation("relu")
    assert largest_expansive_step(1.0, [0.5, 0.5], relu) == 0.0
    with pytest.raises(UsageError, match="largest admissible h_expansive is 0"):
        build_model(model_cfg("lipschitz", activation={"name": "relu"}, h_expansive=0.1), INFO)
    with pytest.raises(UsageError, match=r"model.h=2.5"):
        build_model(model_cfg("nonexpansive", h=2.5, substeps=1), INFO)
    with pytest.raises(UsageError, match="sum to 1"):
        build_model(model_cfg("lipschitz", substep_fractions=[0.5, 0.6]), INFO)


def test_expansive_steps_take_their_own_activation_and_keep_the_pair_non_expansive():
    """ReLU has no contraction (m = 0) but its largest slope is 1: as the expansive steps'
    activation it leaves h_E as it was, and each pair's factor c (1 + M_E tau_E) stays <= 1;
    a steeper expansive activation (M_E = 2) halves the admissible step."""
    relu, steep = build_activation("relu"), build_activation({"name": "leaky_relu", "alpha": 0.5})
    steep = type(steep)(steep.module, 0.5, 2.0)
    assert largest_expansive_step(1.0, [0.5, 0.5], LEAKY, relu) == pytest.approx(2 / 3)
    assert largest_expansive_step(1.0, [0.5, 0.5], LEAKY, steep) == pytest.approx(1 / 3)
    torch.manual_seed(4)
    model = build_model(model_cfg("lipschitz", expansive_activation="relu"), INFO).double().eval()
    expansive, contractive = model.stages[0].steps[0], model.stages[0].steps[1]
    assert isinstance(expansive.field.act, torch.nn.ReLU)
    assert not isinstance(contractive.field.act, torch.nn.ReLU)
    assert expansive.lipschitz_factor() * contractive.lipschitz_factor() <= 1 + 1e-12
    assert lipschitz_bound(model) <= 1.0 + 1e-5
    with pytest.raises(UsageError, match="model.expansive_activation.*unknown activation 'nope'"):
        build_model(model_cfg("lipschitz", expansive_activation="nope"), INFO)


def test_flexible_step_sizes_stay_certified_after_training_moves_them():
    model = build_model(model_cfg("lipschitz_flexible"), INFO).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("theta", "phi")):
                p.normal_(0, 3.0)  # anywhere an optimiser might take them
    model.eval()
    for stage in model.stages:
        expansive, contractive = stage.steps[0], stage.steps[1]
        h_c = float(contractive.step_size.value().detach())
        assert 0.5 <= h_c <= 2.0
        assert (
            float(expansive.step_size.value().detach())
            <= largest_expansive_step(h_c, [0.5, 0.5], LEAKY) + 1e-12
        )
    assert lipschitz_bound(model) <= 1.0 + 1e-5
    x = torch.rand(8, 3, 8, 8, dtype=torch.float64)
    assert measured_lipschitz(model.features, x) <= lipschitz_bound(model) * (1 + REL)


def test_families_refuse_integrators_they_do_not_admit():
    with pytest.raises(UsageError, match="does not admit model/integrator=rk4"):
        build_model(model_cfg("lipschitz", integrator={"name": "rk4"}), INFO)
    with pytest.raises(UsageError, match="does not admit model/integrator=euler"):
        build_model(model_cfg("volume"), INFO)
    build_model(model_cfg("resnet", integrator={"name": "rk4"}), INFO)


def test_low_dimensional_families_refuse_images():
    with pytest.raises(UsageError, match="works on vector data"):
        build_model(model_cfg("mass"), INFO)
    with pytest.raises(UsageError, match="state must be the data"):
        build_model(model_cfg("mass", width=5), {"kind": "vector", "dim_in": 3, "dim_out": 3})


@pytest.mark.parametrize("name", ["euler", "heun", "rk4"])
def test_runge_kutta_order(name):
    """x' = x^2, x(0) = 1/2 has x(1) = 1; the error ratio at h and h/2 gives the order."""
    integrator = INTEGRATORS[name]

    def solve(n: int) -> float:
        x = torch.tensor(0.5, dtype=torch.float64)
        for _ in range(n):
            x = integrator(lambda y: y * y, x, 1.0 / n)
        return float(x)

    errors = [abs(solve(n) - 1.0) for n in (64, 128)]
    assert math.log2(errors[0] / errors[1]) == pytest.approx(integrator.order, abs=0.15)


def test_gradient_step_adjoint_is_exact():
    op = ConvOperator(3, 3, (5, 5), constrained=True).double()
    x, y = torch.randn(2, 3, 5, 5, dtype=torch.float64), torch.randn(2, 3, 5, 5, dtype=torch.float64)
    w = op.effective_weight().detach()
    assert float((op.apply_with(x, w) * y).sum()) == pytest.approx(
        float((x * op.adjoint_with(y, w)).sum()), rel=1e-12
    )
    assert torch.allclose(op.adjoint_with(y, w), F.conv_transpose2d(y, w, padding=1))


def test_every_family_is_registered_with_its_facts():
    assert set(FAMILIES.names()) == {
        "resnet",
        "naive",
        "nonexpansive",
        "lipschitz",
        "lipschitz_flexible",
        "volume",
        "mass",
        "splitting",
        "convnet",
    }
    assert FAMILIES["convnet"].network == "layers" and FAMILIES["convnet"].spaces == ("image",)
    assert FAMILIES["mass"].spaces == ("vector",) and FAMILIES["splitting"].spaces == ("vector",)
    assert set(FAMILIES["volume"].integrators) == {"strang", "lie_trotter"}


def test_isometric_stem_and_downsampling_keep_or_project_the_signal():
    from dsnn_cli.models.stages import FirstChannelsUnshuffle, PadChannels

    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    padded = PadChannels(3, 16)(x)
    assert padded.shape == (4, 16, 8, 8) and torch.allclose(
        padded.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1)
    )
    y = torch.randn(4, 16, 8, 8, dtype=torch.float64)
    down = FirstChannelsUnshuffle(16, 32)(y)
    assert down.shape == (4, 32, 4, 4)
    assert torch.allclose(
        down.flatten(1).norm(dim=1), y[:, :8].flatten(1).norm(dim=1)
    )  # a permutation of kept channels
    with pytest.raises(UsageError, match="multiple of 4"):
        FirstChannelsUnshuffle(16, 30)
    with pytest.raises(UsageError, match="at most 4 x 4"):
        FirstChannelsUnshuffle(4, 32)


def test_unshuffle_projection_is_an_orthogonal_projection_within_its_bound():
    """The dense matrix of the layer (32 -> 64 channels, 6x6 -> 3x3) has every singular value 1:
    a co-isometry, so no bound is lost and nothing is scaled; its factor covers the measured norm."""
    from dsnn_cli.models.stages import UnshuffleProject

    torch.manual_seed(0)
    layer = UnshuffleProject(8, 20).double().eval()
    with torch.no_grad():
        layer.basis.weight.normal_(0.0, 0.3)  # far from the identity start
    layer.basis.calibrate()
    n_in = 8 * 6 * 6
    dense = torch.autograd.functional.jacobian(
        lambda v: layer(v.view(1, 8, 6, 6)).flatten(), torch.zeros(n_in, dtype=torch.float64)
    )
    singular = torch.linalg.svdvals(dense)
    assert dense.shape == (20 * 9, n_in)
    assert torch.allclose(singular, torch.ones_like(singular), atol=1e-9)
    assert float(singular.max()) <= layer.lipschitz_factor()
    with pytest.raises(UsageError, match="at most 4 x 8"):
        UnshuffleProject(8, 40)


def test_identity_start_makes_each_pair_norm_preserving_where_the_bias_keeps_it_active():
    """W = I, v > 0: the expansive step is x -> (1 + h_E) x + h_E v, the exact inverse gain of the
    contraction c = (M - m) / (M + m) at h_C = 2 / (m + M), so the pair's Jacobian is orthogonal."""
    cfg = model_cfg("lipschitz", widths=[4], activation={"name": "leaky_relu", "alpha": 0.1})
    cfg.update(h_contractive=None, substeps=1, expansive_init="identity", expansive_bias=5.0)
    cfg.update(contractive_kernel=1, contractive_width=1)  # a square A: D's slopes are A^T D A's eigenvalues
    model = build_model(cfg, {**INFO, "image_size": 2}).double().eval()
    expansive, contractive = model.stages[0].steps
    assert contractive.step_size.value() == pytest.approx(2 / 1.1)
    c = (1 - 0.1) / (1 + 0.1)
    assert contractive.lipschitz_factor() == pytest.approx(c, rel=1e-9)
    assert expansive.step_size.value() == pytest.approx(1 / c - 1, rel=1e-9)
    pair = lambda x: contractive(expansive(x))  # noqa: E731
    x = 0.1 * torch.randn(3, 4, 2, 2, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(
        lambda v: pair(v.view(1, 4, 2, 2)).flatten(), x[0].flatten()
    )
    singular = torch.linalg.svdvals(jacobian)
    assert torch.allclose(singular, torch.ones_like(singular), atol=1e-9)
