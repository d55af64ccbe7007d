"""The field's 1-Lipschitz layers, each with a bound proven for the operator as computed.

Every layer maps c channels of an n1 x n2 feature map to c channels (stride 1, 'same' size)
and declares `lipschitz_factor(nominal)`: the paper's nominal constant (1) when `nominal`,
otherwise an upper bound computed in float64 from the weights actually applied in eval mode,
never the constant the paper promises in exact arithmetic:

* ``aol`` (Prach & Lampert 2022): W D with D = diag(sum_j |W^T W|_ij)^(-1/2); for a
  zero-padded convolution the Gram operator's rows are the absolute sums of the kernel
  correlated with itself. The bound is the exact norm of the rescaled convolution
  (`norms.conv_norm_bound`, a torus that contains the zero padding).
* ``sll`` (Araujo et al. 2023): x - 2 W T^-1 s(W^T x + b), s = ReLU,
  T = diag(sum_j |W^T W|_ij q_j / q_i). With A = T^(-1/2) W^T it is the gradient step
  x - 2 A^T D A x of a convex potential, D in [0, 1], so its factor is max(1, 2 ||A||^2 - 1):
  1 whenever ||A|| <= 1, which the rescaling gives; the bound uses ||A|| computed in float64.
* ``cpl`` (Meunier et al. 2022): the same step with W / ||W|| (power iteration in training,
  the proven norm after calibration): `Step(GradientField(.., "spectral"), euler, h=2)`.
* ``soc`` (Singla & Feizi 2021): exp(L) x by its Taylor series truncated after `terms`
  terms, L the zero-padded convolution with a skew kernel (L^T = -L exactly), scaled by a
  power-iteration estimate of its norm. L is normal with spectrum in i[-rho, rho], rho a
  proven bound on ||L||, so ||p(L)|| = max |p(i t)| <= 1 + sum_{k > terms} rho^k / k!:
  the truncated series is orthogonal only up to that tail, and the bound says so.
* ``bro`` (Lai et al. 2025, BRONet): the block reflector W = I - 2 V (V^H V + eps I)^-1 V^H
  of a rank-r kernel V, per frequency of the zero-padded input's torus; eps (1e-5 of the
  mean diagonal, the paper's guard) only shrinks eigenvalues on V's range, so ||W|| <= 1.
  The bound is the largest singular value over all frequencies, in float64.
* ``cayley`` (Trockman & Kolter 2021): `orthogonal.CayleyConvOperator`, a circular
  convolution on the n1 x n2 torus; bound: its per-frequency singular values.

Each layer's bias comes after its linear part and changes no bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dsnn_cli.devices import at_least_float32, full_precision
from dsnn_cli.models.activations import Activation, build_activation
from dsnn_cli.models.fields import GradientField, biased
from dsnn_cli.models.integrators import INTEGRATORS
from dsnn_cli.models.layers import Step
from dsnn_cli.models.norms import FLOAT64_SLACK, conv_norm_bound
from dsnn_cli.models.operators import RESCALING_EPS, AOLConvOperator, gram_row_sums
from dsnn_cli.models.orthogonal import (
    CachedTransform,
    CayleyConvOperator,
    block_reflector,
    per_frequency,
    reflector_rank,
)
from dsnn_cli.models.spaces import ImageSpace
from dsnn_cli.registry import Registry

# SOC: series terms in training and in evaluation (the SOC paper's and Prach et al.'s choice),
# and the fraction of the estimated norm L is scaled to.
SOC_TRAIN_TERMS, SOC_EVAL_TERMS, SOC_CORRECTION = 6, 12, 0.7


def float64_weight(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().to(dtype=torch.float64, device="cpu")


class AOLConv(nn.Module):
    """x -> conv(x, K D) + b with AOL's rescaling D (`operators.AOLConvOperator`):
    ||conv(., K D)|| <= 1 for every K."""

    def __init__(self, channels: int, size: tuple[int, int], kernel_size: int, init: str = "dirac") -> None:
        super().__init__()
        self.conv = AOLConvOperator(channels, channels, size, kernel_size)
        with torch.no_grad():
            (nn.init.dirac_ if init == "dirac" else nn.init.orthogonal_)(self.conv.weight)
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return biased(self.conv(x), self.bias)

    def lipschitz_factor(self, nominal: bool = False) -> float:
        return 1.0 if nominal else self.conv.norm_bound()


class SLLConv(nn.Module):
    """x - 2 K^T T^-1 relu(K x + b): SLL's residual gradient step with its cheap rescaling T."""

    def __init__(self, channels: int, size: tuple[int, int], kernel_size: int) -> None:
        super().__init__()
        weight = torch.empty(channels, channels, kernel_size, kernel_size)
        nn.init.xavier_normal_(weight)
        self.weight = nn.Parameter(weight)
        bound = 1.0 / math.sqrt(channels * kernel_size * kernel_size)
        self.bias = nn.Parameter(torch.empty(1, channels, 1, 1).uniform_(-bound, bound))
        self.q = nn.Parameter(torch.randn(channels))
        self.size, self.padding = tuple(size), kernel_size // 2

    def inverse_rescaling(self, weight: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """1 / T per hidden channel (the rows of K are SLL's W^T)."""
        q = q.abs() + RESCALING_EPS
        return 1.0 / (gram_row_sums(weight.transpose(0, 1), q) + RESCALING_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with full_precision(x):
            scale = 2.0 * self.inverse_rescaling(self.weight, self.q)
        kernel = self.weight.to(x.dtype)
        hidden = F.relu(biased(F.conv2d(x, kernel, padding=self.padding), self.bias))
        hidden = hidden * scale.to(x.dtype)[None, :, None, None]
        return x - F.conv_transpose2d(hidden, kernel, padding=self.padding)

    def lipschitz_factor(self, nominal: bool = False) -> float:
        if nominal:
            return 1.0
        weight = float64_weight(self.weight)
        root = self.inverse_rescaling(weight, float64_weight(self.q)).sqrt()
        norm = conv_norm_bound(weight * root[:, None, None, None], self.size)  # ||T^(-1/2) K||
        return max(1.0, 2.0 * norm * norm - 1.0) * (1.0 + FLOAT64_SLACK)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]} channels, kernel={self.weight.shape[-1]}, input={self.size}, sll"


def series_bound(rho: float, terms: int) -> float:
    """Proven bound on max_{|t| <= rho} |sum_{k <= terms} (i t)^k / k!|: |e^{it}| = 1 plus the
    tail sum_{k > terms} rho^k / k!, summed term by term (positive terms, no cancellation)
    until the terms shrink by half or more each, then bounded by twice the last one; enlarged
    by FLOAT64_SLACK for the rounding of the series as the float64 copy evaluates it."""
    term = 1.0
    for k in range(1, terms + 1):
        term *= rho / k
    tail, k = 0.0, terms
    while True:
        k += 1
        term *= rho / k
        tail += term
        if rho / (k + 1) <= 0.5 and term <= 1e-20 * tail:
            return (1.0 + (tail + 2.0 * term) * (1.0 + 1e-12)) * (1.0 + FLOAT64_SLACK)


class SOCConv(nn.Module):
    """exp(L) x + b by a truncated Taylor series, L the zero-padded skew convolution."""

    def __init__(self, channels: int, size: tuple[int, int], kernel_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, channels, kernel_size, kernel_size) / channels**0.5)
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.size, self.padding = tuple(size), kernel_size // 2
        self.train_terms, self.eval_terms = SOC_TRAIN_TERMS, SOC_EVAL_TERMS
        self.register_buffer("u", torch.randn(1, channels, *self.size))
        self.register_buffer("sigma", torch.ones(()))
        with torch.no_grad():
            for _ in range(30):
                self.power_step(self.skew(self.weight))

    def skew(self, weight: torch.Tensor) -> torch.Tensor:
        """The kernel of (C - C^T) / 2: C^T is the convolution with the flipped transpose."""
        return 0.5 * (weight - weight.transpose(0, 1).flip(2, 3))

    def power_step(self, skew: torch.Tensor) -> None:
        """One power-iteration step on L^T L = -L^2 (in training): the norm estimate sigma."""
        with torch.no_grad():
            v = F.conv2d(self.u, skew, padding=self.padding)
            sigma = v.norm()
            u = -F.conv2d(v, skew, padding=self.padding)
            self.u.copy_(u / u.norm().clamp_min(1e-12))
            self.sigma.copy_(sigma.clamp_min(1e-12))

    def generator(self, weight: torch.Tensor) -> torch.Tensor:
        """The skew kernel scaled to SOC_CORRECTION times its estimated norm."""
        return SOC_CORRECTION * self.skew(weight) / self.sigma

    def terms(self) -> int:
        return self.train_terms if self.training else self.eval_terms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with full_precision(x):
            if self.training:
                self.power_step(self.skew(self.weight.detach()))
            kernel = self.generator(self.weight)
            term = at_least_float32(x)
            total = term
            for k in range(1, self.terms() + 1):
                term = F.conv2d(term, kernel.to(term.dtype), padding=self.padding) / k
                total = total + term
        return biased(total.to(x.dtype), self.bias)

    def lipschitz_factor(self, nominal: bool = False) -> float:
        if nominal:
            return 1.0
        generator = SOC_CORRECTION * self.skew(float64_weight(self.weight)) / float(self.sigma)
        return series_bound(conv_norm_bound(generator, self.size), self.eval_terms)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]} channels, kernel={self.weight.shape[-1]}, input={self.size}, soc"


class BROConv(CachedTransform):
    """Block reflector I - 2 V (V^H V)^-1 V^H per frequency, on the zero-padded input's torus."""

    def __init__(self, channels: int, size: tuple[int, int], kernel_size: int, rank: float = 0.5) -> None:
        r = reflector_rank(channels, rank)
        weight = torch.zeros(channels, r, kernel_size, kernel_size)
        weight[torch.arange(r), torch.arange(r), kernel_size // 2, kernel_size // 2] = 1.0  # identity init
        super().__init__(weight)
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.size, self.pad = tuple(size), kernel_size // 2
        self.torus = (self.size[0] + 2 * self.pad, self.size[1] + 2 * self.pad)

    def transform(self, weight: torch.Tensor) -> torch.Tensor:
        """(N1, N2 // 2 + 1, c, c) reflectors; a phase of V(w) cancels, so taps need no centring."""
        with full_precision(weight):
            return block_reflector(
                torch.fft.rfft2(at_least_float32(weight), s=self.torus).permute(2, 3, 0, 1)
            )

    def apply_with(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self.in_frequencies(x, weight)

    def adjoint_with(self, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """A^T = crop^T C^T pad^T with crop^T = pad (zero filling): the same path with W(w)^H."""
        return self.in_frequencies(y, weight.mH)

    def in_frequencies(self, x: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
        """Zero-pad to the torus, apply M(w) per frequency, read the n1 x n2 window back."""
        with full_precision(x):
            padded = F.pad(at_least_float32(x), (self.pad,) * 4)
            out = torch.fft.irfft2(per_frequency(matrices, torch.fft.rfft2(padded)), s=self.torus)
            n1, n2 = self.size
            return out[..., self.pad : self.pad + n1, self.pad : self.pad + n2].to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return biased(self.apply_with(x, self.effective_weight()), self.bias)

    def lipschitz_factor(self, nominal: bool = False) -> float:
        return 1.0 if nominal else self.norm_bound()

    def extra_repr(self) -> str:
        c, r, k, _ = self.weight.shape
        return f"{c} channels, rank={r}, kernel={k}, input={self.size}, bro"


class CayleyConv(nn.Module):
    """Trockman & Kolter's orthogonal circular convolution, then a bias."""

    def __init__(self, channels: int, size: tuple[int, int], kernel_size: int) -> None:
        super().__init__()
        self.conv = CayleyConvOperator(channels, size, kernel_size)
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return biased(self.conv(x), self.bias)

    def lipschitz_factor(self, nominal: bool = False) -> float:
        return 1.0 if nominal else self.conv.norm_bound()


def cpl_layer(channels: int, size: tuple[int, int], kernel_size: int) -> Step:
    """x - 2 / ||W||^2 W relu(W^T x + b): our gradient step with a spectral A and h = 2."""
    field = GradientField(ImageSpace(size, kernel_size), channels, build_activation("relu"), "spectral")
    return Step(field, INTEGRATORS["euler"], 2.0, [1.0])


# layer name -> make(channels, size, kernel_size, first: bool): `first` marks the 1x1 lift and
# the head, which AOL initialises orthogonally (Prach et al.) rather than as the identity.
PEER_LAYERS: Registry[Callable[..., nn.Module]] = Registry("layer", key="model.layer")
PEER_LAYERS.add("aol", lambda c, size, k, first: AOLConv(c, size, k, "orthogonal" if first else "dirac"))
PEER_LAYERS.add("sll", lambda c, size, k, first: SLLConv(c, size, k))
PEER_LAYERS.add("cpl", lambda c, size, k, first: cpl_layer(c, size, k))
PEER_LAYERS.add("soc", lambda c, size, k, first: SOCConv(c, size, k))
PEER_LAYERS.add("bro", lambda c, size, k, first: BROConv(c, size, k))
PEER_LAYERS.add("cayley", lambda c, size, k, first: CayleyConv(c, size, k))


class LayerThenActivation(nn.Module):
    """One layer of the skeleton: a 1-Lipschitz layer, then the activation (if any)."""

    def __init__(self, layer: nn.Module, activation: Activation | None) -> None:
        super().__init__()
        self.layer = layer
        self.act = activation.module if activation is not None else nn.Identity()
        self.act_factor = activation.lipschitz if activation is not None else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.layer(x))

    def lipschitz_factor(self, nominal: bool = False) -> float:
        return self.layer.lipschitz_factor(nominal) * self.act_factor
