"""The field's 1-Lipschitz layers (AOL, SLL, CPL, SOC, BRO, Cayley) and Prach et al.'s skeleton:
each layer's proven bound against the dense operator's singular values and measured
Jacobians, MaxMin's proof and its refusal where the proof needs more, and trained skeletons
whose certified points no attack breaks."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import measured_lipschitz, model_config
from test_certificates import attack_inside_certified_balls
from test_config import INFO

from dsnn_cli.devices import exact_float32
from dsnn_cli.errors import UsageError
from dsnn_cli.models.activations import build_activation
from dsnn_cli.models.networks import build_model, check_model_config
from dsnn_cli.models.operators import ConstrainedNorm
from dsnn_cli.models.peers import PEER_LAYERS, SOCConv, series_bound
from dsnn_cli.robustness.attacks import l2_norms
from dsnn_cli.robustness.certificates import lipschitz_bound

LAYERS = list(PEER_LAYERS)
# Linear layers whose operator is orthogonal up to rounding (BRO: on the complement of V's
# range; its guard only shrinks the reflected directions), so the bound must be tight.
TIGHT = {"soc", "bro", "cayley"}


def perturbed_layer(name: str, channels: int = 4, size: tuple[int, int] = (6, 6), kernel: int = 3):
    """A float64 layer in eval mode, its weights moved away from their (often identity) init."""
    layer = PEER_LAYERS[name](channels, size, kernel, False)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator))
    layer = layer.double().eval()
    for module in layer.modules():
        if isinstance(module, ConstrainedNorm):
            module.calibrate()
    return layer


def dense_jacobian(layer, x: torch.Tensor) -> torch.Tensor:
    d = x.numel()
    return torch.autograd.functional.jacobian(lambda v: layer(v.view_as(x)).flatten(), x.flatten()).view(d, d)


@pytest.mark.parametrize("name", LAYERS)
def test_each_layers_bound_dominates_its_dense_jacobian_and_is_at_most_one(name):
    layer = perturbed_layer(name)
    bound = layer.lipschitz_factor()
    assert bound <= 1.0 + 1e-8  # each layer is 1-Lipschitz by construction, up to float64 slack
    largest = 0.0
    for seed in range(3):
        x = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        largest = max(largest, float(torch.linalg.svdvals(dense_jacobian(layer, x)).max()))
    assert largest <= bound * (1 + 1e-12)
    if name in TIGHT:
        assert bound - largest < 1e-6


@pytest.mark.parametrize("name", LAYERS)
def test_each_layer_bounds_measured_difference_quotients_in_float32(name):
    layer = PEER_LAYERS[name](4, (6, 6), 3, False)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn(p.shape))
    layer.eval()
    x = torch.randn(8, 4, 6, 6)
    assert measured_lipschitz(layer, x) <= layer.lipschitz_factor() * (1 + 1e-5)


def test_soc_bound_is_the_truncated_series_not_the_nominal_one():
    """Scaled far past SOC's normalisation and cut after 3 terms, the series is no longer
    orthogonal: the bound grows with it and still dominates the dense operator."""
    layer = perturbed_layer("soc")
    assert isinstance(layer, SOCConv)
    layer.eval_terms = 3
    layer.sigma.fill_(0.05 * float(layer.sigma))  # L = 0.7 S / sigma: twenty times its intended size
    bound = layer.lipschitz_factor()
    assert layer.lipschitz_factor(nominal=True) == 1.0
    x = torch.zeros(1, 4, 6, 6, dtype=torch.float64)
    largest = float(torch.linalg.svdvals(dense_jacobian(layer, x)).max())
    assert largest > 1.5  # no longer orthogonal: the nominal 1 would be wrong
    assert largest <= bound


def test_series_bound_dominates_the_truncated_exponential_on_the_imaginary_axis():
    for terms in (1, 3, 6, 12):
        for rho in (0.1, 0.7, 1.0, 2.5):
            t = torch.linspace(-rho, rho, 2001, dtype=torch.float64)
            series = sum((1j * t) ** k / math.factorial(k) for k in range(terms + 1))
            assert float(series.abs().max()) <= series_bound(rho, terms)
    assert series_bound(0.7, 12) - 1.0 < 2e-9  # the tail (2e-12) and the float64 slack (1e-9)


def test_maxmin_sorts_pairs_keeps_the_norm_and_is_one_lipschitz():
    act = build_activation("maxmin")
    assert not act.elementwise and act.lipschitz == 1.0
    x = torch.tensor([[1.0, 3.0, -2.0, -5.0, 7.0]])
    assert act.module(x).tolist() == [[3.0, 1.0, -2.0, -5.0, 7.0]]  # an odd last channel is kept
    images = torch.randn(16, 6, 5, 5, dtype=torch.float64)
    out = act.module(images)
    torch.testing.assert_close(l2_norms(out), l2_norms(images), rtol=1e-12, atol=0)
    assert measured_lipschitz(act.module, images) <= 1.0 + 1e-9


@pytest.mark.parametrize("family", ["lipschitz", "nonexpansive", "lipschitz_flexible"])
def test_gradient_step_families_refuse_maxmin(family):
    with pytest.raises(UsageError, match="elementwise monotone"):
        check_model_config(model_config(family, activation={"name": "maxmin"}))


def test_convnet_xs_has_their_size_and_one_layer_kind_throughout():
    model = build_model(model_config("aol"), {**INFO, "image_size": 32})
    assert sum(p.numel() for p in model.parameters()) == 1_572_288  # their ConvNetXS: 1.57M
    assert len(model.lipschitz_factors()) == 1 + 1 + 5 * 5 + 1  # normalise, lift, 25 layers, last


@pytest.mark.parametrize("name", LAYERS)
def test_convnet_bound_dominates_measured_lipschitz(name):
    torch.manual_seed(0)
    model = build_model(model_config("convnet", layer=name, widths=[4, 8]), {**INFO, "image_size": 8})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape))
    model.eval()
    model.calibrate()
    x = torch.rand(4, 3, 8, 8)
    assert measured_lipschitz(model.features, x) <= lipschitz_bound(model) * (1 + 1e-5)


def test_convnet_refuses_images_its_bounds_do_not_cover():
    model = build_model(model_config("convnet", widths=[4, 8]), {**INFO, "image_size": 8}).eval()
    with pytest.raises(UsageError, match="built \\(and certified\\) for 8x8"):
        model(torch.rand(1, 3, 16, 16))
    with pytest.raises(UsageError, match="unknown layer 'lot'"):
        check_model_config(model_config("convnet", layer="lot"))


@pytest.fixture(scope="module", params=LAYERS)
def trained_convnet(request, tmp_path_factory):
    from conftest import TINY
    from helpers import compose_config

    from dsnn_cli.commands.train import run_train

    out = tmp_path_factory.mktemp("convnet") / request.param
    overrides = [
        *TINY,
        "experiment=prach_cifar10",
        "data=synthetic",
        f"model.layer={request.param}",
        "model.widths=[4,8]",
        "data.image_size=8",
        "trainer.max_epochs=6",
        "trainer.limit_batches=null",
        "trainer.batch_size=32",
        "loss.eps=0.05",
    ]
    run_train(compose_config("train", overrides), out)
    return out


def test_no_certified_point_of_a_trained_convnet_is_broken(trained_convnet):
    model, x, labels, _, certified, radii, adversarial = attack_inside_certified_balls(
        trained_convnet, 96, 5, steps=40
    )
    with exact_float32(), torch.no_grad():
        predicted = model(adversarial).argmax(1)
    distances = l2_norms(adversarial - x[certified])
    assert bool((distances <= radii * (1 + 1e-5) + 1e-6).all())  # float32 x + delta
    assert bool((predicted == labels[certified]).all())


def test_the_peers_pieces_in_our_steps_keep_their_bounds():
    """AOL's rescaling bounds an expansive W for every weight; a block reflector is an isometry."""
    from dsnn_cli.models.operators import AOLConvOperator
    from dsnn_cli.models.orthogonal import BlockReflectorDense

    op = AOLConvOperator(4, 4, (5, 5)).double()
    with torch.no_grad():
        op.weight.mul_(7.0)  # AOL's bound does not depend on the weight's scale
    dense = torch.autograd.functional.jacobian(
        lambda v: op(v.view(1, 4, 5, 5)).flatten(), torch.zeros(100, dtype=torch.float64)
    )
    assert float(torch.linalg.svdvals(dense).max()) <= op.norm_bound() <= 1.0 + 1e-8
    isometry = BlockReflectorDense(6, 12).double()
    q = isometry.effective_weight()
    torch.testing.assert_close(q.mT @ q, torch.eye(6, dtype=torch.float64), atol=1e-6, rtol=0)
    s_min, s_max = isometry.singular_value_range()
    assert s_min > 1 - 1e-6  # the 1e-7 guard shrinks the reflected directions by ~2e-7
    assert s_max < 1 + 1e-12


def test_bro_adjoint_is_exact():
    """<A x, y> = <x, A^T y> for the padded, per-frequency, cropped operator (float64)."""
    layer = perturbed_layer("bro")
    x, y = torch.randn(2, 4, 6, 6, dtype=torch.float64), torch.randn(2, 4, 6, 6, dtype=torch.float64)
    w = layer.effective_weight()
    forward = float((layer.apply_with(x, w) * y).sum())
    assert forward == pytest.approx(float((x * layer.adjoint_with(y, w)).sum()), rel=1e-12)


def test_block_reflectors_in_contractive_steps_are_per_pixel_only():
    with pytest.raises(UsageError, match="orthogonal_map=bro is a per-pixel block reflector"):
        check_model_config(model_config("lipschitz", orthogonal_map="bro", contractive_kernel=3))
