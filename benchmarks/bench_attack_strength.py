"""Is the default PGD strong enough? Robust accuracy with default, doubled steps and doubled
restarts, beside APGD and the paper's 10-step protocol, on one trained run.

    python benchmarks/bench_attack_strength.py RUN_DIR [--eps 0.3] [--n 1000]

The defaults are strong enough when doubling steps or restarts lowers robust accuracy by at
most 0.5 percentage points (n >= 1000). Prints one row per attack with its robust accuracy,
the difference to the default PGD in points, and its time per image.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from dsnn_cli.commands.attack import evaluation_points
from dsnn_cli.robustness.attacks import ATTACKS
from dsnn_cli.training.checkpoint import load_model

VARIANTS = {
    "pgd (default: 50 steps, 1 restart, ce + margin)": ("pgd", {}),
    "pgd, 100 steps": ("pgd", {"steps": 100}),
    "pgd, 2 restarts": ("pgd", {"restarts": 2}),
    "paper (10 steps of 0.025 eps, ce)": ("paper", {}),
}
APGD = {"apgd (APGD-CE + APGD-T, 100 steps)": ("apgd", {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run directory written by dsnn train")
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--apgd", action="store_true", help="also APGD (slow on a CPU: ~9x PGD per point)")
    args = parser.parse_args()
    model = load_model(args.run)
    images, labels, _ = evaluation_points(Path(args.run), model.config["data_info"], args.n)
    print(f"run {args.run}: n={len(labels)}, eps={args.eps}, torch threads {torch.get_num_threads()}")
    reference = None
    for label, (name, settings) in {**VARIANTS, **(APGD if args.apgd else {})}.items():
        start = time.perf_counter()
        result = ATTACKS[name](model, images, labels, args.eps, **settings)
        seconds = time.perf_counter() - start
        robust = 100 * float(result.robust.float().mean())
        reference = robust if reference is None else reference
        print(
            f"{label:<48} robust {robust:6.2f}%  diff {robust - reference:+6.2f} pp  "
            f"{1000 * seconds / len(labels):7.1f} ms/image"
        )


if __name__ == "__main__":
    main()
