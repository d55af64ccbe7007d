"""Accuracy per CPU-minute: every candidate recipe trained for the same wall-clock budget.

    python benchmarks/bench_budget.py --minutes 3 --root ../shared/data/cifar10-jpeg       # short
    python benchmarks/bench_budget.py --minutes 22 --test --root ...                       # + final table
    python benchmarks/bench_budget.py --minutes 3 --set ablations --root ...                # each lever
    python benchmarks/bench_budget.py --minutes 3 --set all --root ...                      # both
    python benchmarks/bench_budget.py --minutes 10 --pgd 500 --root ...                     # + PGD at 0.3

Each candidate is a list of `dsnn train` overrides, run one after another in this process on
the same data (one thread pool, nothing else running: time them alone) with
`trainer.max_minutes` as the budget, so the learning-rate schedule fits the budget whatever
the candidate's speed. Candidates are scored on the validation split (the `data.val_size`
= 5,000 training images every run holds out), never on test images: printed per candidate are
parameters, training images/s, epochs reached, and on the validation images clean accuracy,
certified accuracy at 36/255 and 0.3 (the float32 model's certificate) and, with --pgd N, the
PGD-robust accuracy at 0.3 (`dsnn attack`'s default attack) on N of them. --test adds the same
figures on the test set (all 10,000 images) for a final table, once a recipe has been chosen;
each run still tests itself at its end, as `dsnn train` always does, and without --test the
bench reads none of those figures.
Results also go to outputs/bench/<time>/budget.json, and each candidate's run directory sits
beside it.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

import dsnn_cli
from dsnn_cli.commands.attack import run_attack
from dsnn_cli.commands.common import validation_points
from dsnn_cli.commands.train import run_train
from dsnn_cli.console import percent, print_table
from dsnn_cli.devices import exact_float32
from dsnn_cli.robustness.attacks import ATTACKS
from dsnn_cli.robustness.certificates import certify

# The same budget, side by side: our method, the convex-potential baseline, the unconstrained one.
CANDIDATES = {
    "lipschitz (default)": [],
    "nonexpansive, h=2, ReLU (CPL)": [
        "model=nonexpansive",
        "model.h=2",
        "model.substeps=1",
        "model.activation.name=relu",
        "~model.activation.alpha",
        "loss.eps=0.08",  # the baseline as measured before adversarial training became the default
        "loss.adversarial.eps=null",
    ],
    "resnet (uncertified)": ["model=resnet", "loss=cross_entropy"],
}

# One lever at a time against the default recipe (the README's ablation table).
ABLATIONS = {
    "no dense pair": ["model.dense_steps=0"],
    "dense pair with one full Cayley solve": ["model.dense_orthogonal=cayley"],
    "first-channel unshuffle (no projection)": ["model.downsample=unshuffle"],
    "Cayley 3x3 contraction": ["model.contractive_kernel=3", "model.contractive_width=1"],
    "Kaiming expansive init": ["model.expansive_init=kaiming", "model.expansive_bias=0"],
    "alpha 0.25": ["model.activation.alpha=0.25"],
    "alpha 0.5 (the paper's slope)": ["model.activation.alpha=0.5"],
    "dense head (||W|| <= 1)": ["model.head=dense"],
    "loss eps 0.15": ["loss.eps=0.15"],
    "dense head, loss eps 0.15": ["model.head=dense", "loss.eps=0.15"],
    "widths 24/48/96": ["model.widths=[24,48,96]"],
    "deeper: 4 steps in the last stage, 4 dense steps": ["model.steps=[2,2,4]", "model.dense_steps=4"],
    "loss eps 0.3 (certify_cifar10)": ["loss.eps=0.3"],
    "loss temperature 0.5": ["loss.temperature=0.5"],
    "loss temperature 1": ["loss.temperature=1.0"],
    "clean batches only (no adversarial replay)": ["loss.adversarial.eps=null"],
    "loss eps 0.08, clean batches (the default before adversarial training)": [
        "loss.eps=0.08",
        "loss.adversarial.eps=null",
    ],
    "adversarial replay from the start": ["loss.adversarial.start=0"],
    "adversarial replay from half-way": ["loss.adversarial.start=0.5"],
    "adversarial replay at eps 0.5": ["loss.adversarial.eps=0.5"],
}


def decode_once_per_process() -> None:
    """Candidates read the same JPEGs: decode them once, so each budget is spent training."""
    import dsnn_cli.data.images as images

    decode = images.decode_images
    memo = functools.lru_cache(maxsize=4)(lambda paths: decode(list(paths)))
    images.decode_images = lambda paths: memo(tuple(paths))


def compose_config(name: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="dsnn_cli.conf", version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def pgd_robust(run_dir: Path, n: int, root: str | None) -> float | None:
    """PGD-robust accuracy at 0.3 on n test points, as `dsnn attack run=RUN eps=0.3` reports it."""
    if not n:
        return None
    overrides = [f"run={run_dir}", "eps=[0.3]", f"attack.n_examples={n}"]
    record = run_attack(compose_config("attack", [*overrides, *([f"data_root={root}"] if root else [])]))
    return record["results"][0]["robust"]


RADII = {"36/255": 36 / 255, "0.3": 0.3}


@exact_float32()
def validation_scores(run_dir: Path, n_pgd: int, root: str | None) -> dict[str, float | None]:
    """Clean and certified accuracy of the run's final model on its validation images, and
    PGD-robust accuracy at 0.3 on n_pgd of them (the attack `dsnn attack` runs by default)."""
    model = dsnn_cli.load_model(run_dir).eval()
    images, labels = validation_points(run_dir, None, root)
    certification = certify(model, images, labels)
    if certification is None:
        logits = torch.cat([model(x).detach() for x in images.split(250)])
        scores = {"val_clean": float((logits.argmax(1) == labels).float().mean())}
        scores.update({f"val_certified_{name}": None for name in RADII})
    else:
        scores = {"val_clean": float(certification.correct.float().mean())}
        scores.update(
            {
                f"val_certified_{name}": float(certification.certified(eps).float().mean())
                for name, eps in RADII.items()
            }
        )
    scores["val_pgd_0.3"] = None
    if n_pgd:
        images, labels = validation_points(run_dir, n_pgd, root)
        outcome = ATTACKS["pgd"](model, images, labels, 0.3)
        scores["val_pgd_0.3"] = float(outcome.robust.float().mean())
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget per candidate")
    parser.add_argument("--root", help="an ImageFolder CIFAR-10 copy (default: the cifar10 download)")
    parser.add_argument(
        "--test", action="store_true", help="also the test-set figures (final tables only, never to choose)"
    )
    parser.add_argument(
        "--set",
        choices=("side", "ablations", "all"),
        default="side",
        help="side: lipschitz, CPL and resnet; ablations: the default and one lever at a time; all: both",
    )
    parser.add_argument("--pgd", type=int, default=0, help="PGD at 0.3 on this many points (0: none)")
    parser.add_argument("--only", nargs="*", help="candidate names to run (default: all)")
    parser.add_argument("--out", default=f"outputs/bench/{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    args = parser.parse_args()
    decode_once_per_process()
    data = ["data=imagefolder", f"data.root={args.root}"] if args.root else []
    budget = [f"trainer.max_minutes={args.minutes}", "certify.eps=[36/255,0.3]"]
    candidates = {
        "side": CANDIDATES,
        "ablations": {"lipschitz (default)": [], **ABLATIONS},
        "all": {**CANDIDATES, **ABLATIONS},
    }[args.set]
    out = Path(args.out)
    results = []
    for name, overrides in candidates.items():
        if args.only and name not in args.only:
            continue
        run_dir = out / f"{len(results):02d}_{name.split(' ')[0].replace(',', '')}"
        summary = run_train(compose_config("train", [*data, *budget, *overrides]), run_dir)
        certified = summary["certified"] or {}
        result = {
            "candidate": name,
            "overrides": overrides,
            "params": summary["n_params"],
            "images_per_second": summary["images_per_second"],
            "epochs": round(summary["train_images"] / max(summary["n_train"], 1), 2),
            **validation_scores(run_dir, args.pgd, args.root),
            "lipschitz_bound": summary["lipschitz_bound"],
            "run": str(run_dir),
        }
        if args.test:
            result.update(
                {
                    "test_clean": summary["test_acc"],
                    "test_certified_36/255": certified.get("0.141176"),
                    "test_certified_0.3": certified.get("0.3"),
                    "test_pgd_0.3": pgd_robust(run_dir, args.pgd, args.root),
                    "n_test": summary["n_test"],
                }
            )
        results.append(result)
        out.mkdir(parents=True, exist_ok=True)
        (out / "budget.json").write_text(json.dumps({"minutes": args.minutes, "results": results}, indent=2))
    scored = ["val_clean", "val_certified_36/255", "val_certified_0.3", "val_pgd_0.3"]
    header = [
        "candidate",
        "params",
        "img/s",
        "epochs",
        "val clean",
        "val cert 36/255",
        "val cert 0.3",
        "val PGD 0.3",
    ]
    if args.test:
        scored += ["test_clean", "test_certified_36/255", "test_certified_0.3", "test_pgd_0.3"]
        header += ["test clean", "test cert 36/255", "test cert 0.3", "test PGD 0.3"]
    rows = [
        [r["candidate"], str(r["params"]), f"{r['images_per_second']:.0f}", f"{r['epochs']:.1f}"]
        + [percent(r[key]) for key in scored]
        for r in results
    ]
    title = f"{args.minutes:g} min of training per candidate, scored on the validation split"
    print_table(title, header, rows, left={"candidate"})
    print(f"wrote {out / 'budget.json'}")


if __name__ == "__main__":
    main()
