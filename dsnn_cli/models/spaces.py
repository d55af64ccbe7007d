"""State spaces of the dynamic layers: images (convolutions) or flat vectors (dense maps).

A vector field is written once against a space, which supplies its linear operators and
biases, so each family works on CIFAR feature maps and on low-dimensional ODE states alike.
Channels (images) and coordinates (vectors) both live on dimension 1.
"""

from __future__ import annotations

import torch
from torch import nn

from dsnn_cli.models.operators import AOLConvOperator, AOLDenseOperator, ConvOperator, DenseOperator

# The isometries a contractive step may use: Cayley transforms or block reflectors (BRO).
ORTHOGONAL_MAPS = ("cayley", "bro")


class ImageSpace:
    """Feature maps (B, C, H, W) of a fixed spatial size: zero-padded 'same' convolutions."""

    kind = "image"

    def __init__(self, size: tuple[int, int], kernel_size: int) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.kernel_size = int(kernel_size)

    def operator(self, c_in: int, c_out: int, constrained: bool = False) -> ConvOperator:
        return ConvOperator(c_in, c_out, self.size, self.kernel_size, constrained)

    def bounded(self, c_in: int, c_out: int, kind: str = "spectral") -> ConvOperator:
        """||A|| <= 1 by spectral normalisation or by AOL's rescaling."""
        if kind == "aol":
            return AOLConvOperator(c_in, c_out, self.size, self.kernel_size)
        return self.operator(c_in, c_out, constrained=True)

    def orthogonal(
        self, channels: int, hidden: int | None = None, kernel_size: int | None = None, kind: str = "cayley"
    ) -> nn.Module:
        """An isometry channels -> hidden: a Cayley convolution, or per pixel when kernel_size is 1
        (a Cayley transform or a block reflector)."""
        from dsnn_cli.models.orthogonal import (
            BlockReflectorChannels,
            CayleyChannelOperator,
            CayleyConvOperator,
        )

        kernel_size = self.kernel_size if kernel_size is None else int(kernel_size)
        if kernel_size == 1:
            return (BlockReflectorChannels if kind == "bro" else CayleyChannelOperator)(channels, hidden)
        if kind != "cayley":
            raise ValueError(
                f"a {kernel_size}x{kernel_size} orthogonal convolution is a Cayley one, got {kind}"
            )
        return CayleyConvOperator(channels, self.size, kernel_size, hidden)

    def bias(self, channels: int) -> nn.Parameter:
        return nn.Parameter(torch.zeros(1, channels, 1, 1))


# The isometries of a vector space: one Cayley solve of the full matrix, or the shuffled
# block factorisation (square only; far cheaper for the 1,024 features of a CIFAR dense pair).
VECTOR_ORTHOGONALS = ("cayley", "shuffled_blocks", "bro")


class VectorSpace:
    """Flat states (B, D): dense matrices."""

    kind = "vector"

    def __init__(self, orthogonal: str = "cayley") -> None:
        if orthogonal not in VECTOR_ORTHOGONALS:
            raise ValueError(f"orthogonal must be one of {', '.join(VECTOR_ORTHOGONALS)}, got {orthogonal}")
        self.orthogonal_kind = orthogonal

    def operator(self, c_in: int, c_out: int, constrained: bool = False) -> DenseOperator:
        return DenseOperator(c_in, c_out, constrained, bias=False)

    def bounded(self, c_in: int, c_out: int, kind: str = "spectral") -> DenseOperator:
        """||A|| <= 1 by spectral normalisation or by AOL's rescaling."""
        return (
            AOLDenseOperator(c_in, c_out) if kind == "aol" else self.operator(c_in, c_out, constrained=True)
        )

    def orthogonal(
        self, channels: int, hidden: int | None = None, kernel_size: int | None = None, kind: str = "cayley"
    ) -> nn.Module:
        """An isometry channels -> hidden (dense: there is no kernel). The space's own choice
        (`model.dense_orthogonal`) decides; `kind` is the per-pixel choice of image stages."""
        from dsnn_cli.models.orthogonal import BlockReflectorDense, CayleyDenseOperator, ShuffledBlockCayley

        if self.orthogonal_kind == "shuffled_blocks":
            return ShuffledBlockCayley(channels, hidden)
        if self.orthogonal_kind == "bro":
            return BlockReflectorDense(channels, hidden)
        return CayleyDenseOperator(channels, hidden)

    def bias(self, channels: int) -> nn.Parameter:
        return nn.Parameter(torch.zeros(1, channels))
