"""Linear operators A (convolutions and dense maps), free or constrained to ||A||_2 <= 1.

A constrained operator uses the weight W / max(1, sigma). While training, sigma is a
one-step-per-batch power iteration on the operator *as applied* (the convolution on its
actual input size, not the reshaped kernel), differentiable in W as in spectral
normalisation. A power iteration approaches ||W|| from below, so `calibrate()` (run before
every evaluation and checkpoint) replaces sigma with the proven upper bound from
`dsnn_cli.norms`, slightly enlarged so that float32 rounding of W / sigma cannot push the
norm above 1. Certificates never trust sigma: `norm_bound()` recomputes the proven bound of
the weight actually used in eval mode.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from dsnn_cli.devices import full_precision
from dsnn_cli.models.norms import conv_norm_bound, matrix_norm_bound

# Relative margin added to sigma at calibration: covers float32 rounding of W / sigma.
CALIBRATION_MARGIN = 1e-6
WARMUP_ITERATIONS = 30


class ConstrainedNorm(nn.Module, ABC):
    """Shared machinery: the weight, the power-iteration vector and sigma."""

    def __init__(self, weight: torch.Tensor, constrained: bool, vector_shape: tuple[int, ...]):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.constrained = constrained
        if constrained:
            self.register_buffer("u", torch.randn(vector_shape))
            self.register_buffer("sigma", torch.ones(()))
            with torch.no_grad():
                for _ in range(WARMUP_ITERATIONS):
                    self._power_step(self.weight)
            self.calibrate()

    @abstractmethod
    def apply_with(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The operator A for the given weight."""

    @abstractmethod
    def adjoint_with(self, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The adjoint A^T for the given weight."""

    @abstractmethod
    def exact_norm_bound(self, weight: torch.Tensor) -> float:
        """A proven upper bound on ||A|| for the given weight."""

    def effective_weight(self) -> torch.Tensor:
        """The weight the operator applies: W, or W / max(1, sigma) when constrained."""
        if not self.constrained:
            return self.weight
        sigma = self._power_step(self.weight) if self.training else self.sigma
        return self.weight / torch.clamp(sigma, min=1.0)

    def _power_step(self, weight: torch.Tensor) -> torch.Tensor:
        """One power-iteration step; returns sigma, differentiable in the weight (in float32
        under autocast: sigma scales every weight)."""
        with full_precision(weight):
            with torch.no_grad():
                w = weight.detach()
                v = self.apply_with(self.u, w)
                v = v / v.norm().clamp_min(1e-12)
                u = self.adjoint_with(v, w)
                self.u.copy_(u / u.norm().clamp_min(1e-12))
            # The graph keeps its own copy of u: a second power step in the same forward pass
            # (the head's rows read by the loss) updates self.u in place.
            sigma = (v * self.apply_with(self.u.clone(), weight)).sum()
        self.sigma.copy_(sigma.detach())
        return sigma

    @torch.no_grad()
    def calibrate(self) -> None:
        """Set sigma to a proven upper bound of ||W|| so that ||W / max(1, sigma)|| <= 1."""
        if self.constrained:
            bound = self.exact_norm_bound(self.weight) * (1.0 + CALIBRATION_MARGIN)
            self.sigma.fill_(bound)

    @torch.no_grad()
    def start_at_identity(self) -> None:
        """Initialise the weight to the identity map (a square operator), norm 1."""
        self.weight.zero_()
        eye = torch.eye(self.weight.shape[0], self.weight.shape[1])
        if self.weight.dim() == 4:
            k1, k2 = self.weight.shape[-2:]
            self.weight[:, :, k1 // 2, k2 // 2] = eye
        else:
            self.weight.copy_(eye)
        if self.constrained:
            for _ in range(WARMUP_ITERATIONS):
                self._power_step(self.weight)
            self.calibrate()

    def norm_bound(self) -> float:
        """Proven upper bound on the norm of the operator used in eval mode."""
        weight = self.weight
        if self.constrained:
            weight = weight / torch.clamp(self.sigma, min=1.0)
        return self.exact_norm_bound(weight)


class ConvOperator(ConstrainedNorm):
    """Stride-1 'same' convolution on inputs of a fixed spatial size, with its adjoint."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        input_size: tuple[int, int],
        kernel_size: int = 3,
        constrained: bool = False,
    ) -> None:
        if kernel_size % 2 != 1:
            raise ValueError("kernel_size must be odd for a 'same' convolution")
        weight = torch.empty(out_channels, in_channels, kernel_size, kernel_size)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        self.padding = kernel_size // 2
        self.input_size = tuple(input_size)
        super().__init__(weight, constrained, (1, in_channels, *input_size))

    def apply_with(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight, padding=self.padding)

    def adjoint_with(self, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(y, weight, padding=self.padding)

    def exact_norm_bound(self, weight: torch.Tensor) -> float:
        return conv_norm_bound(weight, self.input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply_with(x, self.effective_weight())

    def extra_repr(self) -> str:
        c_out, c_in, k, _ = self.weight.shape
        return f"{c_in}->{c_out}, kernel={k}, input={self.input_size}, constrained={self.constrained}"


def gram_row_sums(weight: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """sum_j |W^T W|_ij (q_j / q_i) over the input channels i of a matrix (out, in) or a kernel
    (out, in, k, k); for a zero-padded convolution W^T W is the kernel correlated with itself
    over all shifts, a (in, in, 2k - 1, 2k - 1) kernel. `weights` are SLL's q (None: all 1)."""
    if weight.dim() == 2:
        gram = (weight.mT @ weight).abs()
    else:
        k1, k2 = weight.shape[-2:]
        columns = weight.transpose(0, 1)  # (in, out, k, k): the column filters
        gram = F.conv2d(columns, columns, padding=(k1 - 1, k2 - 1)).abs().flatten(2)
    if weights is None:
        return gram.flatten(1).sum(dim=1)
    scaled = gram * weights.view(1, -1, *[1] * (gram.dim() - 2))
    return scaled.flatten(1).sum(dim=1) / weights


# Guard of the AOL and SLL rescalings against a zero column (as in both papers' code).
RESCALING_EPS = 1e-6


def aol_rescaled(weight: torch.Tensor) -> torch.Tensor:
    """W D with D = diag(sum_j |W^T W|_ij + eps)^(-1/2): ||W D|| <= 1 for every W (Prach &
    Lampert 2022, Theorem 1; for zero-padded convolutions, their Theorem 2)."""
    scale = (gram_row_sums(weight) + RESCALING_EPS).rsqrt()
    return weight * scale.view(1, -1, *[1] * (weight.dim() - 2))


class AOLRescaled:
    """Mixin: the operator applies AOL's rescaling of its weight (no power iteration, nothing to
    calibrate); its bound is the exact norm of the rescaled weight, computed in float64."""

    def effective_weight(self) -> torch.Tensor:
        with full_precision(self.weight):
            return aol_rescaled(self.weight)

    def norm_bound(self) -> float:
        return self.exact_norm_bound(aol_rescaled(self.weight.detach().to(torch.float64, copy=True).cpu()))


class DenseOperator(ConstrainedNorm):
    """x -> W x + b on flat vectors (the classification head)."""

    def __init__(self, in_features: int, out_features: int, constrained: bool = False, bias: bool = True):
        weight = torch.empty(out_features, in_features)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        super().__init__(weight, constrained, (1, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def apply_with(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x @ weight.t()

    def adjoint_with(self, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return y @ weight

    def exact_norm_bound(self, weight: torch.Tensor) -> float:
        return matrix_norm_bound(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.apply_with(x, self.effective_weight())
        return y if self.bias is None else y + self.bias.to(y.dtype)  # bf16 stays bf16 under autocast

    def extra_repr(self) -> str:
        out_f, in_f = self.weight.shape
        return f"{in_f}->{out_f}, constrained={self.constrained}"


class AOLConvOperator(AOLRescaled, ConvOperator):
    """A 'same' convolution with ||A|| <= 1 by AOL's rescaling."""

    def __init__(
        self, in_channels: int, out_channels: int, input_size: tuple[int, int], kernel_size: int = 3
    ):
        super().__init__(in_channels, out_channels, input_size, kernel_size, constrained=False)


class AOLDenseOperator(AOLRescaled, DenseOperator):
    """A matrix with ||A|| <= 1 by AOL's rescaling (no bias: the field has its own)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, constrained=False, bias=False)


# How a norm-bounded operator keeps ||A|| <= 1: spectral normalisation (a power iteration in
# training, the proven norm after calibration) or AOL's rescaling (proven for every weight).
BOUNDED_OPERATORS = ("spectral", "aol")
