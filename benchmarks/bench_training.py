"""Training throughput of every image family, as ratios to the ResNet baseline (same process).

    python benchmarks/bench_training.py [--widths 16 32 64] [--batch 128] [--repeats 7]

Each model is composed from its YAML (conf/model/<option>.yaml, plus the overrides below),
runs warm-up steps, then `repeats` timed optimisation steps on random CIFAR-sized batches;
the table gives the median images/s and its ratio to `resnet`. Numbers depend on the machine
and its load: compare ratios from one run, not absolute values across runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from dsnn_cli.config import to_plain
from dsnn_cli.devices import autocast, keep_freed_memory, training_arithmetic
from dsnn_cli.models.networks import build_model

INFO = {
    "kind": "image",
    "in_channels": 3,
    "image_size": 32,
    "num_classes": 10,
    "mean": [0.49, 0.48, 0.45],
    "std": [0.25, 0.24, 0.26],
}
# label -> model option and overrides (the widths are set for all from --widths)
FAMILIES = {
    "resnet": ["model=resnet"],
    "lipschitz (default)": ["model=lipschitz"],
    "lipschitz, no dense pair": ["model=lipschitz", "model.dense_steps=0"],
    "lipschitz, dense pair with full Cayley": ["model=lipschitz", "model.dense_orthogonal=cayley"],
    "lipschitz, Cayley 3x3": ["model=lipschitz", "model.contractive_kernel=3", "model.contractive_width=1"],
    "lipschitz_paper": ["model=lipschitz_paper"],
    "lipschitz_flexible": ["model=lipschitz_flexible"],
    "nonexpansive (CPL)": ["model=nonexpansive", "model.h=2", "model.substeps=1"],
    "naive": ["model=naive"],
    "volume": ["model=volume"],
    # the field's layers in Prach et al.'s ConvNetXS (their widths 16..256, not --widths)
    "convnet-XS AOL": ["model=aol"],
    "convnet-XS SLL": ["model=sll"],
    "convnet-XS CPL": ["model=convnet", "model.layer=cpl"],
    "convnet-XS SOC": ["model=soc"],
    "convnet-XS BRO": ["model=bro"],
    "convnet-XS Cayley": ["model=convnet", "model.layer=cayley"],
    # their pieces in our switching scheme
    "lipschitz, BRO contractions": [
        "model=lipschitz",
        "model.orthogonal_map=bro",
        "model.dense_orthogonal=bro",
    ],
    "lipschitz, AOL expansions": ["model=lipschitz", "model.expansive_operator=aol"],
}
# Skeletons with their own widths: --widths does not apply.
OWN_WIDTHS = {label for label in FAMILIES if label.startswith("convnet")}


def model_config(overrides: list[str], widths: list[int] | None) -> dict:
    GlobalHydra.instance().clear()
    sized = [f"model.widths=[{','.join(map(str, widths))}]"] if widths else []
    with initialize_config_module(config_module="dsnn_cli.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*overrides, *sized])
    return to_plain(cfg.model)


def images_per_second(
    cfg: dict, batch: int, repeats: int, channels_last: bool, device: str = "cpu", precision: str = "32"
) -> float:
    """Median images/s of training steps, under the training precision policy (devices.py)."""
    with training_arithmetic(torch.device(device), deterministic=False):
        return timed_steps(cfg, batch, repeats, channels_last, torch.device(device), precision)


def timed_steps(
    cfg: dict, batch: int, repeats: int, channels_last: bool, device: torch.device, precision: str
) -> float:
    return batch / TrainingStep(cfg, batch, precision, device, channels_last).seconds(repeats)


class TrainingStep:
    """One optimisation step (forward, backward, Adam) of a model on a random CIFAR batch."""

    def __init__(
        self,
        cfg: dict,
        batch: int,
        precision: str,
        device: torch.device | None = None,
        channels_last: bool = True,
        compiled: bool = False,
    ):
        torch.manual_seed(0)
        device = device or torch.device("cpu")
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = build_model(cfg, INFO).train().to(device=device, memory_format=fmt)
        self.forward = torch.compile(self.model) if compiled else self.model
        self.optimizer = torch.optim.Adam(self.model.parameters(), 1e-3)
        self.x = torch.rand(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
        self.y = torch.randint(0, 10, (batch,), device=device)
        self.precision = precision

    def __call__(self) -> None:
        with autocast(self.x.device, self.precision):
            loss = torch.nn.functional.cross_entropy(self.forward(self.x).float(), self.y)
        penalty = self.model.regularization()
        (loss if penalty is None else loss + penalty).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def seconds(self, repeats: int) -> float:
        """Median seconds of `repeats` steps after two warm-up steps."""
        times = []
        for i in range(repeats + 2):
            synchronize(self.x.device)
            start = time.perf_counter()
            self()
            synchronize(self.x.device)
            if i >= 2:
                times.append(time.perf_counter() - start)
        return statistics.median(times)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a step's time is its own."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--contiguous", action="store_true", help="NCHW instead of channels_last")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (benchmarks/gpu.sh)")
    parser.add_argument("--precision", default="32", choices=("32", "bf16"), help="trainer.precision")
    args = parser.parse_args()
    if args.device == "cpu":
        keep_freed_memory()  # as `dsnn train` runs on a CPU (trainer.keep_memory)
    threads = torch.get_num_threads()
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{threads} CPU threads"
    print(f"torch {torch.__version__}, {where}, widths {args.widths}, batch {args.batch}, {args.precision}")
    baseline = None
    print(f"{'family':<28} {'params':>8} {'img/s':>8} {'vs resnet':>10}")
    for label, overrides in FAMILIES.items():
        cfg = model_config(overrides, None if label in OWN_WIDTHS else args.widths)
        params = sum(p.numel() for p in build_model(cfg, INFO).parameters())
        channels_last = not args.contiguous
        rate = images_per_second(cfg, args.batch, args.repeats, channels_last, args.device, args.precision)
        baseline = baseline or rate
        print(f"{label:<28} {params:8d} {rate:8.0f} {rate / baseline:10.2f}")


if __name__ == "__main__":
    main()
