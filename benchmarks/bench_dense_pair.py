"""The default's training step with the dense pair's Q applied as its factors, against Q formed.

    python benchmarks/bench_dense_pair.py [--rounds 8] [--steps 8] [--batch 128]

Two copies of the default model (same seed, same weights) train side by side in one process:
`factors`, today's code, applies Q = B2 P B1 of the shuffled-block contraction as its two
block-diagonal factors and the shuffle; `dense` forms the 1,024 x 1,024 matrix Q from them at
every step and multiplies by it (the code to `e5f36f1`). Rounds alternate their order; the
table gives each side's median ms per step (forward, backward, Adam) and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import types

import torch
from bench_training import TrainingStep, model_config

from dsnn_cli.devices import keep_freed_memory


def form_q(op, weight: torch.Tensor) -> torch.Tensor:
    """Q as the dense matrix: the factors applied to the identity's columns (the old path)."""
    factored = type(op)  # the class's own packing and application; the instance's are patched below
    eye = torch.eye(op.dim, dtype=weight.dtype, device=weight.device)
    return factored.apply_with(op, eye, factored.transform(op, weight)).mT


def with_dense_q(step: TrainingStep) -> TrainingStep:
    """Make the dense pair's contraction form Q and multiply by it, as before."""
    op = step.model.dense[1].field.A
    op.transform = types.MethodType(form_q, op)
    op.apply_with = types.MethodType(lambda self, x, q: x @ q.mT, op)
    op.adjoint_with = types.MethodType(lambda self, y, q: y @ q, op)
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    keep_freed_memory()
    cfg = model_config(["model=lipschitz"], [16, 32, 64])
    sides = {
        "factors": TrainingStep(cfg, args.batch, "32"),
        "dense": with_dense_q(TrainingStep(cfg, args.batch, "32")),
    }
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.rounds):
        for name in sides if r % 2 == 0 else reversed(sides):
            times[name].append(sides[name].seconds(args.steps))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    for name, values in times.items():
        rounds = [round(1000 * v) for v in values]
        print(f"{name:8s} {1000 * statistics.median(values):7.1f} ms/step  rounds {rounds}")
    ratio = statistics.median(times["factors"]) / statistics.median(times["dense"])
    print(f"factors / dense: {ratio:.2f} of the step time, {1 / ratio:.2f}x the images/s")


if __name__ == "__main__":
    main()
