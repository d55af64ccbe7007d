"""What data loaders return: splits of uint8 images or float vectors, and the dataset registry.

Every image split is held as a uint8 tensor (N, C, H, W) and converted to float in [0, 1]
one batch at a time; `Source` splits are lazy so that only the images a command needs are
decoded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from dsnn_cli.registry import Registry


@dataclass
class Split:
    """Inputs and targets: uint8 images (N, C, H, W) with class labels (N,), or float vectors."""

    inputs: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def subset(self, indices: torch.Tensor) -> Split:
        return Split(self.inputs[indices], self.targets[indices])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.inputs.to(device), self.targets.to(device))


@dataclass
class LazySplit:
    """Labels known up front; images fetched (decoded) only for the indices asked for."""

    labels: torch.Tensor
    fetch: Callable[[torch.Tensor], torch.Tensor]

    def take(self, indices: torch.Tensor) -> Split:
        return Split(self.fetch(indices), self.labels[indices])


@dataclass
class Source:
    """What a dataset loader returns: lazy train and test splits and class names."""

    train: LazySplit | None
    test: LazySplit
    classes: list[str]


@dataclass
class ImageData:
    """Train / validation / test splits plus what a model needs to know about them."""

    train: Split | None
    val: Split | None
    test: Split
    classes: list[str]
    mean: list[float]
    std: list[float]

    def info(self) -> dict[str, Any]:
        """The data facts a checkpoint stores to rebuild its model."""
        images = self.test.inputs
        return {
            "kind": "image",
            "task": "classification",
            "in_channels": int(images.shape[1]),
            "image_size": [int(images.shape[2]), int(images.shape[3])],
            "num_classes": len(self.classes),
            "classes": list(self.classes),
            "mean": list(self.mean),
            "std": list(self.std),
        }


@dataclass
class VectorSource:
    """Regression pairs (float64) and the facts a model and the structure metrics need."""

    train: Split
    test: Split
    info: dict[str, Any]


@dataclass
class VectorData:
    """Train / validation / test pairs of a regression task (flow maps, functions)."""

    train: Split | None
    val: Split | None
    test: Split
    facts: dict[str, Any]

    def info(self) -> dict[str, Any]:
        return {
            "kind": "vector",
            "task": "regression",
            "dim_in": int(self.test.inputs.shape[1]),
            "dim_out": int(self.test.targets.shape[1]),
            **self.facts,
        }


DATASETS: Registry[Callable[[Mapping[str, Any], bool], Source | VectorSource]] = Registry("data")
