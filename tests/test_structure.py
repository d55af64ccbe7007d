"""Structure kept by construction: volume (det J = 1), mass (sum invariant), sphere norms,
and the orders of the splitting integrators."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import model_config

from dsnn_cli.data.containers import Split
from dsnn_cli.models.activations import build_activation
from dsnn_cli.models.fields import MassField
from dsnn_cli.models.integrators import INTEGRATORS
from dsnn_cli.models.layers import SphereFlow
from dsnn_cli.models.networks import build_model
from dsnn_cli.models.spaces import ImageSpace, VectorSpace
from dsnn_cli.robustness.structure import flow_map_metrics, jacobian_determinants

TANH = build_activation("tanh")


def vector_cfg(name: str, integrator: str, **extra) -> dict:
    shared = {"width": None, "steps": 3, "substeps": 2, "h": 0.5, "activation": {"name": "tanh"}}
    return model_config(name, **{**shared, "integrator": {"name": integrator}, **extra})


def randomize(model: torch.nn.Module, scale: float = 1.0) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, scale)


@pytest.mark.parametrize("integrator", ["strang", "lie_trotter"])
@pytest.mark.parametrize("dim", [3, 4])
def test_volume_network_has_unit_jacobian_determinant(integrator, dim):
    model = build_model(vector_cfg("volume", integrator), {"kind": "vector", "dim_in": dim, "dim_out": dim})
    model = model.double().eval()
    randomize(model)
    x = torch.randn(16, dim, dtype=torch.float64)
    dets = jacobian_determinants(model, x)
    assert float((dets - 1).abs().max().detach()) < 1e-10
    resnet = build_model(
        vector_cfg("resnet", "euler"), {"kind": "vector", "dim_in": dim, "dim_out": dim}
    ).double()
    randomize(resnet)
    assert float((jacobian_determinants(resnet, x) - 1).abs().max()) > 1e-3  # the baseline does not


@pytest.mark.parametrize("integrator", ["strang", "lie_trotter"])
def test_volume_step_on_images_has_unit_jacobian_determinant(integrator):
    cfg = model_config(
        "volume",
        widths=[4],
        steps=2,
        substeps=1,
        h=0.7,
        kernel_size=3,
        activation={"name": "tanh"},
        integrator={"name": integrator},
        normalize="none",
    )
    info = {
        "kind": "image",
        "in_channels": 3,
        "image_size": 4,
        "num_classes": 2,
        "mean": [0.0] * 3,
        "std": [1.0] * 3,
    }
    model = build_model(cfg, info).double().eval()
    randomize(model, 0.5)
    steps = model.stages[0].steps
    x = torch.randn(4, 4, 4, dtype=torch.float64)

    def flow(state: torch.Tensor) -> torch.Tensor:
        for step in steps:
            state = step(state.view(1, 4, 4, 4))
        return state.flatten()

    jac = torch.autograd.functional.jacobian(flow, x)
    assert abs(float(torch.linalg.det(jac.view(64, 64))) - 1.0) < 1e-10


@pytest.mark.parametrize("integrator", ["euler", "heun", "rk4"])
def test_mass_network_keeps_the_component_sum_over_1000_steps(integrator):
    cfg = vector_cfg("mass", integrator, steps=4, substeps=1, h=0.02)
    model = build_model(cfg, {"kind": "vector", "dim_in": 3, "dim_out": 3}).double().eval()
    randomize(model)
    y = torch.rand(64, 3, dtype=torch.float64)
    start = y.sum(dim=1)
    with torch.no_grad():
        for _ in range(250):  # 250 network evaluations = 1000 integrator steps
            y = model(y)
    assert torch.isfinite(y).all() and float(y.abs().max()) < 100
    assert float((y.sum(dim=1) - start).abs().max()) < 1e-12
    assert float((y - torch.rand(64, 3, dtype=torch.float64)).abs().max()) > 1e-3  # it does move


def test_mass_field_velocity_sums_to_zero():
    field = MassField(VectorSpace(), 5, TANH).double()
    randomize(field)
    f = field.bind()
    v = f(torch.randn(32, 5, dtype=torch.float64))
    assert float(v.sum(dim=1).abs().max()) < 1e-14 and float(v.abs().max()) > 1e-3


def test_sphere_flow_keeps_the_norm_for_any_step():
    sphere = SphereFlow(VectorSpace(), 4, TANH).double()
    randomize(sphere)
    flow = sphere.bind_flow()
    x = torch.randn(32, 4, dtype=torch.float64)
    for t in (0.01, 0.5, 3.0):
        y = flow(x, t)
        assert float((y.norm(dim=1) - x.norm(dim=1)).abs().max()) < 1e-12
        assert float((y - x).abs().max()) > 1e-4


def exact_linear_problem():
    """x' = (-D + Omega) x with D diagonal (gradient part) and Omega skew (sphere part)."""
    d = torch.diag(torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64))
    omega = torch.tensor([[0.0, 1.0, -0.5], [-1.0, 0.0, 2.0], [0.5, -2.0, 0.0]], dtype=torch.float64)
    gradient = lambda x, t: x @ torch.linalg.matrix_exp(-t * d).T  # noqa: E731 - exact sub-flows
    sphere = lambda x, t: x @ torch.linalg.matrix_exp(t * omega).T  # noqa: E731
    exact = lambda x, t: x @ torch.linalg.matrix_exp(t * (omega - d)).T  # noqa: E731
    return gradient, sphere, exact


@pytest.mark.parametrize("name,order", [("strang", 2), ("lie_trotter", 1)])
def test_splitting_order(name, order):
    gradient, sphere, exact = exact_linear_problem()
    split = INTEGRATORS[name].split
    x0 = torch.tensor([[1.0, -0.5, 0.25]], dtype=torch.float64)

    def error(n: int) -> float:
        x = x0
        for _ in range(n):
            x = split([gradient, sphere], x, 1.0 / n)
        return float((x - exact(x0, 1.0)).norm())

    assert math.log2(error(32) / error(64)) == pytest.approx(order, abs=0.1)


def test_strang_network_step_is_second_order_in_h():
    """The layer's own sub-solvers (Heun, exponential midpoint) keep Strang at order 2."""
    model = build_model(
        vector_cfg("splitting", "strang", steps=1, substeps=1, h=1.0),
        {"kind": "vector", "dim_in": 3, "dim_out": 3},
    ).double()
    randomize(model, 0.5)
    step = model.steps[0]
    x0 = torch.randn(4, 3, dtype=torch.float64)

    def solve(n: int) -> torch.Tensor:
        step.fractions = [1.0 / n] * n
        return step(x0)

    reference = solve(512)
    errors = [float((solve(n) - reference).norm()) for n in (16, 32)]
    assert math.log2(errors[0] / errors[1]) == pytest.approx(2.0, abs=0.2)


def test_substep_fractions_compose_to_the_whole_step():
    cfg = vector_cfg("resnet", "euler", steps=1, h=0.3, substep_fractions=[0.2, 0.3, 0.5])
    model = build_model(cfg, {"kind": "vector", "dim_in": 2, "dim_out": 2}).double()
    step = model.steps[0]
    f = step.field.bind()
    x = torch.randn(3, 2, dtype=torch.float64)
    expected = x
    for alpha in (0.2, 0.3, 0.5):
        expected = expected + alpha * 0.3 * f(expected)
    assert torch.allclose(step(x), expected, atol=1e-14)


def test_image_space_and_vector_space_agree_on_the_mass_invariant_shape():
    assert ImageSpace((4, 4), 3).kind == "image" and VectorSpace().kind == "vector"


def test_flow_map_metrics_see_the_structure():
    info = {"system": "sir", "dt": 0.1, "rollout_steps": 20}
    y0 = torch.distributions.Dirichlet(torch.ones(3)).sample((16,)).double()
    mass = build_model(vector_cfg("mass", "rk4"), {"kind": "vector", "dim_in": 3, "dim_out": 3})
    resnet = build_model(vector_cfg("resnet", "euler"), {"kind": "vector", "dim_in": 3, "dim_out": 3})
    for model in (mass, resnet):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.1)
    m = flow_map_metrics(mass, info, Split(y0, y0))
    r = flow_map_metrics(resnet, info, Split(y0, y0))
    assert m["invariant_drift"] < 1e-12 < r["invariant_drift"]
    assert m["invariant_drift_exact_flow"] < 1e-12 and m["rollout_points"] == 16
    v = flow_map_metrics(
        build_model(vector_cfg("volume", "strang"), {"kind": "vector", "dim_in": 3, "dim_out": 3}),
        {"system": "abc", "dt": 0.1, "rollout_steps": 0},
        Split(y0, y0),
    )
    assert v["det_jacobian_error"] < 1e-10
