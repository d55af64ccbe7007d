"""Operator-norm bounds: never below the exact norm of the operator as applied, and tight."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import power_iteration

from dsnn_cli.models.norms import conv_norm_bound, matrix_norm_bound

# Observed ratio bound / exact on these small inputs is below 1.25 (the torus adds only
# boundary frequencies); the bound is stated to stay within this factor.
TIGHTNESS = 1.5


def dense_conv_matrix(kernel: torch.Tensor, size: tuple[int, int], padding: int) -> torch.Tensor:
    """The zero-padded convolution as a dense matrix (columns = images of the unit vectors)."""
    c_in = kernel.shape[1]
    n = c_in * size[0] * size[1]
    basis = torch.eye(n, dtype=torch.float64).view(n, c_in, *size)
    return F.conv2d(basis, kernel.double(), padding=padding).reshape(n, -1).t()


@pytest.mark.parametrize(
    "c_in,c_out,k,size",
    [(1, 1, 3, (5, 5)), (3, 4, 3, (4, 6)), (4, 4, 3, (6, 6)), (5, 2, 5, (7, 5)), (2, 6, 1, (3, 3))],
)
def test_conv_bound_is_above_and_close_to_exact_norm(c_in, c_out, k, size):
    for trial in range(3):
        kernel = torch.randn(c_out, c_in, k, k, generator=torch.Generator().manual_seed(trial))
        exact = float(torch.linalg.matrix_norm(dense_conv_matrix(kernel, size, k // 2), ord=2))
        bound = conv_norm_bound(kernel, size)
        assert bound >= exact * (1 - 1e-12)
        assert bound <= TIGHTNESS * exact


def test_conv_bound_exact_for_identity_and_scaled_kernels():
    kernel = torch.zeros(3, 3, 3, 3)
    kernel[range(3), range(3), 1, 1] = 2.5  # 2.5 * identity
    assert conv_norm_bound(kernel, (4, 4)) == pytest.approx(2.5, rel=1e-8)


def test_power_iteration_is_a_lower_bound():
    kernel = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    exact = float(torch.linalg.matrix_norm(dense_conv_matrix(kernel, (5, 5), 1), ord=2))
    estimate, _ = power_iteration(
        lambda x: F.conv2d(x, kernel, padding=1),
        lambda y: F.conv_transpose2d(y, kernel, padding=1),
        torch.randn(1, 3, 5, 5, dtype=torch.float64),
        iters=500,
    )
    assert estimate <= exact * (1 + 1e-9)
    assert estimate == pytest.approx(exact, rel=1e-3)


def test_matrix_bound():
    w = torch.randn(7, 5)
    exact = float(torch.linalg.svdvals(w.double())[0])
    assert exact <= matrix_norm_bound(w) <= exact * (1 + 1e-8)
