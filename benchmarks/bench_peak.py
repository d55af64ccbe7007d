"""How close a training step comes to the machine's matrix-multiply peak, and where its time goes.

    python benchmarks/bench_peak.py [--batch 128] [--repeats 7] [--precision 32 bf16] [--profile]
                                    [--compile]

In one process: the peak (the median GFLOP/s of large square matrix products, 2 n^3 flops
each, in float32 and in bf16) is measured first and again before every model, and shares are
quoted against the median of those readings; then for `resnet` and the default
`lipschitz` model one training step (forward, backward, optimiser step on a random CIFAR
batch, as `bench_training.py` times it) is counted with torch's FlopCounterMode (matrix
products and convolutions, forward and backward; FFTs and elementwise work are not counted,
so GFLOP/s is the useful matrix work per second) and timed (median of `repeats`). Printed per
model and precision: GFLOP/step, ms/step, GFLOP/s and its share of the peak in that
precision. --profile adds, per model, the share of the step's CPU time in matrix products
and convolutions, FFTs, copies and layout conversions, and the rest (elementwise and
Python overhead), and the operators that take the most time. --compile adds a row per model
and precision with the forward pass under torch.compile (as `trainer.compile=true` trains;
the flops are counted eagerly, the compile time is printed apart from the step time).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections import defaultdict

import torch
from bench_training import TrainingStep, model_config
from torch.utils.flop_counter import FlopCounterMode

from dsnn_cli.devices import has_bf16_matrix_engine, keep_freed_memory, training_arithmetic

MODELS = {"resnet": ["model=resnet"], "lipschitz (default)": ["model=lipschitz"]}
DTYPES = {"32": torch.float32, "bf16": torch.bfloat16}
# Operator name fragments per kind of work, for the --profile shares (first match wins).
KINDS = {
    "matrix products and convolutions": ("mm", "matmul", "linear", "conv", "addmm", "bmm", "baddbmm"),
    "FFTs": ("fft",),
    "copies and layout conversions": ("copy_", "contiguous", "clone", "to_dense", "_to_copy", "permute"),
}


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 7) -> float:
    """Median GFLOP/s of n x n matrix products in `dtype` on the CPU's threads."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(dtype)
    b = torch.randn(n, n, generator=generator).to(dtype)
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        torch.mm(a, b)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


class Step(TrainingStep):
    """bench_training's step, with its flops counted and its first (compiling) step timed."""

    def flops(self) -> int:
        """The step's matrix-product and convolution flops, counted on the eager model."""
        forward, self.forward = self.forward, self.model
        with FlopCounterMode(display=False) as counter:
            self()
        self.forward = forward
        return counter.get_total_flops()

    def warm(self) -> float:
        """Seconds of the first step (for a compiled forward pass: the compilation)."""
        start = time.perf_counter()
        self()
        return time.perf_counter() - start


def kind_of(name: str) -> str:
    for kind, fragments in KINDS.items():
        if any(fragment in name for fragment in fragments):
            return kind
    return "elementwise, Python and the rest"


def profile(step: Step, steps: int = 3) -> tuple[dict[str, float], list[tuple[str, float, int]]]:
    """Shares of self CPU time per kind of work, and the top operators (name, share, calls)."""
    step()  # warm
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    shares: dict[str, float] = defaultdict(float)
    for event in events:
        shares[kind_of(event.key.removeprefix("aten::"))] += event.self_cpu_time_total / total
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    return dict(shares), [(e.key, e.self_cpu_time_total / total, e.count // steps) for e in top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--precision",
        nargs="+",
        choices=tuple(DTYPES),
        help="default: 32, and bf16 where the CPU multiplies bf16 in hardware (AMX-BF16): "
        "elsewhere bf16 products are emulated, minutes for the peak alone",
    )
    parser.add_argument("--profile", action="store_true", help="where each step's time goes")
    parser.add_argument("--compile", action="store_true", help="also each model under torch.compile")
    args = parser.parse_args()
    if args.precision is None:
        args.precision = ["32", "bf16"] if has_bf16_matrix_engine(torch.device("cpu")) else ["32"]
    keep_freed_memory()  # as `dsnn train` runs on a CPU (trainer.keep_memory)
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} CPU threads, batch {args.batch}")
    with training_arithmetic(torch.device("cpu"), deterministic=False):
        # The peak is measured again before every model: on a shared virtual machine one
        # reading moves by 20%, and the share is quoted against the median of all of them.
        peaks: dict[str, list[float]] = {p: [matmul_peak(DTYPES[p])] for p in args.precision}
        rows = []
        for label, overrides in MODELS.items():
            for precision, compiled in itertools.product(args.precision, (False, True)[: 1 + args.compile]):
                peaks[precision].append(matmul_peak(DTYPES[precision]))
                step = Step(model_config(overrides, None), args.batch, precision, compiled=compiled)
                gflop = step.flops() / 1e9
                warm = step.warm()
                seconds = step.seconds(args.repeats)
                rows.append((label + (" compiled" if compiled else ""), precision, gflop, seconds))
                if compiled:
                    print(f"{label} compiled ({precision}): compiled in {warm:.0f} s")
                if args.profile and not compiled:
                    shares, top = profile(step)
                    print(f"{label} ({precision}): " + ", ".join(f"{k} {v:.0%}" for k, v in shares.items()))
                    for name, share, calls in top:
                        print(f"      {name:<40} {share:6.1%} {calls:6d} calls/step")
    peak = {p: statistics.median(values) for p, values in peaks.items()}
    for p, values in peaks.items():
        print(
            f"matrix-multiply peak {p}: median {peak[p]:.0f} GFLOP/s of {len(values)} readings "
            f"({min(values):.0f}-{max(values):.0f})"
        )
    print(f"{'model':<30} {'prec':>5} {'GFLOP/step':>11} {'ms/step':>8} {'GFLOP/s':>8} {'of peak':>8}")
    for label, precision, gflop, seconds in rows:
        rate = gflop / seconds
        print(
            f"{label:<30} {precision:>5} {gflop:11.2f} {seconds * 1e3:8.0f} {rate:8.0f} "
            f"{rate / peak[precision]:8.0%}"
        )


if __name__ == "__main__":
    main()
