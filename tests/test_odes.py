"""Reference ODEs: the flow map is accurate, and each system has the structure it claims."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import divergence

from dsnn_cli.data.odes import SYSTEMS, ODESystem, flow_map, function_target, trajectory
from dsnn_cli.errors import UsageError
from dsnn_cli.models.integrators import rk4_step

DECAY = ODESystem(
    name="decay",
    dim=2,
    rhs=lambda x: -x,
    invariant=None,
    divergence_free=False,
    sample=lambda n, g: torch.rand(n, 2, generator=g, dtype=torch.float64),
    description="x' = -x, exact flow exp(-t) x",
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny; on a busy machine OpenMP fan-out only adds latency."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_flow_map_is_accurate_and_fourth_order():
    x0 = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)
    t = 1.0
    exact = math.exp(-t) * x0

    def error(max_step: float) -> float:
        return (flow_map(DECAY, x0, t, max_step) - exact).abs().max().item()

    assert error(1e-3) < 1e-12
    assert error(0.1) / error(0.05) == pytest.approx(16.0, abs=2.0)


@pytest.mark.parametrize("name,t", [("sir", 5.0), ("skew", 0.5)])
def test_invariant_is_conserved_by_the_flow(name, t):
    system = SYSTEMS[name]
    x0 = system.sample(64, gen())
    xt = flow_map(system, x0, t)
    assert torch.isfinite(xt).all()
    assert (xt - x0).abs().max().item() > 0.1  # the states do move
    drift = (system.invariant(xt) - system.invariant(x0)).abs().max().item()
    assert drift < 1e-12
    if name == "sir":
        assert xt.min().item() >= 0.0


def test_skew_blows_up_in_finite_time_from_the_box():
    # The conserved sum bounds nothing: from the corner (1, -1, -1) y2 and y3 run off
    # together, so long skew horizons from [-1, 1]^3 give non-finite data (hence t = 0.5 above).
    skew = SYSTEMS["skew"]
    corner = torch.tensor([[1.0, -1.0, -1.0]], dtype=torch.float64)
    assert torch.isfinite(flow_map(skew, corner, 0.5)).all()
    late = flow_map(skew, corner, 1.0)
    assert not (torch.isfinite(late).all() and late.abs().max().item() < 1e6)


def test_sir_samples_cover_the_simplex():
    y = SYSTEMS["sir"].sample(4000, gen())
    assert y.dtype == torch.float64
    assert y.min().item() >= 0.0
    assert (y.sum(dim=1) - 1.0).abs().max().item() < 1e-14
    assert torch.allclose(y.mean(dim=0), torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.05)
    # Uniform on the simplex: each marginal is Beta(1, 2), so P(y_i < 1/2) = 3/4.
    assert torch.allclose(
        (y < 0.5).double().mean(dim=0), torch.full((3,), 0.75, dtype=torch.float64), atol=0.03
    )


def test_abc_is_divergence_free_and_its_flow_preserves_volume():
    abc = SYSTEMS["abc"]
    assert abc.divergence_free and abc.invariant is None
    x = abc.sample(100, gen())
    assert x.abs().max().item() <= math.pi / 2
    assert divergence(abc.rhs, x).abs().max().item() < 1e-12
    # The divergence check itself can fail: the cubic field has divergence 3 sin^2 cos + 3 x^2.
    c = SYSTEMS["cubic"].sample(10, gen())
    expected = (3 * torch.sin(c) ** 2 * torch.cos(c) + 3 * c**2).sum(dim=1)
    assert torch.allclose(divergence(SYSTEMS["cubic"].rhs, c), expected, atol=1e-12)

    points = abc.sample(3, gen(1))
    # Rows flow independently, so the Jacobian of the summed flow holds every point's Jacobian.
    # RK4 keeps volume only to O(h^4): det - 1 measured 8e-15 at h = 1e-3 and 4e-11 at the
    # h = 1e-2 used here (5x cheaper to differentiate), both far inside the tolerance.
    jac = torch.autograd.functional.jacobian(
        lambda p: flow_map(abc, p, 0.5, max_step=1e-2).sum(dim=0), points, vectorize=True
    )
    dets = torch.linalg.det(jac.permute(1, 0, 2))  # (point, output, input)
    assert not torch.allclose(jac.permute(1, 0, 2), torch.eye(3, dtype=torch.float64).expand(3, 3, 3))
    assert (dets - 1.0).abs().max().item() < 1e-8


def test_cubic_stays_bounded_over_short_times():
    cubic = SYSTEMS["cubic"]
    x0 = cubic.sample(1000, gen())
    x = flow_map(cubic, x0, 0.05)
    assert torch.isfinite(x).all()
    assert x.abs().max().item() <= 1.2
    assert x.abs().max().item() > x0.abs().max().item()  # it does grow outward


def test_trajectory_matches_flow_map():
    skew = SYSTEMS["skew"]
    x0 = skew.sample(5, gen())
    traj = trajectory(skew, x0, 0.01, 5)
    assert traj.shape == (6, 5, 3)
    assert torch.equal(traj[0], x0)
    assert (traj[-1] - flow_map(skew, x0, 0.05)).abs().max().item() < 1e-12
    assert (traj[1] - flow_map(skew, x0, 0.01)).abs().max().item() < 1e-12


def test_step_count_ignores_rounding_of_t_over_max_step():
    # 0.07 / 0.01 = 7.000000000000001 in floating point; the flow must still take 7 steps.
    x0 = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    x = x0
    for _ in range(7):
        x = rk4_step(DECAY.rhs, x, 0.07 / 7)
    assert torch.allclose(flow_map(DECAY, x0, 0.07, max_step=0.01), x, rtol=0, atol=1e-15)


def test_function_target_values():
    x = torch.tensor([0.0, math.pi, -1.0], dtype=torch.float64)
    expected = torch.tensor([0.0, math.pi + math.pi**2, 2.0 - math.sin(1.0)], dtype=torch.float64)
    assert torch.allclose(function_target(x), expected, atol=1e-12)


def test_unknown_system_lists_valid_names():
    with pytest.raises(UsageError, match="abc, cubic, sir, skew"):
        SYSTEMS["lorenz"]


@pytest.mark.parametrize("name", ["sir", "skew", "abc", "cubic"])
def test_sampling_is_reproducible(name):
    system = SYSTEMS[name]
    a = system.sample(50, gen(7))
    assert a.shape == (50, system.dim) and a.dtype == torch.float64
    assert torch.equal(a, system.sample(50, gen(7)))
    assert not torch.allclose(a, system.sample(50, gen(8)))
