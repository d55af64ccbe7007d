"""Guaranteed upper bounds on l2 operator norms, and power-iteration lower bounds.

A converged power iteration approaches a norm from *below*, so it can never back a
certificate on its own. The bounds used for certificates here are exact computations in
float64 (up to a relative slack of `FLOAT64_SLACK` that covers the SVD's rounding error):

* a dense matrix: its largest singular value;
* a stride-1 zero-padded convolution on an n1 x n2 input: the exact norm of the circular
  convolution with the same kernel on the (n1 + k1 - 1) x (n2 + k2 - 1) torus, which is the
  largest singular value of the kernel's symbol over the torus's DFT frequencies.

Why the convolution bound holds: embed the input into the torus by zero-filling (an
isometry E) and read the output window back (a coordinate restriction R, norm <= 1). On a
torus of side N >= n + k - 1 no kernel tap wraps an output pixel onto a pixel of the input,
so conv_zero = R o C_N o E and ||conv_zero|| <= ||C_N||. The 2-D DFT block-diagonalises C_N
into the c_out x c_in matrices K^(w) for the N1*N2 frequencies w, so ||C_N|| = max_w ||K^(w)||_2.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

FLOAT64_SLACK = 1e-9


def torus_size(input_size: Sequence[int], kernel_size: Sequence[int]) -> tuple[int, int]:
    """Side lengths of a torus on which the circular convolution contains the zero-padded one."""
    return tuple(int(n) + int(k) - 1 for n, k in zip(input_size, kernel_size, strict=True))


def conv_symbol_norms(kernel: torch.Tensor, input_size: Sequence[int]) -> torch.Tensor:
    """Largest singular value of the kernel's symbol at every frequency of the torus (float64)."""
    kernel = kernel.detach().to(dtype=torch.float64, device="cpu")
    size = torus_size(input_size, kernel.shape[-2:])
    symbol = torch.fft.fft2(kernel, s=size)  # (c_out, c_in, N1, N2)
    symbol = symbol.permute(2, 3, 0, 1)  # (N1, N2, c_out, c_in)
    return torch.linalg.matrix_norm(symbol, ord=2)


def conv_norm_bound(kernel: torch.Tensor, input_size: Sequence[int]) -> float:
    """Proven upper bound on ||conv2d(., kernel, stride 1, zero padding <= k-1)||_2.

    Args:
        kernel: (c_out, c_in, k1, k2) weights, any dtype or device.
        input_size: spatial size (n1, n2) of the inputs the convolution is applied to.
    """
    return float(conv_symbol_norms(kernel, input_size).max()) * (1.0 + FLOAT64_SLACK)


def matrix_norm_bound(weight: torch.Tensor) -> float:
    """Proven upper bound on the spectral norm of a dense matrix (float64 SVD)."""
    weight = weight.detach().to(dtype=torch.float64, device="cpu")
    return float(torch.linalg.matrix_norm(weight, ord=2)) * (1.0 + FLOAT64_SLACK)
