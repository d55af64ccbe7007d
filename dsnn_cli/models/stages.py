"""What the image network puts between its dynamic layers: a stem, downsampling, a head.

Each piece declares its proven l2 Lipschitz factor (`lipschitz_factor(nominal)`), so the
network's bound is the product over its layers. The choices are registries, named by
`model.stem`, `model.downsample` and `model.head`:

* stems: ``pad`` appends zero channels (an isometry: nothing of the image is lost or
  scaled); ``conv`` lifts with a 3x3 convolution (norm <= 1 in certified families).
* downsampling: ``unshuffle`` keeps the first c_out / 4 channels (a projection, factor 1)
  and moves each 2x2 block of pixels into channels (a permutation, an isometry);
  ``unshuffle_project`` moves the 2x2 blocks into channels first (4c of them) and keeps a
  learned c_out-dimensional orthogonal projection Q^T of them (Q with orthonormal columns,
  by a Cayley transform: factor ||Q|| = 1 up to rounding), so no pixel is thrown away unseen;
  ``maxpool`` takes the 2x2 maximum (1-Lipschitz over disjoint windows) and lifts with a
  convolution when the width changes. Max-pooling keeps about half of a smooth signal's
  norm per level, so margins shrink against the same bound; the isometric path keeps it.
* heads: ``dense`` is a linear layer (norm <= 1 in certified families); ``rows`` has unit
  rows w_i. Either way a logit difference z_i - z_j is L ||w_i - w_j||-Lipschitz when the
  features are L-Lipschitz: certificates use that pairwise bound, which is never looser than
  sqrt(2) L ||W||.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dsnn_cli.errors import UsageError
from dsnn_cli.models.operators import ConvOperator, DenseOperator
from dsnn_cli.models.orthogonal import CayleyChannelOperator
from dsnn_cli.registry import Registry

STEMS: Registry[Callable[..., nn.Module]] = Registry("stem", key="model.stem")
DOWNSAMPLES: Registry[Callable[..., nn.Module]] = Registry("downsample", key="model.downsample")
HEADS: Registry[Callable[..., nn.Module]] = Registry("head", key="model.head")


class PadChannels(nn.Module):
    """Zero channels appended to the image: an isometry into the first stage's width."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        if c_out < c_in:
            raise UsageError(f"model.stem=pad needs model.widths[0] >= {c_in} (the image's channels)")
        self.extra = c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))

    def lipschitz_factor(self, nominal: bool = False) -> float:
        return 1.0


class Lift(nn.Module):
    """A convolution into the next width (norm <= 1 when constrained)."""

    def __init__(self, conv: ConvOperator) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def lipschitz_factor(self, nominal: bool = False) -> float:
        return 1.0 if nominal else self.conv.norm_bound()


class FirstChannelsUnshuffle(nn.Module):
    """Keep the first c_out / 4 channels, then move each 2x2 pixel block into channels."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        if c_out % 4 or c_out // 4 > c_in:
            raise UsageError(
                f"model.downsample=unshuffle maps {c_in} channels to {c_out}: the next width must be a "
                f"multiple of 4 and at most 4 x {c_in} (change model.widths)"
            )
        self.keep = c_out // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(x[:, : self.keep], 2)

    def lipschitz_factor(self, nominal: bool = False) -> float:
        return 1.0


class UnshuffleProject(nn.Module):
    """Move each 2x2 pixel block into channels (4 c_in), then project onto c_out learned
    orthonormal directions: a learned 2x2 stride-2 convolution with orthonormal rows."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        if c_out > 4 * c_in:
            raise UsageError(
                f"model.downsample=unshuffle_project maps {c_in} channels to {c_out}: the next width "
                f"must be at most 4 x {c_in} (change model.widths)"
            )
        self.basis = CayleyChannelOperator(c_out, 4 * c_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.basis.adjoint_with(F.pixel_unshuffle(x, 2), self.basis.effective_weight())

    def lipschitz_factor(self, nominal: bool = False) -> float:
        return 1.0 if nominal else self.basis.norm_bound()


class PoolThenLift(nn.Module):
    """2x2 max-pool, then a convolution when the width changes."""

    def __init__(self, lift: ConvOperator | None) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.lift = lift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        return x if self.lift is None else self.lift(x)

    def lipschitz_factor(self, nominal: bool = False) -> float:
        return 1.0 if nominal or self.lift is None else self.lift.norm_bound()


class DenseHead(nn.Module):
    """z = W x + b (||W|| <= 1 when constrained)."""

    def __init__(self, features: int, classes: int, constrained: bool) -> None:
        super().__init__()
        self.linear = DenseOperator(features, classes, constrained)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def rows(self) -> torch.Tensor:
        """The weight the head applies (as in eval mode once calibrated)."""
        return self.linear.effective_weight()


class RowsHead(nn.Module):
    """z_i = <w_i, x> + b_i with unit rows w_i = v_i / ||v_i||: every class is scored on the same
    scale, and ||w_i - w_j|| <= 2 is what a pairwise certificate pays for that pair."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, features) / features**0.5)
        self.bias = nn.Parameter(torch.zeros(classes))

    def rows(self) -> torch.Tensor:
        return F.normalize(self.weight, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.rows(), self.bias)


class FirstChannelsHead(nn.Module):
    """The first `classes` features as logits (Prach et al.'s head after a 1-Lipschitz layer):
    rows e_i, so each pair pays ||e_i - e_j|| = sqrt(2)."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        if classes > features:
            raise UsageError(f"model.head=first needs at least {classes} features, got {features}")
        self.classes = classes
        self.register_buffer("unit_rows", torch.eye(classes, features), persistent=False)

    def rows(self) -> torch.Tensor:
        return self.unit_rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : self.classes]


STEMS.add("pad", lambda c_in, c_out, size, kernel, constrained: PadChannels(c_in, c_out))
STEMS.add(
    "conv",
    lambda c_in, c_out, size, kernel, constrained: Lift(ConvOperator(c_in, c_out, size, kernel, constrained)),
)
DOWNSAMPLES.add(
    "unshuffle", lambda c_in, c_out, size, kernel, constrained: FirstChannelsUnshuffle(c_in, c_out)
)
DOWNSAMPLES.add(
    "unshuffle_project", lambda c_in, c_out, size, kernel, constrained: UnshuffleProject(c_in, c_out)
)
DOWNSAMPLES.add(
    "maxpool",
    lambda c_in, c_out, size, kernel, constrained: PoolThenLift(
        None
        if c_in == c_out
        else ConvOperator(c_in, c_out, (size[0] // 2, size[1] // 2), kernel, constrained)
    ),
)
HEADS.add("dense", DenseHead)
HEADS.add("rows", lambda features, classes, constrained: RowsHead(features, classes))
HEADS.add("first", lambda features, classes, constrained: FirstChannelsHead(features, classes))
