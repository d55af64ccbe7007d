"""What keeping freed memory (`trainer.keep_memory`) does to a CPU training step.

    python benchmarks/bench_memory.py [--rounds 3] [--steps 40] [--batch 128]

glibc's setting is process-wide and cannot be undone, so the two sides cannot share a
process: each round starts one child process per side, in alternating order, that times
`steps` training steps of the default model (bench_training's step, after three warm-up
steps) and counts its minor page faults and the kernel's share of the wall time. Printed per
side: the median over rounds of the median ms/step, faults/step, kernel share and peak
resident memory, and the ratio of the medians (kept / plain). Time it alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, resource, statistics, sys, time
import torch
from bench_training import TrainingStep, model_config
from dsnn_cli.devices import keep_freed_memory
keep, batch, steps = sys.argv[1] == "kept", int(sys.argv[2]), int(sys.argv[3])
kept = keep_freed_memory() if keep else False
step = TrainingStep(model_config(["model=lipschitz"], None), batch, "32")
for _ in range(3):
    step()
before, start, times = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), []
for _ in range(steps):
    tick = time.perf_counter(); step(); times.append(time.perf_counter() - tick)
after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - start
print(json.dumps({"kept": kept, "ms": 1000 * statistics.median(times),
    "faults": (after.ru_minflt - before.ru_minflt) / steps,
    "kernel": (after.ru_stime - before.ru_stime) / wall, "peak_mb": after.ru_maxrss / 1024}))
"""


def child(side: str, batch: int, steps: int) -> dict:
    """One side's figures from a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, side, str(batch), str(steps)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent,  # bench_training sits beside this file
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"plain": [], "kept": []}
    for i in range(args.rounds):
        for side in ("plain", "kept") if i % 2 == 0 else ("kept", "plain"):
            runs[side].append(child(side, args.batch, args.steps))
            print(f"round {i + 1} {side}: {runs[side][-1]}", flush=True)
    median = {
        side: {k: statistics.median(r[k] for r in rows) for k in ("ms", "faults", "kernel", "peak_mb")}
        for side, rows in runs.items()
    }
    for side, m in median.items():
        print(
            f"{side:6s} {m['ms']:6.0f} ms/step  {m['faults']:8.0f} faults/step  "
            f"kernel {100 * m['kernel']:3.0f}% of wall  peak {m['peak_mb']:.0f} MiB"
        )
    print(f"kept / plain: {median['kept']['ms'] / median['plain']['ms']:.2f} of the step time")


if __name__ == "__main__":
    main()
