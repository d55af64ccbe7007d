"""Where tensors live: the device a command runs on, and the memory layout of image batches."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from dsnn_cli.errors import UsageError


def resolve_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"trainer.device={name} but CUDA is not available; use trainer.device=auto")
    return torch.device(name)


def memory_format(trainer: Mapping[str, Any]) -> torch.memory_format:
    return torch.channels_last if trainer.get("channels_last", True) else torch.contiguous_format
