"""`load_data`: a dataset's splits with the configured subsets, and batch iteration on the device.

Augmentation (`data.augment`: random crop with 4-pixel zero padding and/or horizontal flip)
is applied to whole uint8 batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

from dsnn_cli.config import convert, setting, to_plain
from dsnn_cli.data.containers import DATASETS, ImageData, Split, VectorData, VectorSource
from dsnn_cli.data.images import AUGMENTATIONS, augment_batch
from dsnn_cli.data.subsets import split_validation, stratified_subset
from dsnn_cli.data.vectors import vector_data
from dsnn_cli.devices import to_device
from dsnn_cli.errors import UsageError

# The numeric and switch keys of the data groups (each group has the ones it uses).
DATA_KEYS: dict[str, dict[str, Any]] = {
    "val_size": {"kind": int, "low": 0, "nullable": True},
    "limit_train": {"kind": int, "low": 1, "nullable": True},
    "limit_test": {"kind": int, "low": 1, "nullable": True},
    "subset_seed": {"kind": int},
    "n_train": {"kind": int, "low": 1},
    "n_test": {"kind": int, "low": 1},
    "image_size": {"kind": int, "low": 1},
    "channels": {"kind": int, "low": 1},
    "num_classes": {"kind": int, "low": 2},
    "noise": {"kind": float, "low": 0},
    "seed": {"kind": int},
    "dt": {"kind": float, "low": 0, "low_open": True},
    "rollout_steps": {"kind": int, "low": 0},
    "download": {"kind": bool},
    "download_timeout": {"kind": float, "low": 0, "low_open": True},
}


def check_data_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The data group with every key it has checked (types and ranges), as a plain dict."""
    cfg = dict(to_plain(cfg))
    DATASETS[setting(cfg, "name", str, "data")]  # unknown names list the valid ones
    for key, rule in DATA_KEYS.items():
        if key in cfg:
            cfg[key] = setting(cfg, key, prefix="data", **rule)
    if "augment" in cfg:
        cfg["augment"] = augmentation(cfg)
    for key in ("mean", "std"):
        values = cfg.get(key)
        if values is not None and (
            len(values) == 0 or any(convert(v, float) is None or (key == "std" and v <= 0) for v in values)
        ):
            raise UsageError(f"data.{key}={values} must be a list of numbers{' > 0' if key == 'std' else ''}")
    return cfg


def augmentation(cfg: Mapping[str, Any]) -> str:
    """`data.augment` as one of AUGMENTATIONS: true is crop_flip, false is none."""
    if isinstance(cfg["augment"], bool):
        return "crop_flip" if cfg["augment"] else "none"
    return setting(cfg, "augment", str, "data", choices=AUGMENTATIONS)


def load_data(cfg: Mapping[str, Any], with_train: bool = True) -> ImageData | VectorData:
    """Load the splits a command needs, with the configured subsets.

    Args:
        cfg: the ``data`` config node.
        with_train: False loads (and decodes) only the test split, as `dsnn attack` does.
    """
    source = DATASETS[cfg["name"]](cfg, with_train)
    if isinstance(source, VectorSource):
        return vector_data(source, cfg)
    seed = int(cfg["subset_seed"])
    test = source.test.take(stratified_subset(source.test.labels, cfg["limit_test"], seed))
    train = val = None
    if with_train:
        assert source.train is not None
        val_size = int(cfg["val_size"] or 0)
        train_idx, val_idx = split_validation(source.train.labels, val_size, cfg["limit_train"], seed)
        train = source.train.take(train_idx)
        val = source.train.take(val_idx) if val_size else None
    mean, std = channel_statistics(cfg, train if train is not None else test)
    return ImageData(train, val, test, source.classes, mean, std)


def channel_statistics(cfg: Mapping[str, Any], split: Split) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0,1] units: from the config, or measured on the split."""
    if cfg["mean"] is not None and cfg["std"] is not None:
        return [float(v) for v in cfg["mean"]], [float(v) for v in cfg["std"]]
    pixels = split.inputs.double().div(255.0).transpose(0, 1).flatten(1)
    return pixels.mean(dim=1).tolist(), pixels.std(dim=1).clamp_min(1e-3).tolist()


def batches(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool = False,
    augment: str = "none",
    generator: torch.Generator | None = None,
    limit: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (float inputs, targets) on the split's device; uint8 images become [0, 1] floats.

    The shuffling and augmentation draws come from `generator` (on the CPU), so a run
    resumed from a checkpoint that saved the generator repeats them exactly. They reach the
    device without blocking the host: the order once per pass, the augmentation draws as one
    copy per batch.
    """
    n = len(split)
    device = split.inputs.device
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    order = to_device(order, device)
    count = 0
    for start in range(0, n, batch_size):
        if limit is not None and count >= limit:
            return
        idx = order[start : start + batch_size]
        inputs = split.inputs[idx]
        if inputs.dtype == torch.uint8:  # images: augment as uint8, then scale to [0, 1]
            inputs = augment_batch(inputs, generator, mode=augment)
            inputs = inputs.float().div_(255.0)
        yield inputs, split.targets[idx]
        count += 1
