"""An exponential moving average of the weights (`trainer.ema`): the model that is validated,
selected, tested and certified, while the optimiser goes on from the weights it trained.

Only parameters are averaged; buffers (power-iteration vectors) stay the trained model's. The
average keeps every construction: a Cayley factor of averaged parameters is orthogonal, and
`calibrate()` proves the norm of an averaged W afresh, so the averaged model's Lipschitz bound
is proven exactly as the trained one's is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class WeightAverage:
    """shadow <- decay * shadow + (1 - decay) * weights, after every optimiser step."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {name: p.detach().clone() for name, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            self.shadow[name].lerp_(p.detach(), 1.0 - self.decay)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
        """The model with the averaged parameters in place of its own; yields the trained ones
        (what a resumed run continues from) and puts them back on exit."""
        params = dict(model.named_parameters())
        trained = {name: p.detach().clone() for name, p in params.items()}
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(self.shadow[name])
        try:
            yield trained
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(trained[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: t.clone() for name, t in self.shadow.items()}

    def load_state_dict(self, shadow: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, t in self.shadow.items():
                t.copy_(shadow[name])
