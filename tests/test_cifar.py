"""A short run on real CIFAR-10 images (the local ImageFolder copy named by DSNN_CIFAR10_ROOT)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import compose_config

from dsnn_cli.commands.train import run_train

ROOT = os.environ.get("DSNN_CIFAR10_ROOT")


@pytest.mark.skipif(not ROOT, reason="set DSNN_CIFAR10_ROOT to a CIFAR-10 ImageFolder copy (.ci/run does)")
def test_resnet_learns_cifar10_from_2000_images(tmp_path):
    assert (Path(ROOT) / "train").is_dir(), f"DSNN_CIFAR10_ROOT={ROOT} has no train/ folder"
    cfg = compose_config(
        "train",
        [
            "model=resnet",
            "data=imagefolder",
            f"data.root={ROOT}",
            "data.limit_train=2000",
            "data.val_size=500",
            "data.limit_test=1000",
            "trainer.max_epochs=3",
            "trainer.device=cpu",
        ],
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # real convolutions: use both cores
    try:
        summary = run_train(cfg, tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    assert summary["status"] == "done" and summary["n_test"] == 1000
    assert summary["test_acc"] >= 0.25, summary
