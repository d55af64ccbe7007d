"""Weight averaging (`trainer.ema`) on one trajectory: a paired comparison of decays.

    python benchmarks/bench_averaging.py --minutes 24 --pgd 500 --root ../shared/data/cifar10-jpeg --out DIR
    python benchmarks/bench_averaging.py ... --decays 0 0.998 -- seed=1      # overrides after --

One training run of the default (plus any overrides) keeps a moving average of the weights for
each decay along the same optimiser steps (clean and replayed; each average starts at the first
step's weights). Decay 0 is the trained weights of the last step. Each is then written into a
copy of the run, its norms proven afresh (`calibrate()`), and scored on the validation split
with bench_budget's code: clean, certified at 36/255, 72/255, 108/255 and 0.3, PGD at 0.3 on
--pgd points. Two runs of different decays would differ by a seed's spread (about a point);
here only the averaging differs. The run is scored as trained too (its checkpoint chosen by
`trainer.select`, best on validation). A one-minute warm-up first (see bench_budget).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_budget as budget  # noqa: E402  (the scoring and training helpers, one owner)

import dsnn_cli.training.loop as loop  # noqa: E402
from dsnn_cli.training.averaging import WeightAverage  # noqa: E402
from dsnn_cli.training.checkpoint import FINAL, load_checkpoint, model_from_checkpoint, save_checkpoint  # noqa: E402

FIGURES = ("val_clean", *(f"val_certified_{name}" for name in budget.RADII), "val_pgd_0.3")


def train_with_averages(cfg, run_dir: Path, decays: list[float]) -> dict[float, WeightAverage]:
    """Train `cfg` into run_dir while every decay's average follows the optimiser's steps."""
    averages: dict[float, WeightAverage] = {}
    real = loop.averaged

    def follow(average, model):
        real(average, model)
        if not averages:
            averages.update({d: WeightAverage(model, d) for d in decays})
        for each in averages.values():
            each.update(model)

    loop.averaged = follow
    try:
        budget.run_train(cfg, run_dir)
    finally:
        loop.averaged = real
    return averages


def averaged_run(run_dir: Path, average: WeightAverage) -> Path:
    """A copy of the run whose final checkpoint holds the average, its norms proven afresh."""
    target = run_dir.parent / f"{run_dir.name}-ema-{average.decay:g}"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(run_dir, target)
    path = target / "checkpoints" / FINAL
    payload = load_checkpoint(path)
    model = model_from_checkpoint(payload)
    written = ("format", "model_config", "data_info", "state_dict", "weights_sha256")  # by save_checkpoint
    with loop.scored_weights(model, average):  # the average, calibrated, as an epoch scores it
        save_checkpoint(path, model, **{k: v for k, v in payload.items() if k not in written})
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=24.0, help="training budget")
    parser.add_argument("--decays", type=float, nargs="+", default=[0.0, 0.995, 0.998, 0.999, 0.9995])
    parser.add_argument("--pgd", type=int, default=500, help="PGD at 0.3 on this many validation points")
    parser.add_argument("--warmup", type=float, default=1.0, help="minutes of untimed training first")
    parser.add_argument("--root", help="data=imagefolder data.root=ROOT (else CIFAR-10 by torchvision)")
    parser.add_argument("--out", required=True)
    parser.add_argument("overrides", nargs="*", help="dsnn train overrides (after --)")
    args = parser.parse_args()
    out = Path(args.out)
    data = ["data=imagefolder", f"data.root={args.root}"] if args.root else []
    base = [*data, "trainer.test=false", *args.overrides]
    budget.decode_once_per_process()
    if args.warmup > 0:
        budget.warm_up(base, args.warmup, out)
    run_dir = out / "trained"
    cfg = budget.compose_config("train", [*base, f"trainer.max_minutes={args.minutes}"])
    averages = train_with_averages(cfg, run_dir, args.decays)
    rows = {"as trained (trainer.select)": budget.validation_scores(run_dir, args.pgd, args.root)}
    for decay, average in averages.items():
        scored = averaged_run(run_dir, average)
        rows[f"decay {decay:g}"] = budget.validation_scores(scored, args.pgd, args.root)
    record = {
        "minutes": args.minutes,
        "overrides": args.overrides,
        "pgd": args.pgd,
        "cpu": budget.cpu_model(),
        "commit": budget.git_commit(),
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
    (out / "averaging.json").write_text(json.dumps(record, indent=2))
    reference = rows.get("decay 0")
    for name, scores in rows.items():
        cells = [f"{100 * scores[k]:.2f}" if scores[k] is not None else "-" for k in FIGURES]
        if reference and scores is not reference:
            cells = [
                c if scores[k] is None else f"{c} ({100 * (scores[k] - reference[k]):+.2f})"
                for c, k in zip(cells, FIGURES, strict=True)
            ]
        print(f"{name:28s} " + " | ".join(cells))
    print(f"wrote {out / 'averaging.json'}")


if __name__ == "__main__":
    main()
