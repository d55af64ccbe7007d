"""dsnn: experiment runner for dynamical-systems-based neural networks.

The public API is loaded lazily so that ``import dsnn_cli`` (and ``dsnn --help``) does not
import torch.

    >>> from dsnn_cli import load_model, lipschitz_bound
    >>> model = load_model("outputs/runs/...")      # eval mode, CPU, float32, [0,1] in, logits out
    >>> lipschitz_bound(model)                      # proven l2 bound, or None
    >>> ATTACKS["apgd"](model, images, labels, 0.3)  # per-point correct / robust / adversarial
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "load_model": "dsnn_cli.training.checkpoint",
    "lipschitz_bound": "dsnn_cli.robustness.certificates",
    "build_model": "dsnn_cli.models.networks",
    "ATTACKS": "dsnn_cli.robustness.attacks",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dsnn_cli' has no attribute {name!r}")
