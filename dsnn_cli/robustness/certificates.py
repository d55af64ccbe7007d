"""Lipschitz certificates and certified accuracy, for the float32 model as it runs.

If the features a classifier's linear head reads are L-Lipschitz in l2, each logit difference
z_i - z_j = <w_i - w_j, features> + b_i - b_j is L ||w_i - w_j||-Lipschitz. A correctly
classified point keeps its label for every ||delta|| <= eps when z_y - z_j > eps L ||w_y - w_j||
for every j != y. For a head with ||W|| <= 1 this is never looser than the usual margin
> sqrt(2) L eps, since ||w_i - w_j|| <= sqrt(2) ||W||.

The proof is made for a float64 copy of the model (`float64_copy`): L is its bound (each
factor a float64 SVD or Cayley transform of that copy, with `norms.FLOAT64_SLACK`), the rows
w_i are its head's rows and the margins its logits. The model a user deploys runs in float32,
whose logits differ from the copy's (measured 1e-7 to 6e-6 on trained CIFAR models: Cayley
factors orthogonal only to ~1e-6 in float32, FFTs, sums of thousands of terms). The rule
therefore carries an absolute slack: with delta a bound on |z32_j(x') - z64_j(x')| for every
logit and every x' near the data,

    radius(x) = min_j (z64_y - z64_j - 2 delta) / (L ||w_y - w_j||),   z32 predicting y at x,

and the float32 margin at any x' within the radius stays >= z64 margin(x') - 2 delta > 0.

delta is a stated bound, not a proof: LOGIT_ERROR_SAFETY (10) times the largest deviation
|z32 - z64| measured over the points it may certify (those the float32 model classifies
correctly) on the device that certifies, and
never below LOGIT_ERROR_FLOOR relative to the largest logit. Tests check it against the
deviations at points the attacks reach inside the certified balls of trained models, where no
float32 attack may break a certified point; a float32 break of a certified point is an error.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from dsnn_cli.devices import exact_float32
from dsnn_cli.errors import UsageError
from dsnn_cli.models.inference import predict
from dsnn_cli.models.networks import image_size

# delta = LOGIT_ERROR_SAFETY x (largest measured |z32 - z64|), at least LOGIT_ERROR_FLOOR x
# (1 + largest |z64|): a safety factor ten for points not measured (the attacks' points in the
# balls are measured in tests), a floor of ~8 float32 ulps of the logits for tiny samples.
LOGIT_ERROR_SAFETY = 10.0
LOGIT_ERROR_FLOOR = 2.0**-20


def lipschitz_bound(model: nn.Module) -> float | None:
    """Proven upper bound on the l2 Lipschitz constant from [0,1] pixels to the features the
    classifier's head reads (to the outputs, for regression networks), or None for a model
    without a certificate (`resnet` included).

    The bound is the float64 copy's (`float64_copy`), the model every certificate is proven
    for, in eval mode (the weights `calibrate()` fixed): the float32 model's Cayley factors are
    orthogonal only to ~1e-6, and the certificates carry its deviation as a logit slack.
    """
    wide = model if is_float64(model) else float64_copy(model)
    factors = lipschitz_factors(wide)
    if factors is None:
        return None
    return math.prod(factor for _, factor in factors)


def is_float64(model: nn.Module) -> bool:
    parameters = list(model.parameters())
    return bool(parameters) and all(p.dtype == torch.float64 for p in parameters)


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
    """The rule: proven bounds on the Lipschitz constants of all logit differences of the float64
    copy, and the absolute slack that carries them over to the float32 model."""

    bound: float  # L, of the features the float64 copy's head reads
    pairs: torch.Tensor  # (C, C) float64: L ||w_i - w_j||, rows of the float64 copy
    logit_error: float = 0.0  # delta: stated bound on |z32 - z64| for every logit

    def radii(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Each point's certified radius from float64 logits: min over j != y of
        (z_y - z_j - 2 delta) / (L ||w_y - w_j||); <= 0 where the margin does not exceed the
        slack (a pair with equal rows counts by the sign of z_y - z_j - 2 delta alone)."""
        logits = logits.to(torch.float64)
        differences = logits.gather(1, labels[:, None]) - logits - 2.0 * self.logit_error  # (N, C)
        scales = self.pairs.to(logits.device)[labels]  # (N, C): L ||w_y - w_j||
        ratios = torch.where(scales > 0, differences / scales.clamp_min(1e-300), differences * math.inf)
        ratios = torch.nan_to_num(ratios, nan=0.0)
        ratios.scatter_(1, labels[:, None], math.inf)
        return ratios.min(dim=1).values


def pairwise_certificate(model: nn.Module, logit_error: float = 0.0) -> PairwiseCertificate | None:
    """The rule of a classifier from its bound and its head's rows, both read from `model`
    itself (give the float64 copy), or None without a bound or without a linear head."""
    bound = lipschitz_bound(model)
    rows_of = getattr(model, "classifier_rows", None)
    if bound is None or rows_of is None:
        return None
    with torch.no_grad():
        rows = rows_of().detach().to(device="cpu", dtype=torch.float64)
    return PairwiseCertificate(bound, bound * torch.cdist(rows, rows), float(logit_error))


@dataclass(frozen=True)
class Certification:
    """Certified radii of a set of points for the float32 model as it runs."""

    certificate: PairwiseCertificate
    measured_error: float  # largest |z32 - z64| over the correctly classified points
    logits: torch.Tensor  # (N, C) the deployed float32 model's logits, on the CPU
    reference_logits: torch.Tensor  # (N, C) the float64 copy's; NaN where float32 is wrong
    radii: torch.Tensor  # (N,) float64; <= 0 where not certified at any radius
    correct: torch.Tensor  # (N,) bool: the float32 model predicts the label

    @property
    def bound(self) -> float:
        return self.certificate.bound

    @property
    def logit_error(self) -> float:
        return self.certificate.logit_error

    def certified(self, eps: float) -> torch.Tensor:
        """Points certified at eps: the float32 model is right and the radius exceeds eps."""
        return certified_mask(self.radii, eps) & self.correct

    def accuracy(self, eps_list) -> dict[str, float]:
        """{eps: fraction certified} for every eps."""
        return certified_accuracy(self.radii, eps_list, self.correct)

    def summary(self) -> dict[str, float]:
        """What a record states about the rule: L, delta and the deviation delta came from."""
        return {
            "lipschitz_bound": self.bound,
            "logit_error": self.logit_error,
            "measured_logit_error": self.measured_error,
        }


def logit_error_bound(measured: float, reference_logits: torch.Tensor) -> float:
    """delta from the largest measured |z32 - z64| (see the module docstring)."""
    scale = 1.0 + (float(reference_logits.abs().max()) if reference_logits.numel() else 0.0)
    return max(LOGIT_ERROR_SAFETY * measured, LOGIT_ERROR_FLOOR * scale)


@exact_float32()  # the float32 model runs as deployed: TF32 would move its logits by ~1e-5
def certify(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 250,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> Certification | None:
    """Certify `images` for the float32 `model` (in eval mode) on `device`, or None for a model
    without a certificate. Runs the float32 model over every point and the float64 copy over
    the points the float32 model classifies correctly, the only ones a radius can certify (the
    float64 pass is the slow one: a weak model's misclassified points are not spent on). The
    others keep NaN reference logits and radius -inf.
    """
    reference = float64_copy(model)
    rule = pairwise_certificate(reference)
    if rule is None:
        return None
    labels = labels.cpu()
    logits = predict(
        model, images.split(batch_size), device=device, dtype=torch.float32, memory_format=memory_format
    )
    correct = logits.argmax(1) == labels
    wide = float64_device(device)
    reference_logits = torch.full_like(logits, math.nan, dtype=torch.float64)
    radii = torch.full((len(labels),), -math.inf, dtype=torch.float64)
    measured = 0.0
    if bool(correct.any()):
        chosen = images[correct.to(images.device)].split(batch_size)
        chosen_logits = predict(reference.to(wide), chosen, device=wide, dtype=torch.float64)
        reference_logits[correct] = chosen_logits
        measured = float((logits[correct].double() - chosen_logits).abs().max())
    rule = replace(rule, logit_error=logit_error_bound(measured, reference_logits[correct]))
    radii[correct] = rule.radii(reference_logits[correct], labels[correct])
    return Certification(rule, measured, logits, reference_logits, radii, correct)


def float64_device(device: torch.device | str) -> torch.device:
    """Where the float64 copy runs: the certifying device, or the CPU where it has no float64
    (Apple's MPS)."""
    device = torch.device(device)
    return torch.device("cpu") if device.type == "mps" else device


def certified_mask(radii: torch.Tensor, eps: float) -> torch.Tensor:
    """Points certified at eps: their radius exceeds it."""
    return radii > eps


def certified_accuracy(
    radii: torch.Tensor, eps_list, correct: torch.Tensor | None = None
) -> dict[str, float]:
    """{eps: fraction certified} for every eps; `correct` (the deployed model's predictions)
    keeps certified <= clean accuracy."""
    keep = torch.ones_like(radii, dtype=torch.bool) if correct is None else correct
    return {format_eps(eps): float((certified_mask(radii, eps) & keep).float().mean()) for eps in eps_list}


def float64_copy(model: nn.Module) -> nn.Module:
    """A float64 copy in eval mode, on the CPU: the model the proof is made for."""
    return copy.deepcopy(model).cpu().double().eval()


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
