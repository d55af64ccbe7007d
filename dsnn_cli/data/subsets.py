"""Class-stratified, nested subsets drawn with `data.subset_seed`, and the validation split.

Subsets (``data.val_size``, ``data.limit_train``, ``data.limit_test`` and
``attack.n_examples``) are drawn with ``data.subset_seed``, not the training seed, so every
command sees the same images.
"""

from __future__ import annotations

import torch

from dsnn_cli.errors import UsageError


def stratified_subset(labels: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    """Sorted indices of n points, classes as balanced as possible, nested in n.

    Each class is shuffled with `seed`; points are then taken round-robin over the classes
    (in a shuffled class order), so subset(n) is contained in subset(n + 1).
    """
    total = int(labels.shape[0])
    if n is None or n >= total:
        return torch.arange(total)
    if n < 0:
        raise UsageError(f"subset size {n} must be >= 0")
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(total, generator=generator)
    shuffled = labels[order]
    classes = torch.unique(labels)
    class_rank = torch.empty(int(classes.max()) + 1, dtype=torch.long)
    class_rank[classes[torch.randperm(len(classes), generator=generator)]] = torch.arange(len(classes))
    # position of each shuffled point within its class
    within = torch.zeros(total, dtype=torch.long)
    for c in classes:
        members = (shuffled == c).nonzero().squeeze(1)
        within[members] = torch.arange(len(members))
    key = within * len(classes) + class_rank[shuffled]
    chosen = order[torch.argsort(key)[:n]]
    return torch.sort(chosen).values


def complement(total: int, indices: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(total, dtype=torch.bool)
    keep[indices] = False
    return keep.nonzero().squeeze(1)


def split_validation(
    labels: torch.Tensor, val_size: int, limit_train: int | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) indices into a training set: `val_size` points for validation, then a
    `limit_train` subset of the rest, both class-stratified (labels all 0 for regression).

    Raises:
        UsageError: `val_size` leaves no training points.
    """
    if val_size >= len(labels):
        raise UsageError(
            f"data.val_size={val_size} leaves no training points (the training set has {len(labels)}); "
            "lower data.val_size"
        )
    val_idx = stratified_subset(labels, val_size, seed) if val_size else torch.empty(0, dtype=torch.long)
    rest = complement(len(labels), val_idx)
    return rest[stratified_subset(labels[rest], limit_train, seed + 1)], val_idx
