"""Lipschitz certificates and certified accuracy from logit differences.

If the features a classifier's linear head reads are L-Lipschitz in l2, each logit difference
z_i - z_j = <w_i - w_j, features> + b_i - b_j is L ||w_i - w_j||-Lipschitz. A correctly
classified point keeps its label for every ||delta|| <= eps when z_y - z_j > eps L ||w_y - w_j||
for every j != y: its certified radius is min_j (z_y - z_j) / (L ||w_y - w_j||). For a head
with ||W|| <= 1 this is never looser than the usual margin > sqrt(2) L eps, since
||w_i - w_j|| <= sqrt(2) ||W||.

The bound L is proven for the weights in float64 (each norm from a float64 SVD of the float32
weights the model applies); the deployed model runs in float32, where a quotient W / sigma or
an FFT moves an operator's norm by up to ~1e-7 relative (measured 2e-8 for calibrated dense
heads, 7e-8 for Cayley convolutions). So every certificate divides by L (1 + ROUNDING_SLACK):
a stated slack ten times the largest measured discrepancy, so a certified radius never sits
at the rounding edge. Margins come from a float64 copy of the model, with TF32 off.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from dsnn_cli.errors import UsageError
from dsnn_cli.models.inference import predict
from dsnn_cli.models.networks import image_size

# Relative slack on every certified Lipschitz constant (see the module docstring).
ROUNDING_SLACK = 1e-6


def lipschitz_bound(model: nn.Module) -> float | None:
    """Proven upper bound on the l2 Lipschitz constant from [0,1] pixels to the features the
    classifier's head reads (to the outputs, for regression networks).

    The bound describes the model in eval mode (the weights `calibrate()` fixed). Returns
    None for a model without a certificate, `resnet` included.
    """
    factors = lipschitz_factors(model)
    if factors is None:
        return None
    return math.prod(factor for _, factor in factors)


def lipschitz_factors(model: nn.Module) -> list[tuple[str, float]] | None:
    method = getattr(model, "lipschitz_factors", None)
    if method is None:
        return None
    with torch.no_grad():
        return method()


def logit_margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """z_y - max_{j != y} z_j: positive exactly where the prediction is correct."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.clone()
    others.scatter_(1, labels[:, None], -math.inf)
    return true - others.max(dim=1).values


@dataclass(frozen=True)
class PairwiseCertificate:
    """Proven bounds on the Lipschitz constants of all logit differences of a classifier."""

    bound: float  # L, of the features the head reads
    pairs: torch.Tensor  # (C, C) float64: L (1 + ROUNDING_SLACK) ||w_i - w_j||

    def radii(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Each point's certified radius: min over j != y of (z_y - z_j) / (L' ||w_y - w_j||),
        L' = L (1 + ROUNDING_SLACK);
        <= 0 where the point is misclassified (a pair with equal rows counts by its sign alone)."""
        logits = logits.to(torch.float64)
        differences = logits.gather(1, labels[:, None]) - logits  # (N, C): z_y - z_j
        scales = self.pairs.to(logits.device)[labels]  # (N, C): L ||w_y - w_j||
        ratios = torch.where(scales > 0, differences / scales.clamp_min(1e-300), differences * math.inf)
        ratios = torch.nan_to_num(ratios, nan=0.0)
        ratios.scatter_(1, labels[:, None], math.inf)
        return ratios.min(dim=1).values


def pairwise_certificate(model: nn.Module) -> PairwiseCertificate | None:
    """The certificate of a classifier from its feature bound and its head's rows (float64),
    or None without a bound (uncertified families) or without a linear head."""
    bound = lipschitz_bound(model)
    rows_of = getattr(model, "classifier_rows", None)
    if bound is None or rows_of is None:
        return None
    with torch.no_grad():
        rows = rows_of().detach().to(device="cpu", dtype=torch.float64)
    return PairwiseCertificate(bound, bound * (1.0 + ROUNDING_SLACK) * torch.cdist(rows, rows))


def certified_mask(radii: torch.Tensor, eps: float) -> torch.Tensor:
    """Points certified at eps: their radius exceeds it."""
    return radii > eps


def certified_accuracy(
    radii: torch.Tensor, eps_list, correct: torch.Tensor | None = None
) -> dict[str, float]:
    """{eps: fraction certified} for every eps.

    `correct` (the deployed model's own predictions) keeps certified <= clean accuracy even
    where float64 margins and float32 predictions disagree at a tie.
    """
    keep = torch.ones_like(radii, dtype=torch.bool) if correct is None else correct
    return {format_eps(eps): float((certified_mask(radii, eps) & keep).float().mean()) for eps in eps_list}


def float64_copy(model: nn.Module) -> nn.Module:
    """A float64 copy in eval mode: certified margins must not rest on float32 rounding."""
    return copy.deepcopy(model).double().eval()


def float64_logits(reference: nn.Module, inputs, device: torch.device | str = "cpu") -> torch.Tensor:
    """Logits of a float64 model over an iterable of input batches, on the CPU."""
    return predict(reference.to(device), inputs, device=device, dtype=torch.float64)


def format_eps(eps: float) -> str:
    return f"{eps:.6g}"


def parse_eps(value) -> list[float]:
    """eps from the command line: a number, 'a/b' (e.g. 8/255), or a list of them; all >= 0."""
    items = [value] if isinstance(value, (str, int, float)) or value is None else list(value)
    result = []
    for item in items:
        try:
            if isinstance(item, str) and "/" in item:
                num, den = item.split("/", 1)
                eps = float(num) / float(den)
            else:
                eps = float(item)
        except (TypeError, ValueError, ZeroDivisionError):
            raise UsageError(
                f"eps={item!r} is not a number (use e.g. eps=0.3, eps=8/255 or eps=[0.1,0.3])"
            ) from None
        if not math.isfinite(eps) or eps < 0:
            raise UsageError(f"eps={item} must be a finite number >= 0 (an l2 radius in [0,1] pixel units)")
        result.append(eps)
    if not result:
        raise UsageError("eps is empty; give at least one radius, e.g. eps=0.3")
    return result


def check_radii(eps_list: list[float], data_info: dict, key: str = "eps") -> None:
    """Refuse radii beyond the diameter of the [0, 1] pixel box: no perturbation is that large."""
    dim = int(data_info["in_channels"]) * math.prod(int(s) for s in image_size(data_info))
    diameter = math.sqrt(dim)
    too_large = [eps for eps in eps_list if eps > diameter]
    if too_large:
        raise UsageError(
            f"{key}={too_large[0]:g} exceeds the diameter of the [0, 1] pixel box ({diameter:.4g} for "
            f"{dim}-dimensional inputs): every perturbation is smaller; give radii <= {diameter:.4g}"
        )
