"""State spaces of the dynamic layers: images (convolutions) or flat vectors (dense maps).

A vector field is written once against a space, which supplies its linear operators and
biases, so each family works on CIFAR feature maps and on low-dimensional ODE states alike.
Channels (images) and coordinates (vectors) both live on dimension 1.
"""

from __future__ import annotations

import torch
from torch import nn

from dsnn_cli.models.operators import ConvOperator, DenseOperator


class ImageSpace:
    """Feature maps (B, C, H, W) of a fixed spatial size: zero-padded 'same' convolutions."""

    kind = "image"

    def __init__(self, size: tuple[int, int], kernel_size: int) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.kernel_size = int(kernel_size)

    def operator(self, c_in: int, c_out: int, constrained: bool = False) -> ConvOperator:
        return ConvOperator(c_in, c_out, self.size, self.kernel_size, constrained)

    def orthogonal(
        self, channels: int, hidden: int | None = None, kernel_size: int | None = None
    ) -> nn.Module:
        """An isometry channels -> hidden: a Cayley convolution, or per pixel when kernel_size is 1."""
        from dsnn_cli.models.orthogonal import CayleyChannelOperator, CayleyConvOperator

        kernel_size = self.kernel_size if kernel_size is None else int(kernel_size)
        if kernel_size == 1:
            return CayleyChannelOperator(channels, hidden)
        return CayleyConvOperator(channels, self.size, kernel_size, hidden)

    def bias(self, channels: int) -> nn.Parameter:
        return nn.Parameter(torch.zeros(1, channels, 1, 1))


# The isometries of a vector space: one Cayley solve of the full matrix, or the shuffled
# block factorisation (square only; far cheaper for the 1,024 features of a CIFAR dense pair).
VECTOR_ORTHOGONALS = ("cayley", "shuffled_blocks")


class VectorSpace:
    """Flat states (B, D): dense matrices."""

    kind = "vector"

    def __init__(self, orthogonal: str = "cayley") -> None:
        if orthogonal not in VECTOR_ORTHOGONALS:
            raise ValueError(f"orthogonal must be one of {', '.join(VECTOR_ORTHOGONALS)}, got {orthogonal}")
        self.orthogonal_kind = orthogonal

    def operator(self, c_in: int, c_out: int, constrained: bool = False) -> DenseOperator:
        return DenseOperator(c_in, c_out, constrained, bias=False)

    def orthogonal(
        self, channels: int, hidden: int | None = None, kernel_size: int | None = None
    ) -> nn.Module:
        """An isometry channels -> hidden (dense: there is no kernel)."""
        from dsnn_cli.models.orthogonal import CayleyDenseOperator, ShuffledBlockCayley

        if self.orthogonal_kind == "shuffled_blocks":
            return ShuffledBlockCayley(channels, hidden)
        return CayleyDenseOperator(channels, hidden)

    def bias(self, channels: int) -> nn.Parameter:
        return nn.Parameter(torch.zeros(1, channels))
