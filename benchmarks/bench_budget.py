"""Accuracy per CPU-minute: every candidate recipe trained for the same wall-clock budget.

    python benchmarks/bench_budget.py --minutes 3 --root ../shared/data/cifar10-jpeg       # short
    python benchmarks/bench_budget.py --minutes 22 --test --root ...                       # + final table
    python benchmarks/bench_budget.py --minutes 3 --set ablations --root ...                # each lever
    python benchmarks/bench_budget.py --minutes 3 --set all --root ...                      # both
    python benchmarks/bench_budget.py --minutes 10 --pgd 500 --root ...                     # + PGD at 0.3
    python benchmarks/bench_budget.py --set peers --minutes 4 --pgd 500 --root ...          # the field

Each candidate is a list of `dsnn train` overrides, run one after another in this process on
the same data (one thread pool, nothing else running: time them alone) with
`trainer.max_minutes` as the budget, so the learning-rate schedule fits the budget whatever
the candidate's speed. Candidates are scored on the validation split (the `data.val_size`
= 5,000 training images every run holds out), never on test images: printed per candidate are
parameters, training images/s, the peak memory of a training step (measured in a fresh
process: resident memory above the built model and optimiser, at the candidate's batch size),
epochs reached, and on the validation images clean accuracy, certified accuracy at 36/255,
72/255, 108/255 and 0.3 (the float32 model's certificate) and, with --pgd N, the PGD-robust
accuracy at 0.3 (`dsnn attack`'s default attack) on the same N of them for every candidate.
--test adds the same figures on the test set (all 10,000 images) for a final table, once a
recipe has been chosen; without --test the runs skip their final test (`trainer.test=false`),
so a screen never reads a test image (and the float64 certification of 10,000 test images,
minutes per candidate on a CPU, is not spent).
The first training of a process runs 10-15% slower than the same training after it
(measured: 483 against 570 and 529 images/s for three identical 1.2-minute runs in one
process, AMD EPYC), which would hand every later candidate more epochs than the first: so
the first candidate first trains for --warmup minutes (default 1; 0: none), untimed and
thrown away, before any row is measured.
Results also go to outputs/bench/<time>/budget.json (or --out), and each candidate's run
directory sits beside it. A killed benchmark reruns with the same command and --out: finished
candidates are kept, the one that was cut off trains again, and the table covers them all.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from dsnn_cli.commands.attack import run_attack
from dsnn_cli.commands.objectives import Figure, validation_figures
from dsnn_cli.commands.train import run_train
from dsnn_cli.console import percent, print_table

# The same budget, side by side: our method, the convex-potential baseline, the unconstrained one.
# CPL's layer x - 2 W^T ReLU(Wx + b), ||W|| <= 1, on our skeleton.
CPL_STEPS = [
    "model=nonexpansive",
    "model.h=2",
    "model.substeps=1",
    "model.activation.name=relu",
    "~model.activation.alpha",
]
# The baseline recipe as measured before adversarial training became the default.
CLEAN_BATCHES = ["loss.eps=0.08", "loss.adversarial.eps=null"]
# The default model up to commit a0a8263: unit-row head, unshuffle with a learned projection.
UNIT_ROWS_PROJECTED = ["model.head=rows", "model.downsample=unshuffle_project"]
# The default margin recipe up to commit b33850b (today's: eps 0.06, replay from 0.7 of the budget).
RECIPE_TO_B33850B = ["loss.eps=0.04", "loss.adversarial.start=0.4"]
CANDIDATES = {
    "lipschitz (default)": [],
    "nonexpansive, h=2, ReLU (CPL)": [*CPL_STEPS, *CLEAN_BATCHES],
    "resnet (uncertified)": ["model=resnet", "loss=cross_entropy"],
}

# The field's 1-Lipschitz layers at the same budget: each in Prach et al.'s ConvNetXS with their
# recipe and, per layer, the learning rate and weight decay their search chose for ConvNetXS
# (settings.yml of their 24 h runs; BRO, not in their comparison, takes the preset's), and the
# layers that fit our switching scheme as its contractive or expansive steps.
PRACH_TUNED = {
    "aol": (0.0573, 3.68e-5),
    "sll": (0.0907, 1.99e-5),
    "cpl": (0.0343, 1.27e-4),
    "soc": (0.0508, 7.23e-6),
    "cayley": (0.0174, 2.35e-5),
    "bro": (0.05, 5.0e-5),
}
# Rows measured before the default's recipe changed keep that recipe in their overrides.
PEERS = {
    "lipschitz (default)": [],
    "loss eps 0.04, adversarial replay from 0.4 (the default to b33850b)": RECIPE_TO_B33850B,
    "lipschitz, unit-row head, projected unshuffle (the default to a0a8263)": [
        *UNIT_ROWS_PROJECTED,
        *RECIPE_TO_B33850B,
    ],
    "lipschitz skeleton, CPL steps": CANDIDATES["nonexpansive, h=2, ReLU (CPL)"],
    # the same layers with the default's recipe as it stood to b33850b
    "lipschitz skeleton, CPL steps, the default's recipe to b33850b": [*CPL_STEPS, *RECIPE_TO_B33850B],
    # and our network with CPL's recipe above: the other half of the same-recipe pair
    "lipschitz, clean batches, eps 0.08 (CPL's recipe)": CLEAN_BATCHES,
    "lipschitz, unit-row head, projected unshuffle, clean batches, eps 0.08": [
        *UNIT_ROWS_PROJECTED,
        *CLEAN_BATCHES,
    ],
    **{
        f"convnet-XS {layer.upper() if layer != 'cayley' else 'Cayley'}": [
            "experiment=prach_cifar10",
            f"model.layer={layer}",
            f"optim.lr={lr}",
            f"optim.weight_decay={wd}",
        ]
        for layer, (lr, wd) in PRACH_TUNED.items()
    },
    "lipschitz, unit-row head, projected unshuffle, BRO contractions": [
        *UNIT_ROWS_PROJECTED,
        *RECIPE_TO_B33850B,
        "model.orthogonal_map=bro",
        "model.dense_orthogonal=bro",
    ],
    "lipschitz, unit-row head, projected unshuffle, AOL expansions": [
        *UNIT_ROWS_PROJECTED,
        *RECIPE_TO_B33850B,
        "model.expansive_operator=aol",
    ],
}

# One lever at a time against the default recipe (the ablation table of docs/benchmarks.md).
ABLATIONS = {
    "no dense pair": ["model.dense_steps=0"],
    "two dense pairs": ["model.dense_steps=4"],
    "dense pair with one full Cayley solve": ["model.dense_orthogonal=cayley"],
    "projected unshuffle": ["model.downsample=unshuffle_project"],
    "Cayley 3x3 contraction": ["model.contractive_kernel=3", "model.contractive_width=1"],
    "Kaiming expansive init": ["model.expansive_init=kaiming", "model.expansive_bias=0"],
    "alpha 0.25": ["model.activation.alpha=0.25"],
    "alpha 0.5 (the paper's slope)": ["model.activation.alpha=0.5"],
    "ReLU in the expansive steps": ["model.expansive_activation=relu"],
    "contractive width 4": ["model.contractive_width=4"],
    "unit-row head": ["model.head=rows"],
    "unit-row head, projected unshuffle (the default to a0a8263)": UNIT_ROWS_PROJECTED,
    "loss eps 0.15": ["loss.eps=0.15"],
    "widths 24/48/96": ["model.widths=[24,48,96]"],
    "deeper: 4 steps in the last stage, 4 dense steps": ["model.steps=[2,2,4]", "model.dense_steps=4"],
    "loss eps 0.3 (certify_cifar10)": ["loss.eps=0.3"],
    "loss temperature 0.5": ["loss.temperature=0.5"],
    "loss temperature 1": ["loss.temperature=1.0"],
    "clean batches only (no adversarial replay)": ["loss.adversarial.eps=null"],
    "loss eps 0.08, clean batches (the default before adversarial training)": CLEAN_BATCHES,
    "adversarial replay from the start": ["loss.adversarial.start=0"],
    "adversarial replay from half-way": ["loss.adversarial.start=0.5"],
    "adversarial replay at eps 0.5": ["loss.adversarial.eps=0.5"],
    "adversarial replay at eps 0.2": ["loss.adversarial.eps=0.2"],
    # the neighbours of today's default (eps 0.06, replay from 0.7) not covered above
    "loss eps 0.05": ["loss.eps=0.05"],
    "adversarial replay from 0.85": ["loss.adversarial.start=0.85"],
    # Larger matrix products run nearer the CPU's peak (AMD EPYC: training steps alone about 1.2x the
    # images/s at 256, 1.4x at 512; whole 24-minute runs 1.08x, 1.18x); Adam's lr scaled with sqrt(batch).
    "batch 256, lr 0.0042": ["trainer.batch_size=256", "optim.lr=0.0042"],
    "batch 512, lr 0.006": ["trainer.batch_size=512", "optim.lr=0.006"],
    # Augmentation was never screened: an underfit network at ~30 epochs may gain from the plain images.
    "no augmentation (no crop, no flip)": ["data.augment=false"],
    # Its middle grounds: the flip alone (no shift of the image), and the plain images with a larger
    # training radius to buy back the large radii the plain images lost.
    "flip only (no crop)": ["data.augment=flip"],
    "crop + flip (the default to 47b0740)": ["data.augment=crop_flip"],
    "no augmentation, loss eps 0.08": ["data.augment=false", "loss.eps=0.08"],
    # With the flip, 2.4x the budget (10 -> 24 min) added only about a point of clean accuracy on
    # validation: capacity, not steps, may bind now. Two ways to add it, each 0.82-0.85x the speed;
    # both came out level at 24 min ("two dense pairs" is the other).
    "4 steps in the last stage": ["model.steps=[2,2,4]"],
    # The value of more training images at equal budget, on the same validation split: 40,000 against
    # the default's 45,000 (a proxy for training on all 50,000, which leaves nothing to validate on).
    "40,000 training images": ["data.limit_train=40000"],
    "loss eps 0.08, adversarial replay from 0.7": ["loss.eps=0.08", "loss.adversarial.start=0.7"],
    "loss eps 0.06, adversarial replay from 0.7": ["loss.eps=0.06", "loss.adversarial.start=0.7"],
    "loss eps 0.04, adversarial replay from 0.4 (the default to b33850b)": RECIPE_TO_B33850B,
    # A second seed of a row one seed put ahead: one 24-minute seed's standard error is about a point.
    "seed 1": ["seed=1"],
    "loss eps 0.06, adversarial replay from 0.7, seed 1": [
        "loss.eps=0.06",
        "loss.adversarial.start=0.7",
        "seed=1",
    ],
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


RADII = {"36/255": 36 / 255, "72/255": 72 / 255, "108/255": 108 / 255, "0.3": 0.3}
CERTIFY_EPS = "certify.eps=[36/255,72/255,108/255,0.3]"


def step_memory_mb(overrides: list[str]) -> float | None:
    """Peak resident memory of three training steps above the built model and optimiser, in a
    fresh process (a process's peak only grows, so it cannot be read per candidate here)."""
    probe = subprocess.run(
        [sys.executable, __file__, "--memory-probe", json.dumps(overrides)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
    )
    lines = probe.stdout.strip().splitlines()
    return float(lines[-1]) if probe.returncode == 0 and lines else None


def high_water_mb(reset: bool = False) -> float:
    """The process's peak resident memory (VmHWM, Linux); `reset` first sets it to the current
    resident memory, so the peak read later is the peak of what ran in between."""
    if reset:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    with open("/proc/self/status") as handle:
        fields = dict(line.split(":", 1) for line in handle if ":" in line)
    return int(fields["VmHWM"].split()[0]) / 1024


def memory_probe(overrides: list[str]) -> None:
    """Print the MiB by which three training steps of the candidate raise the peak resident
    memory above the built model and optimiser (run as a child process)."""
    from bench_training import INFO  # CIFAR-10's shape and statistics, one owner (this directory)

    from dsnn_cli.models import build_model
    from dsnn_cli.training.losses import build_loss
    from dsnn_cli.training.optim import build_optimizer

    cfg = compose_config("train", ["data=synthetic", *overrides])
    model = build_model(cfg.model, INFO).train()
    optimizer = build_optimizer(cfg.optim, model.parameters())
    loss_fn = build_loss(cfg.loss)
    batch = int(cfg.trainer.batch_size)
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    before = high_water_mb(reset=True)
    for _ in range(3):
        optimizer.zero_grad()
        outputs = model(x)
        rows = model.classifier_rows() if hasattr(model, "classifier_rows") else None
        loss = loss_fn(outputs, y, rows) if rows is not None else loss_fn(outputs, y)
        loss.backward()
        optimizer.step()
    print(round(high_water_mb() - before, 1))


def validation_scores(run_dir: Path, n_pgd: int, root: str | None) -> dict[str, float | None]:
    """Clean and certified accuracy of the run's final model on its validation images, and
    PGD-robust accuracy at 0.3 on n_pgd of them (the attack `dsnn attack` runs by default): the
    figures `sweep.objective` scores, from the same code."""
    figures = [Figure("val_acc"), *(Figure("certified", eps) for eps in RADII.values())]
    figures += [Figure("pgd", 0.3)] if n_pgd else []
    scores = validation_figures(run_dir, figures, pgd_points=n_pgd, data_root=root)
    return {
        "val_clean": scores["val_acc"],
        **{f"val_certified_{name}": scores[Figure("certified", eps).name] for name, eps in RADII.items()},
        "val_pgd_0.3": scores.get(Figure("pgd", 0.3).name),
    }


def cpu_model() -> str:
    """The CPU's model name (Linux), as `lscpu` prints it."""
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else "unknown"


def git_commit() -> str | None:
    """The checkout's commit, as the runs' summaries record it."""
    found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return found.stdout.strip() or None


def run_name(candidate: str) -> str:
    """A candidate's run directory: its name in lower-case words joined by '-'."""
    return "-".join(re.findall(r"[a-z0-9.]+", candidate.lower()))


def test_pgd(args: argparse.Namespace) -> int:
    """How many test points PGD attacks with --test (--test-pgd, else --pgd)."""
    return args.pgd if args.test_pgd is None else args.test_pgd


def finished_results(path: Path, settings: dict) -> list[dict]:
    """The candidates an earlier run into the same --out finished with the same settings: a
    killed benchmark reruns with the same command and goes on with the next candidate."""
    if not path.exists():
        return []
    earlier = json.loads(path.read_text())
    stated = {key: earlier.get(key) for key in settings}
    if stated != settings:
        sys.exit(f"bench_budget: error: {path} holds results for {stated}, not {settings}: use another --out")
    return earlier["results"]


def warm_up(overrides: list[str], minutes: float, out: Path) -> None:
    """Train `overrides` for `minutes` and throw the run away: the process's first training is
    slower than the ones after it, so no measured row should be the first."""
    print(f"bench_budget: warming up for {minutes:g} min (not a row of the table)", flush=True)
    run_dir = out / "warm-up"
    budget = [f"trainer.max_minutes={minutes}", "trainer.test=false"]
    run_train(compose_config("train", [*overrides, *budget]), run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget per candidate")
    parser.add_argument("--root", help="an ImageFolder CIFAR-10 copy (default: the cifar10 download)")
    parser.add_argument(
        "--test", action="store_true", help="also the test-set figures (final tables only, never to choose)"
    )
    parser.add_argument(
        "--set",
        choices=("side", "ablations", "peers", "all"),
        default="side",
        help="side: lipschitz, CPL and resnet; ablations: the default and one lever at a time; "
        "peers: the field's layers in their skeleton and ours; all: side and ablations",
    )
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    parser.add_argument("--pgd", type=int, default=0, help="PGD at 0.3 on this many points (0: none)")
    parser.add_argument(
        "--test-pgd", type=int, help="with --test: PGD at 0.3 on this many test points (default: --pgd)"
    )
    parser.add_argument("--only", nargs="*", help="candidate names to run (default: all)")
    parser.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="minutes the first candidate trains, thrown away, before the first row (0: none)",
    )
    parser.add_argument("--out", default=f"outputs/bench/{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    args = parser.parse_args()
    if args.memory_probe is not None:
        return memory_probe(json.loads(args.memory_probe))
    decode_once_per_process()
    data = ["data=imagefolder", f"data.root={args.root}"] if args.root else []
    budget = [f"trainer.max_minutes={args.minutes}", CERTIFY_EPS]
    if not args.test:
        budget.append("trainer.test=false")  # a screen never reads a test image
    candidates = {
        "side": CANDIDATES,
        "ablations": {"lipschitz (default)": [], **ABLATIONS},
        "peers": PEERS,
        "all": {**CANDIDATES, **ABLATIONS},
    }[args.set]
    out = Path(args.out)
    settings = {"minutes": args.minutes, "test": args.test, "pgd": args.pgd, "test_pgd": test_pgd(args)}
    results = finished_results(out / "budget.json", settings)
    done = {r["candidate"] for r in results}
    todo = {n: o for n, o in candidates.items() if not (args.only and n not in args.only) and n not in done}
    if todo and args.warmup > 0:
        warm_up([*data, *next(iter(todo.values()))], args.warmup, out)
    for name, overrides in todo.items():
        run_dir = out / run_name(name)
        if run_dir.exists():  # a candidate killed before it finished starts again
            print(f"bench_budget: {run_dir} is unfinished: training {name!r} again")
            shutil.rmtree(run_dir)
        summary = run_train(compose_config("train", [*data, *budget, *overrides]), run_dir)
        certified = summary["certified"] or {}
        result = {
            "candidate": name,
            "overrides": overrides,
            "params": summary["n_params"],
            "images_per_second": summary["images_per_second"],
            "step_memory_mb": step_memory_mb(overrides),
            "epochs": round(summary["train_images"] / max(summary["n_train"], 1), 2),
            **validation_scores(run_dir, args.pgd, args.root),
            "lipschitz_bound": summary["lipschitz_bound"],
            "run": str(run_dir),
            "cpu": cpu_model(),  # a table resumed on another machine or commit says so per candidate
            "commit": git_commit(),
            "threads": torch.get_num_threads(),
        }
        if args.test:
            result.update(
                {
                    "test_clean": summary["test_acc"],
                    "test_certified_36/255": certified.get("0.141176"),
                    "test_certified_72/255": certified.get("0.282353"),
                    "test_certified_108/255": certified.get("0.423529"),
                    "test_certified_0.3": certified.get("0.3"),
                    "test_pgd_0.3": pgd_robust(run_dir, test_pgd(args), args.root),
                    "n_test": summary["n_test"],
                }
            )
        results.append(result)
        out.mkdir(parents=True, exist_ok=True)
        (out / "budget.json").write_text(json.dumps({**settings, "results": results}, indent=2))
    figures = [
        "clean",
        "certified_36/255",
        "certified_72/255",
        "certified_108/255",
        "certified_0.3",
        "pgd_0.3",
    ]
    names = ["clean", "cert 36/255", "cert 72/255", "cert 108/255", "cert 0.3", "PGD 0.3"]
    scored = [f"val_{f}" for f in figures]
    header = ["candidate", "params", "img/s", "step MiB", "epochs", *[f"val {n}" for n in names]]
    if args.test:
        scored += [f"test_{f}" for f in figures]
        header += [f"test {n}" for n in names]
    rows = [
        [
            r["candidate"],
            str(r["params"]),
            f"{r['images_per_second']:.0f}",
            "-" if r["step_memory_mb"] is None else f"{r['step_memory_mb']:.0f}",
            f"{r['epochs']:.1f}",
        ]
        + [percent(r[key]) for key in scored]
        for r in results
    ]
    title = f"{args.minutes:g} min of training per candidate, scored on the validation split"
    print_table(title, header, rows, left={"candidate"})
    print(f"wrote {out / 'budget.json'}")


if __name__ == "__main__":
    main()
