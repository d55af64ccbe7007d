"""Batched inference: the one loop every command uses to run a model over many inputs."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def predict(
    model: nn.Module,
    inputs: Iterable[torch.Tensor],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """The model's outputs over batches of inputs (moved to `device` and `dtype`), on the CPU.

    The caller chooses the mode (`model.eval()`); nothing here changes it.
    """
    outputs = [
        model(x.to(device=device, dtype=dtype).contiguous(memory_format=memory_format)).cpu() for x in inputs
    ]
    return torch.cat(outputs) if outputs else torch.empty(0)
