"""Certificates of the model families: measured Lipschitz constants never exceed the bound."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import measured_lipschitz

from dsnn_cli.activations import build_activation
from dsnn_cli.certify import lipschitz_bound
from dsnn_cli.errors import UsageError
from dsnn_cli.integrators import INTEGRATORS
from dsnn_cli.networks import FAMILIES, build_model, largest_expansive_step
from dsnn_cli.operators import ConvOperator
from dsnn_cli.steps import ExpansiveField, GradientField, Step

INFO = {"in_channels": 3, "image_size": 8, "num_classes": 5, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.3, 0.25]}
LEAKY = build_activation({"name": "leaky_relu", "alpha": 0.5})
REL = 1e-5


def model_cfg(name: str, **overrides) -> dict:
    cfg = {
        "name": name,
        "widths": [3, 4],
        "steps": 2,
        "substeps": 2,
        "kernel_size": 3,
        "activation": {"name": "leaky_relu", "alpha": 0.5},
        "normalize": None,
        "integrator": {"name": "euler"},
        "h": 1.0,
        "h_contractive": 1.0,
        "h_expansive": None,
    }
    cfg.update(overrides)
    return cfg


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


@pytest.mark.parametrize("field_cls", [ExpansiveField, GradientField])
@pytest.mark.parametrize("tau", [0.3, 1.0, 1.9])
def test_step_factor_bounds_measured_step(field_cls, tau):
    torch.manual_seed(1)
    field = field_cls(3, (5, 5), LEAKY, 3).double()
    with torch.no_grad():
        field.bias.normal_()
    step = Step(field, INTEGRATORS["euler"], tau, 1).eval()
    factor = step.lipschitz_factor()
    x = torch.randn(8, 3, 5, 5, dtype=torch.float64)
    assert measured_lipschitz(step, x) <= factor * (1 + REL)


def test_expansive_factor_is_attained_by_identity_kernel():
    field = ExpansiveField(2, (4, 4), LEAKY, 3).double()
    with torch.no_grad():
        field.W.weight.zero_()
        field.W.weight[0, 0, 1, 1] = field.W.weight[1, 1, 1, 1] = 1.0
        field.bias.fill_(100.0)  # every pre-activation in the slope-1 region
    field.W.calibrate()
    step = Step(field, INTEGRATORS["euler"], 0.4, 1).eval()
    x = torch.rand(4, 2, 4, 4, dtype=torch.float64)
    assert measured_lipschitz(step, x) == pytest.approx(step.lipschitz_factor(), rel=1e-6)


@pytest.mark.parametrize("family", ["nonexpansive", "lipschitz"])
@pytest.mark.parametrize("normalize", ["mean", "mean_std"])
def test_network_bound_dominates_measured_lipschitz(family, normalize):
    torch.manual_seed(0)
    model = build_model(model_cfg(family, normalize=normalize), INFO).double().eval()
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "bias") and isinstance(module.bias, torch.nn.Parameter):
                module.bias.normal_(0, 0.5)
    bound = lipschitz_bound(model)
    x = torch.rand(16, 3, 8, 8, dtype=torch.float64)
    measured = measured_lipschitz(model, x)
    assert 0 < measured <= bound * (1 + REL)


def test_bound_recomputes_norms_instead_of_trusting_sigma():
    """Break the constraint behind the model's back: the bound must follow the weights."""
    model = build_model(model_cfg("nonexpansive"), INFO).double().eval()
    before = lipschitz_bound(model)
    with torch.no_grad():
        model.head.weight.mul_(50.0)  # sigma is stale: the head's norm now far exceeds 1
    after = lipschitz_bound(model)
    assert after > 5 * before
    x = torch.rand(8, 3, 8, 8, dtype=torch.float64)
    assert measured_lipschitz(model, x) <= after * (1 + REL)


def test_normalisation_factor_enters_the_bound():
    torch.manual_seed(3)
    plain = build_model(model_cfg("lipschitz", normalize="mean"), INFO)
    torch.manual_seed(3)
    scaled = build_model(model_cfg("lipschitz", normalize="mean_std"), INFO)
    assert lipschitz_bound(scaled) == pytest.approx(
        lipschitz_bound(plain) / min(INFO["std"]), rel=1e-6
    )  # std is stored in float32


def test_resnet_has_no_certificate():
    assert lipschitz_bound(build_model(model_cfg("resnet"), INFO)) is None
    assert FAMILIES["resnet"].certified is False


def test_nonexpansive_layers_have_factor_one():
    model = build_model(model_cfg("nonexpansive", h=2.0), INFO)
    factors = dict(model.lipschitz_factors())
    steps = [v for k, v in factors.items() if ".steps." in k]
    assert steps and all(v <= 1.0 + 1e-6 for v in steps)


def test_step_size_rule():
    cfg = model_cfg("lipschitz", h_contractive=1.0, substeps=2)
    # tau_C = 0.5, slopes [1/2, 1]: c = max(|1 - 1/4|, |1 - 1/2|) = 3/4, tau_E = 1/3, h_E = 2/3
    assert largest_expansive_step(cfg, LEAKY) == pytest.approx(2 / 3)
    with pytest.raises(UsageError, match=r"largest admissible h_expansive is 0\.666667"):
        build_model({**cfg, "h_expansive": 0.7}, INFO)
    build_model({**cfg, "h_expansive": 0.6}, INFO)
    relu = {**cfg, "activation": {"name": "relu"}}
    assert largest_expansive_step(relu, build_activation("relu")) == 0.0
    with pytest.raises(UsageError, match="largest admissible h_expansive is 0"):
        build_model({**relu, "h_expansive": 0.1}, INFO)
    with pytest.raises(UsageError, match=r"model.h=2.5"):
        build_model(model_cfg("nonexpansive", h=2.5), INFO)


def test_family_refuses_integrators_it_does_not_admit():
    with pytest.raises(UsageError, match="does not admit model/integrator=rk4"):
        build_model(model_cfg("lipschitz", integrator={"name": "rk4"}), INFO)
    build_model(model_cfg("resnet", integrator={"name": "rk4"}), INFO)


@pytest.mark.parametrize("name", ["euler", "heun", "rk4"])
def test_integrator_order(name):
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
    w = op.effective_weight()
    lhs = (op.apply_with(x, w) * y).sum()
    rhs = (x * op.adjoint_with(y, w)).sum()
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-12)
    assert torch.allclose(op.adjoint_with(y, w), F.conv_transpose2d(y, w, padding=1))
