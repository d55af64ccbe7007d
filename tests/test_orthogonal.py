"""Cayley operators: exactly orthogonal as applied, genuine circular convolutions, cached in eval."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dsnn_cli.models.orthogonal import CayleyConvOperator, CayleyDenseOperator, orthogonality_penalty

SIZES = [(4, 4), (5, 3), (6, 5)]
CASES = [(size, c, k) for size in SIZES for c in (1, 2, 3, 4) for k in (1, 3)]


def make_conv(channels: int, size: tuple[int, int], k: int, dtype: torch.dtype, seed: int = 0):
    """An operator with an O(1) random kernel, so that the transform is far from the identity."""
    op = CayleyConvOperator(channels, size, k).to(dtype)
    with torch.no_grad():
        op.weight.copy_(torch.randn(op.weight.shape, generator=torch.Generator().manual_seed(seed)))
    return op


def dense_matrix(op: CayleyConvOperator, adjoint: bool = False) -> torch.Tensor:
    """The operator as applied, as a float64 matrix (columns = images of the unit vectors)."""
    c = op.weight.shape[0]
    n = c * op.input_size[0] * op.input_size[1]
    basis = torch.eye(n, dtype=op.weight.dtype).view(n, c, *op.input_size)
    with torch.no_grad():
        a = op.effective_weight()
        out = op.adjoint_with(basis, a) if adjoint else op.apply_with(basis, a)
    return out.reshape(n, n).t().double()


def orthogonality_error(matrix: torch.Tensor) -> float:
    eye = torch.eye(matrix.shape[1], dtype=matrix.dtype)
    return float((matrix.t() @ matrix - eye).abs().max())


@pytest.mark.parametrize("size,c,k", CASES)
def test_conv_is_orthogonal_as_applied(size, c, k):
    op = make_conv(c, size, k, torch.float64)
    dense = dense_matrix(op)
    assert orthogonality_error(dense) < 1e-10
    assert orthogonality_error(dense.t()) < 1e-10
    assert orthogonality_error(dense_matrix(make_conv(c, size, k, torch.float32))) < 1e-6
    # Not the identity (as it must be for one channel and k = 1, where the skew part is 0):
    # the test would not notice a transform that ignores the kernel.
    if c > 1 or k > 1:
        assert float((dense - torch.eye(dense.shape[0], dtype=torch.float64)).abs().max()) > 0.1


@pytest.mark.parametrize("size,c,k", CASES)
def test_conv_apply_and_adjoint_match_the_dense_matrix(size, c, k):
    op = make_conv(c, size, k, torch.float64, seed=1)
    a = op.effective_weight()
    dense = dense_matrix(op)
    x = torch.randn(3, c, *size, dtype=torch.float64)
    y = torch.randn(3, c, *size, dtype=torch.float64)
    ax = op.apply_with(x, a)
    aty = op.adjoint_with(y, a)
    assert not ax.is_complex() and ax.shape == x.shape
    assert torch.allclose(ax.reshape(3, -1), x.reshape(3, -1) @ dense.t(), atol=1e-10, rtol=0)
    assert torch.allclose(dense_matrix(op, adjoint=True), dense.t(), atol=1e-10, rtol=0)
    inner_left = (ax * y).sum(dim=(1, 2, 3))
    inner_right = (x * aty).sum(dim=(1, 2, 3))
    assert torch.allclose(inner_left, inner_right, atol=1e-10, rtol=0)


@pytest.mark.parametrize("size,c,k", [((5, 3), 2, 3), ((6, 5), 3, 3), ((4, 4), 4, 1)])
def test_conv_commutes_with_circular_shifts(size, c, k):
    op = make_conv(c, size, k, torch.float64, seed=2)
    x = torch.randn(2, c, *size, dtype=torch.float64)
    for shift in [(1, 0), (0, 1), (2, -1), (size[0] - 1, size[1] - 1)]:
        shifted_first = op(torch.roll(x, shift, dims=(-2, -1)))
        shifted_after = torch.roll(op(x), shift, dims=(-2, -1))
        assert torch.allclose(shifted_first, shifted_after, atol=1e-10, rtol=0)


def test_symbol_is_the_circular_cross_correlation_of_the_kernel():
    """The skew part is built from conv2d's own convention: K^ applied = circular conv2d."""
    op = make_conv(3, (6, 5), 3, torch.float64, seed=3)
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    k_hat = op.symbol(op.weight.detach())
    got = torch.fft.irfft2(torch.einsum("uvoi,biuv->bouv", k_hat, torch.fft.rfft2(x)), s=(6, 5))
    expected = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), op.weight.detach())
    assert torch.allclose(got, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("size,c,k", [((5, 3), 2, 3), ((6, 5), 3, 3), ((4, 4), 4, 1)])
def test_conv_is_the_cayley_transform_of_the_kernels_skew_part(size, c, k):
    """(I + S) A = I - S with S = C - C^T, C the circular conv2d built without any FFT."""
    op = make_conv(c, size, k, torch.float64, seed=5)
    n = c * size[0] * size[1]
    basis = torch.eye(n, dtype=torch.float64).view(n, c, *size)
    p = k // 2
    conv = F.conv2d(F.pad(basis, (p, p, p, p), mode="circular"), op.weight.detach()).reshape(n, n).t()
    skew = conv - conv.t()
    eye = torch.eye(n, dtype=torch.float64)
    assert torch.allclose((eye + skew) @ dense_matrix(op), eye - skew, atol=1e-10, rtol=0)


@pytest.mark.parametrize("size,c,k", [((4, 4), 3, 3), ((5, 3), 4, 3), ((6, 5), 2, 1)])
def test_singular_value_range_and_norm_bound(size, c, k):
    op = make_conv(c, size, k, torch.float64, seed=4)
    smin, smax = op.singular_value_range()
    assert abs(smin - 1.0) < 1e-10 and abs(smax - 1.0) < 1e-10
    exact = float(torch.linalg.matrix_norm(dense_matrix(op), ord=2))
    assert op.norm_bound() >= exact
    op32 = make_conv(c, size, k, torch.float32, seed=4)
    smin32, smax32 = op32.singular_value_range()
    assert smin32 <= smax32
    assert abs(smin32 - 1.0) < 1e-6 and abs(smax32 - 1.0) < 1e-6


def test_kernel_larger_than_the_torus_is_rejected():
    with pytest.raises(ValueError, match="kernel_size"):
        CayleyConvOperator(2, (4, 2), kernel_size=3)


def test_gradients_reach_the_weight_in_training_mode():
    op = make_conv(3, (5, 4), 3, torch.float64).train()
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    target = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    ((op(x) - target) ** 2).sum().backward()
    assert op.weight.grad is not None
    assert float(op.weight.grad.abs().max()) > 1e-6


def test_eval_cache_is_reused_and_invalidated_by_in_place_updates():
    op = make_conv(2, (4, 5), 3, torch.float64).eval()
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64)
    first = op.effective_weight()
    assert op.effective_weight() is first
    assert torch.equal(op(x), op(x))
    before = op(x)
    with torch.no_grad():
        op.weight.mul_(2.0)  # (a constant shift is symmetric, C - C^T would not see it)
    after_update = op.effective_weight()
    assert after_update is not first
    assert torch.equal(after_update, op.transform(op.weight.detach()))
    assert float((op(x) - before).abs().max()) > 1e-3
    assert orthogonality_error(dense_matrix(op)) < 1e-10


def test_dense_cayley_is_orthogonal():
    op = CayleyDenseOperator(7).double()
    with torch.no_grad():
        op.weight.normal_()
    q = op.effective_weight().detach()
    assert orthogonality_error(q) < 1e-12
    assert orthogonality_error(q.t()) < 1e-12
    assert float((q - torch.eye(7, dtype=torch.float64)).abs().max()) > 0.1
    x, y = torch.randn(4, 7, dtype=torch.float64), torch.randn(4, 7, dtype=torch.float64)
    assert torch.allclose(op(x), x @ q.t(), atol=1e-14, rtol=0)
    skew = op.weight.detach() - op.weight.detach().t()
    eye = torch.eye(7, dtype=torch.float64)
    assert torch.allclose((eye + skew) @ q, eye - skew, atol=1e-12, rtol=0)
    inner_left = (op.apply_with(x, q) * y).sum()
    inner_right = (x * op.adjoint_with(y, q)).sum()
    assert abs(float(inner_left - inner_right)) < 1e-12
    smin, smax = op.singular_value_range()
    assert abs(smin - 1.0) < 1e-12 and abs(smax - 1.0) < 1e-12
    assert op.norm_bound() >= float(torch.linalg.matrix_norm(q, ord=2))


def test_penalty_vanishes_exactly_on_orthogonal_kernels_and_matrices():
    c, k = 4, 3
    identity = torch.zeros(c, c, k, k, dtype=torch.float64)
    identity[range(c), range(c), k // 2, k // 2] = 1.0
    assert float(orthogonality_penalty(identity)) < 1e-12
    assert float(orthogonality_penalty(torch.randn(c, c, k, k, dtype=torch.float64))) > 1e-3
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    assert float(orthogonality_penalty(q)) < 1e-12
    assert float(orthogonality_penalty(torch.randn(6, 6, dtype=torch.float64))) > 1e-3
    # A scaled identity kernel is not orthogonal and is penalised.
    assert float(orthogonality_penalty(1.1 * identity)) == pytest.approx(c * (1.21 - 1) ** 2, rel=1e-9)


def test_penalty_is_differentiable():
    kernel = torch.randn(3, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    orthogonality_penalty(kernel).backward()
    assert float(kernel.grad.abs().max()) > 0


@pytest.mark.parametrize("hidden", [3, 6, 12])
def test_tall_isometries_have_orthonormal_columns(hidden):
    """A maps 3 channels into `hidden` ones with A^T A = I: per pixel (1x1), as a Cayley
    convolution, and on flat vectors; the contractive factor rests on exactly that."""
    from dsnn_cli.models.orthogonal import CayleyChannelOperator

    generator = torch.Generator().manual_seed(hidden)
    for op in (
        CayleyChannelOperator(3, hidden).double(),
        CayleyConvOperator(3, (4, 5), 3, hidden).double(),
        CayleyDenseOperator(3, hidden).double(),
    ):
        with torch.no_grad():
            op.weight.copy_(torch.randn(op.weight.shape, generator=generator, dtype=torch.float64))
        a = op.effective_weight()
        shape = (
            (2, 3, 4, 5)
            if not isinstance(op, CayleyDenseOperator) or isinstance(op, CayleyChannelOperator)
            else (2, 3)
        )
        x = torch.randn(shape, dtype=torch.float64, generator=generator)
        ax = op.apply_with(x, a)
        assert ax.shape[1] == hidden
        assert float(ax.flatten(1).norm(dim=1).sub(x.flatten(1).norm(dim=1)).abs().max()) < 1e-10  # isometry
        assert torch.allclose(op.adjoint_with(ax, a), x, atol=1e-10)  # A^T A = I
        y = torch.randn(ax.shape, dtype=torch.float64, generator=generator)
        assert float((ax * y).sum()) == pytest.approx(float((x * op.adjoint_with(y, a)).sum()), rel=1e-10)
        low, high = op.singular_value_range()
        assert abs(low - 1) < 1e-10 and abs(high - 1) < 1e-10
        if hidden > 3:  # and A A^T is not the identity: a genuinely tall map
            assert float((op.apply_with(op.adjoint_with(y, a), a) - y).abs().max()) > 0.1


@pytest.mark.parametrize("dim,blocks", [(16, (4, 4)), (12, (3, 4)), (7, (1, 7)), (1024, (32, 32))])
def test_shuffled_blocks_are_the_orthogonal_product_b2_p_b1(dim, blocks):
    """Q = B2 P B1 from block-diagonal Cayley factors and the perfect shuffle: orthogonal, and
    every output mixes every input (what a dense step needs), at a fraction of a full solve."""
    from dsnn_cli.models.orthogonal import ShuffledBlockCayley

    op = ShuffledBlockCayley(dim).double()
    assert op.blocks == blocks
    k, b = blocks
    with torch.no_grad():
        op.weight.normal_(generator=torch.Generator().manual_seed(dim))
    q = op.matrix().detach()
    first, second = (f.detach() for f in op.factors(op.weight))
    shuffle = torch.zeros(dim, dim, dtype=torch.float64)
    for i in range(k):
        for j in range(b):
            shuffle[j * k + i, i * b + j] = 1.0  # the k x b grid read column by column
    expected = torch.block_diag(*second) @ shuffle @ torch.block_diag(*first)
    assert torch.allclose(q, expected, atol=1e-12, rtol=0)
    assert orthogonality_error(q) < 1e-11 and orthogonality_error(q.t()) < 1e-11
    if k > 1:
        assert bool((q.abs() > 1e-12).all())  # full mixing
    packed = op.effective_weight().detach()  # the factors, applied without forming Q
    x, y = torch.randn(3, dim, dtype=torch.float64), torch.randn(3, dim, dtype=torch.float64)
    assert torch.allclose(op.apply_with(x, packed), x @ q.mT, atol=1e-12, rtol=0)
    assert torch.allclose(op.adjoint_with(y, packed), y @ q, atol=1e-12, rtol=0)
    assert torch.allclose(op.adjoint_with(op.apply_with(x, packed), packed), x, atol=1e-10)
    low, high = op.singular_value_range()
    assert abs(low - 1) < 1e-10 and abs(high - 1) < 1e-10


def test_shuffled_blocks_refuse_a_tall_map_and_train():
    from dsnn_cli.models.orthogonal import ShuffledBlockCayley

    with pytest.raises(ValueError, match="square"):
        ShuffledBlockCayley(16, 32)
    op = ShuffledBlockCayley(16).train()
    op(torch.randn(5, 16)).pow(3).sum().backward()
    k, b = op.blocks
    off_diagonal = ~torch.eye(b, dtype=torch.bool)  # the diagonal is inert: only S = W - W^T enters
    for grad in (op.weight.grad[: k * b * b].view(k, b, b), op.weight.grad[k * b * b :].view(b, k, k)):
        assert bool((grad[:, off_diagonal].abs() > 0).all())  # both factors learn
