"""Exactly orthogonal linear operators (Cayley transforms) and a soft orthogonality penalty.

The contractive step x - tau A^T s(Ax + b) is non-expansive for every tau <= 2 / M when
A^T A = I, and its Lipschitz factor is then governed by the interval [m, M] of slopes alone.
A normalised operator (||A|| <= 1) only gives sigma_min(A) >= 0; an orthogonal one pins every
singular value at 1.

The Cayley transform maps a skew-symmetric S to the orthogonal (I + S)^{-1}(I - S). For a
circular convolution on the n1 x n2 torus, the 2-D DFT block-diagonalises the operator into
c x c matrices K^(w), one per frequency w; V(w) = K^(w) - K^(w)^H is the symbol of the skew
operator C - C^T, and the per-frequency Cayley transforms A(w) are unitary, so the operator
they define is orthogonal on real images (Trockman & Kolter 2021). Because the kernel is
real, A(-w) = conj(A(w)) and only the rfft2 half of the spectrum is needed. On the columns
rfft2 keeps in full (0, and n2 / 2 for even n2) irfft2 reads the product as Hermitian, i.e.
applies (A(w) + conj(A(-w))) / 2; the solve returns exactly conjugate matrices for conjugate
inputs on the CPU, and any asymmetry elsewhere is rounding-level, below the FFTs' own.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from dsnn_cli.devices import at_least_float32, full_precision
from dsnn_cli.models.norms import FLOAT64_SLACK

INIT_SCALE = 0.1


def _cayley(skew: torch.Tensor) -> torch.Tensor:
    """(I + S)^{-1}(I - S) over the leading batch dimensions. I + S is invertible for every skew
    S (its eigenvalues are 1 + i t), so the solve skips its error check, which on a GPU would
    wait for the device at every call."""
    eye = torch.eye(skew.shape[-1], dtype=skew.dtype, device=skew.device)
    return torch.linalg.solve_ex(eye + skew, eye - skew, check_errors=False).result


# Relative guard added to V^H V before the solve: the BRONet code's for the peer layer; a
# hundred times smaller in our contractive steps, whose factor pays 2 x guard in s_min. Either
# only shrinks the reflected directions' singular values: ||W|| <= 1 holds with or without it.
BRO_GUARD, ISOMETRY_GUARD = 1e-5, 1e-7


def block_reflector(v: torch.Tensor, guard: float = BRO_GUARD) -> torch.Tensor:
    """I - 2 V (V^H V + guard)^-1 V^H over the leading batch dimensions, V of shape (.., n, r):
    the reflection through the orthogonal complement of V's columns (Lai et al. 2025)."""
    gram = v.mH @ v
    guard = gram.diagonal(dim1=-2, dim2=-1).real.mean(dim=-1) * guard
    eye_r = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    gram = gram + guard[..., None, None] * eye_r
    eye_n = torch.eye(v.shape[-2], dtype=v.dtype, device=v.device)
    return eye_n - 2.0 * v @ torch.linalg.solve_ex(gram, v.mH, check_errors=False).result


def reflector_rank(dim: int, fraction: float = 0.5) -> int:
    """r = fraction x dim, in [1, dim - 1] (BRONet's default half)."""
    return max(1, min(dim - 1, round(fraction * dim))) if dim > 1 else 1


def _singular_values(matrices: torch.Tensor) -> tuple[float, float]:
    """Smallest and largest singular value over a batch of matrices, computed in float64."""
    wide = torch.complex128 if matrices.is_complex() else torch.float64
    values = torch.linalg.svdvals(matrices.detach().to(device="cpu", dtype=wide))
    return float(values.min()), float(values.max())


class CachedTransform(nn.Module, ABC):
    """Shared machinery: a fresh, differentiable transform in training, a cached one in eval.

    In eval mode the transform is computed without autograd and reused until the weight is
    modified in place (its `_version` changes) or replaced, so attacks that run many forwards
    do not re-solve; gradients with respect to the weight are therefore only tracked in
    training mode.
    """

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self._cache: tuple[tuple, torch.Tensor] | None = None

    @abstractmethod
    def transform(self, weight: torch.Tensor) -> torch.Tensor:
        """The orthogonal matrices (or per-frequency unitary matrices) built from `weight`."""

    @abstractmethod
    def apply_with(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """A x, with `weight` the output of `effective_weight()`."""

    @abstractmethod
    def adjoint_with(self, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """A^T y, with `weight` the output of `effective_weight()`."""

    def effective_weight(self) -> torch.Tensor:
        """The orthogonal transform of the current weight (compute once per network forward)."""
        if self.training:
            return self.transform(self.weight)
        w = self.weight
        key = (w._version, w.data_ptr(), w.dtype, w.device, torch.is_inference_mode_enabled())
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self.transform(w.detach()))
        return self._cache[1]

    def __getstate__(self) -> dict:
        """Copies and pickles leave the cache behind: it may hold a tensor of a finished
        torch.func transform (a Jacobian measured in eval mode), which cannot be copied."""
        state = self.__dict__.copy()
        state["_cache"] = None
        return state

    def calibrate(self) -> None:
        """No-op: the transform is orthogonal by construction, there is no sigma to refresh."""

    def singular_value_range(self) -> tuple[float, float]:
        """(smin, smax) of the matrices applied in eval mode, in float64: both 1 up to rounding.

        A certificate for x - tau A^T s(Ax + b) uses them as the spectrum bounds
        [m * smin^2, M * smax^2] of A^T D A.
        """
        with torch.no_grad():
            return _singular_values(self.transform(self.weight.detach()))

    def norm_bound(self) -> float:
        """Upper bound on ||A||: smax enlarged by the float64 SVD's relative slack."""
        return self.singular_value_range()[1] * (1.0 + FLOAT64_SLACK)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply_with(x, self.effective_weight())


class CayleyConvOperator(CachedTransform):
    """Orthogonal multi-channel circular convolution on images of a fixed size n1 x n2.

    The weight is an ordinary (c, c, k, k) kernel, read as a circular cross-correlation
    centred on tap (k // 2, k // 2) like `F.conv2d`; the operator applied is its Cayley
    transform, which is again a circular convolution (with a kernel of full support). Only the
    skew part C - C^T enters, so the kernel's symmetric part (w[o, i, a, b] + w[i, o, -a, -b])
    has zero gradient: about half of the c^2 k^2 parameters are inert.
    """

    def __init__(
        self, channels: int, input_size: tuple[int, int], kernel_size: int = 3, hidden: int | None = None
    ) -> None:
        hidden = channels if hidden is None else int(hidden)
        if hidden < channels:
            raise ValueError(f"an isometry needs hidden >= channels, got {hidden} < {channels}")
        n1, n2 = (int(n) for n in input_size)
        if min(n1, n2) < 1 or kernel_size < 1:
            raise ValueError(f"input_size and kernel_size must be positive, got {input_size}, {kernel_size}")
        if kernel_size > min(n1, n2):
            raise ValueError(
                f"kernel_size {kernel_size} does not fit the {n1}x{n2} torus "
                f"(need kernel_size <= {min(n1, n2)})"
            )
        weight = torch.empty(hidden, hidden, kernel_size, kernel_size)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        super().__init__(weight * INIT_SCALE)
        self.input_size = (n1, n2)
        self.channels = channels

    def symbol(self, weight: torch.Tensor) -> torch.Tensor:
        """K^(w) on the rfft2 half spectrum, shape (n1, n2 // 2 + 1, c, c), of the cross-correlation.

        Placing tap (i, j) at offset (i - k//2, j - k//2) and conjugating turns the DFT of the
        kernel (a convolution) into the symbol of `F.conv2d`'s cross-correlation.
        """
        n1, n2 = self.input_size
        k = weight.shape[-1]
        padded = F.pad(weight, (0, n2 - k, 0, n1 - k))
        padded = torch.roll(padded, shifts=(-(k // 2), -(k // 2)), dims=(-2, -1))
        return torch.fft.rfft2(padded).conj().permute(2, 3, 0, 1)

    def transform(self, weight: torch.Tensor) -> torch.Tensor:
        """Per-frequency A(w): the first `channels` columns of the unitary (I + V)^{-1}(I - V),
        V = K^ - K^^H, so A(w)^H A(w) = I (an isometry into `hidden` channels)."""
        k_hat = self.symbol(weight)
        return _cayley(k_hat - k_hat.mH)[..., : self.channels]

    def apply_with(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """A x for x of shape (B, c, n1, n2), with `weight` the matrices from `effective_weight()`."""
        return self.in_frequencies(x, weight)

    def adjoint_with(self, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """A^T y: the same diagonalisation with A(w)^H."""
        return self.in_frequencies(y, weight.mH)

    def in_frequencies(self, x: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
        """irfft2(M(w) rfft2(x)), in float32 at least and returned in x's dtype: FFTs take no
        bfloat16, and under autocast the products would come back in it."""
        with full_precision(x):
            spectrum = per_frequency(matrices, torch.fft.rfft2(at_least_float32(x)))
            return torch.fft.irfft2(spectrum, s=self.input_size).to(x.dtype)

    def extra_repr(self) -> str:
        hidden, _, k, _ = self.weight.shape
        return f"{self.channels}->{hidden}, kernel={k}, input={self.input_size}, cayley"


def per_frequency(matrices: torch.Tensor, spectrum: torch.Tensor) -> torch.Tensor:
    """Y(w) = M(w) X(w) for matrices (n1, m, o, i) and a spectrum (B, i, n1, m): (B, o, n1, m).

    Done as two contiguous real batched matmuls over the frequencies, M_re [X_re | X_im] and
    M_im [X_re | X_im]: complex matmuls and einsums (and their backward passes, which take
    conjugate views) made torch loop over the frequencies one by one on the CPU, up to 250x
    slower, and pathologically so when the cores are shared.
    """
    n1, m, o, i = matrices.shape
    batch = spectrum.shape[0]
    columns = spectrum.permute(2, 3, 1, 0).reshape(n1 * m, i, batch)
    stacked = torch.cat([columns.real, columns.imag], dim=2).contiguous()  # (n1 m, i, 2B)
    flat = matrices.reshape(n1 * m, o, i)
    re = torch.bmm(flat.real.contiguous(), stacked)
    im = torch.bmm(flat.imag.contiguous(), stacked)
    product = torch.complex(re[..., :batch] - im[..., batch:], re[..., batch:] + im[..., :batch])
    return product.reshape(n1, m, o, batch).permute(3, 2, 0, 1)


class CayleyDenseOperator(CachedTransform):
    """A dim -> hidden matrix with orthonormal columns: the first `dim` columns of the orthogonal
    Q = (I + S)^{-1}(I - S), S = W - W^T (hidden x hidden), acting on flat vectors.

    Q has no eigenvalue -1, so a square one reaches the rotations without that eigenvalue, not
    all of O(dim).
    """

    def __init__(self, dim: int, hidden: int | None = None) -> None:
        hidden = dim if hidden is None else int(hidden)
        if hidden < dim:
            raise ValueError(f"an isometry needs hidden >= dim, got {hidden} < {dim}")
        weight = torch.empty(hidden, hidden)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        super().__init__(weight * INIT_SCALE)
        self.dim = dim

    def transform(self, weight: torch.Tensor) -> torch.Tensor:
        """The (hidden, dim) isometry, orthonormal up to the rounding of one linear solve."""
        return _cayley(weight - weight.mT)[:, : self.dim]

    def apply_with(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x @ weight.mT

    def adjoint_with(self, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return y @ weight

    def extra_repr(self) -> str:
        return f"{self.dim}->{self.weight.shape[0]}, cayley"


class BlockReflectorDense(CayleyDenseOperator):
    """A dim -> hidden isometry: the first `dim` columns of the block reflector of a
    (hidden, r) matrix V. One r x r solve where a Cayley transform solves hidden x hidden."""

    def __init__(self, dim: int, hidden: int | None = None) -> None:
        hidden = dim if hidden is None else int(hidden)
        if hidden < dim:
            raise ValueError(f"an isometry needs hidden >= dim, got {hidden} < {dim}")
        weight = torch.empty(hidden, reflector_rank(hidden))
        nn.init.orthogonal_(weight)
        CachedTransform.__init__(self, weight)
        self.dim = dim

    def transform(self, weight: torch.Tensor) -> torch.Tensor:
        return block_reflector(weight, ISOMETRY_GUARD)[:, : self.dim]

    def extra_repr(self) -> str:
        hidden, rank = self.weight.shape
        return f"{self.dim}->{hidden}, rank={rank}, block reflector"


def shuffle_blocks(dim: int) -> tuple[int, int]:
    """(k, b) with k * b = dim, k <= b and k as large as possible: the block layout of a
    shuffled block-orthogonal matrix (k blocks of b, then b blocks of k)."""
    k = max(d for d in range(1, math.isqrt(dim) + 1) if dim % d == 0)
    return k, dim // k


class ShuffledBlockCayley(CayleyDenseOperator):
    """A square orthogonal dim x dim matrix Q = B2 P B1 (a "Monarch" factorisation).

    B1 is block-diagonal with k Cayley blocks of size b (dim = k b), P the perfect shuffle
    (the k x b grid read column by column), B2 block-diagonal with b Cayley blocks of size k.
    Every output depends on every input, and Q is orthogonal as a product of orthogonal
    factors, so the contractive step keeps its factor. Why: the transforms cost k b^3 + b k^3
    (2 * 32^4 for 1,024 features) where one dense Cayley solve costs dim^3, and Q is applied
    as its factors, n (k b^2 + b k^2) multiplications for n vectors where the dense matrix
    costs n dim^2 and forming it dim (k b^2 + b k^2): the contractive step's forward and backward
    run 4x faster on a CPU for 1,024 features at batch 128.
    """

    def __init__(self, dim: int, hidden: int | None = None) -> None:
        if hidden is not None and int(hidden) != dim:
            raise ValueError(f"a shuffled block-orthogonal matrix is square, got {dim} -> {hidden}")
        self.blocks = shuffle_blocks(dim)
        k, b = self.blocks
        weight = torch.empty(k * b * b + b * k * k)
        weight[: k * b * b].uniform_(-1 / math.sqrt(b), 1 / math.sqrt(b))
        weight[k * b * b :].uniform_(-1 / math.sqrt(k), 1 / math.sqrt(k))
        CachedTransform.__init__(self, weight * INIT_SCALE)
        self.dim = dim

    def factors(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The orthogonal blocks of B1 (k, b, b) and of B2 (b, k, k), from the raw weight."""
        first, second = self.unpack(weight)
        return _cayley(first - first.mT), _cayley(second - second.mT)

    def unpack(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The blocks (k, b, b) and (b, k, k) of a flat vector laid out as the weight."""
        k, b = self.blocks
        return flat[: k * b * b].view(k, b, b), flat[k * b * b :].view(b, k, k)

    def transform(self, weight: torch.Tensor) -> torch.Tensor:
        """The orthogonal blocks of B1 and B2, flat in the weight's layout: Q is applied as its
        factors (`apply_with`), never formed, except for its certificate (`matrix`)."""
        first, second = self.factors(weight)
        return torch.cat([first.reshape(-1), second.reshape(-1)])

    def apply_with(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Q x = B2 P B1 x over the last dimension of x."""
        first, second = self.unpack(weight)
        return self.blocks_shuffle_blocks(x, first, second, self.blocks)

    def adjoint_with(self, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Q^T y = B1^T P^T B2^T y: the same pattern with the transposed blocks, grid b x k."""
        first, second = self.unpack(weight)
        k, b = self.blocks
        return self.blocks_shuffle_blocks(y, second.mT, first.mT, (b, k))

    @staticmethod
    def blocks_shuffle_blocks(
        x: torch.Tensor, inner: torch.Tensor, outer: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """outer-blocks(P(inner-blocks(x))): x's last dimension read as a rows x cols grid, each
        row multiplied by its inner block, the grid transposed, each new row by its outer block."""
        lead = x.shape[:-1]
        mixed = torch.einsum("gij,...gj->...gi", inner, x.reshape(*lead, *grid)).transpose(-1, -2)
        return torch.einsum("gij,...gj->...gi", outer, mixed).reshape(*lead, grid[0] * grid[1])

    def matrix(self, packed: torch.Tensor | None = None) -> torch.Tensor:
        """Q as a dense (dim, dim) matrix: the factors (`packed`, by default those applied now)
        applied to the identity's columns. Only certificates and tests form it."""
        packed = self.effective_weight() if packed is None else packed
        eye = torch.eye(self.dim, dtype=packed.dtype, device=packed.device)
        return self.apply_with(eye, packed).mT

    def singular_value_range(self) -> tuple[float, float]:
        """(smin, smax) of Q, the product of the factors as they are applied (their float32
        entries), formed and decomposed in float64."""
        with torch.no_grad():
            packed = self.transform(self.weight.detach())
            return _singular_values(self.matrix(packed.to(device="cpu", dtype=torch.float64)))

    def extra_repr(self) -> str:
        k, b = self.blocks
        return f"{self.dim}->{self.dim}, shuffled blocks {k}x{b} then {b}x{k}, cayley"


class CayleyChannelOperator(CayleyDenseOperator):
    """The same isometry applied to the channels of every pixel: a 1x1 convolution c -> hidden.

    Why: on a CPU it costs two small matrix products per step where the Cayley convolution
    costs four FFTs, and with hidden > c the contractive step x - tau A^T s(Ax + b) becomes a
    per-pixel two-layer network whose factor is still max(|1 - m tau|, |1 - M tau|).
    """

    def apply_with(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight[:, :, None, None])

    def adjoint_with(self, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv2d(y, weight.mT[:, :, None, None])

    def extra_repr(self) -> str:
        return f"{self.dim}->{self.weight.shape[0]} channels, 1x1, cayley"


def orthogonality_penalty(weight: torch.Tensor) -> torch.Tensor:
    """Differentiable soft penalty, zero exactly when the weight is orthogonal.

    For a zero-padded convolution kernel (c_out, c_in, k1, k2) this is the "orthogonal CNN"
    row condition: the kernel correlated with itself (the c_out filters read as c_out images
    of c_in channels, padding k - 1) must be the identity at the centre tap and zero at every
    other shift. For a dense matrix (dim, dim) it is ||W^T W - I||_F^2.

    Args:
        weight: a 4-D convolution kernel or a 2-D matrix.

    Returns:
        The squared Frobenius norm of the deviation from orthogonality (a scalar tensor).
    """
    if weight.dim() == 2:
        gram = weight.mT @ weight
        target = torch.eye(gram.shape[0], dtype=weight.dtype, device=weight.device)
    elif weight.dim() == 4:
        k1, k2 = weight.shape[-2:]
        gram = F.conv2d(weight, weight, padding=(k1 - 1, k2 - 1))
        target = torch.zeros_like(gram)
        target[:, :, k1 - 1, k2 - 1] = torch.eye(gram.shape[0], dtype=weight.dtype, device=weight.device)
    else:
        raise ValueError(f"expected a 2-D matrix or a 4-D kernel, got shape {tuple(weight.shape)}")
    return (gram - target).pow(2).sum()


class BlockReflectorChannels(BlockReflectorDense, CayleyChannelOperator):
    """The block-reflector isometry applied to the channels of every pixel (a 1x1 convolution)."""

    def extra_repr(self) -> str:
        hidden, rank = self.weight.shape
        return f"{self.dim}->{hidden} channels, 1x1, rank={rank}, block reflector"
