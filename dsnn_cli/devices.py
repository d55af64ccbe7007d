"""Where tensors live and in what arithmetic: the device a command runs on, the memory layout
of image batches, copies to the device, and the precision policy.

Precision policy (GPUs; on a CPU only bf16 autocast applies):

* Training (`dsnn train`, inside `training_arithmetic`): float32 weights and optimiser state;
  with `trainer.precision=bf16` (or `auto` on a device with bf16 matrix hardware,
  `training_precision`) the forward pass runs under bfloat16 autocast and the
  activations stay bfloat16 from the stem to the head (biases are cast to them; the loss is
  taken in float32). What the constraints need in float32 stays float32: the Cayley
  transforms (a solve per block or frequency), the FFTs of Cayley convolutions and the power
  iterations of normalised operators (`full_precision`). TF32 is on for convolutions and
  matrix products and cuDNN picks its fastest kernels (`cudnn.benchmark`).
* Certificates and attacks (`exact_float32`): float32 with TF32 off, and margins from a
  float64 copy of the model (on the CPU where the device has no float64, e.g. Apple MPS).
  Nothing trained in bf16 or TF32 enters a proof: bounds are recomputed from the weights.
* `trainer.deterministic=true` asks for deterministic kernels (no autotuning, deterministic
  cuBLAS and cuDNN algorithms): a resumed CUDA run then repeats the uninterrupted one bit for
  bit. Without it a GPU run resumes with the same weights, data order and augmentation, but
  kernels may round differently (atomics, autotuned algorithms), so it matches to rounding.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

from dsnn_cli.errors import UsageError

log = logging.getLogger("dsnn")

DEVICE_NAMES = "auto, cpu, cuda, cuda:N, mps"


def resolve_device(name: str, key: str = "trainer.device") -> torch.device:
    """`auto` picks cuda, then mps, then cpu; a device that is not there is a usage error
    (`cuda:N` counts the devices this process sees, after CUDA_VISIBLE_DEVICES)."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(name)):
        raise UsageError(f"{key}={name} is not a device (valid: {DEVICE_NAMES})")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        if os.environ.get("SLURM_JOB_ID"):  # a cluster job that got no GPU: say so, not silently
            log.warning(
                "%s=auto: SLURM job %s sees no GPU, running on the CPU (request GPUs with "
                "hydra/launcher=slurm or hydra.launcher.gpus_per_node=N)",
                key,
                os.environ["SLURM_JOB_ID"],
            )
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"{key}={name} but CUDA is not available; use {key}=auto")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise UsageError(
            f"{key}={name} but this process sees {torch.cuda.device_count()} CUDA device(s) "
            f"(numbered from 0, after CUDA_VISIBLE_DEVICES); use {key}=cuda"
        )
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError(f"{key}=mps but MPS is not available; use {key}=auto")
    return torch.device(name)


def job_device(name: str, job: int) -> str:
    """The device of a sweep's job `job`: `auto` or `cuda` on a machine with several GPUs
    becomes cuda:(job mod count), so parallel jobs (joblib) spread over the GPUs instead of
    all landing on cuda:0; anything else is kept."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if str(name) in ("auto", "cuda") and count > 1:
        return f"cuda:{int(job) % count}"
    return str(name)


def memory_format(channels_last: bool) -> torch.memory_format:
    """channels_last runs 3x3 convolutions fastest on CPUs and GPUs alike."""
    return torch.channels_last if channels_last else torch.contiguous_format


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without blocking the host: from pinned memory on CUDA (a
    copy from pageable memory waits for the device), asynchronous elsewhere."""
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def training_precision(precision: str, device: torch.device) -> str:
    """The precision a run trains in: `auto` is bf16 where the device multiplies bf16 matrices
    in hardware (CUDA compute capability 8.0 and later; a CPU with AMX-BF16), else "32" (on a
    CPU without a bf16 matrix engine bf16 products are emulated and slower than float32)."""
    if precision != "auto":
        return precision
    return "bf16" if has_bf16_matrix_engine(device) else "32"


def has_bf16_matrix_engine(device: torch.device) -> bool:
    """Whether `device` has bf16 matrix hardware: tensor cores (CUDA 8.0+) or Intel AMX-BF16
    (the CPU flag `amx_bf16`, read from /proc/cpuinfo on Linux; False where it is unreadable)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return "amx_bf16" in cpu_flags()
    return False


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo), empty where they cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """bfloat16 autocast for `precision` bf16 (the training forward pass), else nothing."""
    if precision != "bf16":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def autocast_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype activations take here: autocast's where it is on for x's device, else x's."""
    kind = x.device.type
    if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


def full_precision(x: torch.Tensor) -> AbstractContextManager:
    """Autocast off for the block (Cayley transforms, FFTs, power iterations stay float32)."""
    kind = x.device.type
    if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
        return torch.autocast(kind, enabled=False)
    return nullcontext()


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """x in float32, or float64 if it is: what FFTs and matrix exponentials need under autocast."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


@contextmanager
def training_arithmetic(device: torch.device, deterministic: bool) -> Iterator[None]:
    """The training side of the precision policy (module docstring) for the block: on CUDA,
    TF32 matrix products and convolutions and cuDNN autotuning, or deterministic kernels;
    `deterministic` also holds on other devices. The previous settings come back after."""
    cuda = device.type == "cuda"
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.are_deterministic_algorithms_enabled(),
    )
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        # cuBLAS needs a fixed workspace for reproducible products (read when it starts)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        (
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.benchmark,
            torch.backends.cudnn.deterministic,
        ) = saved[:4]
        torch.use_deterministic_algorithms(saved[4])


@contextmanager
def exact_float32() -> Iterator[None]:
    """TF32 off for the block: on Ampere and later GPUs it rounds float32 matmul and convolution
    inputs to 10 mantissa bits (cuDNN convolutions use it by default), which moves logits by
    ~1e-5 relative, far more than the certificates' rounding slack. A no-op on CPUs."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def keep_freed_memory() -> bool:
    """Keep the memory PyTorch frees in the process (glibc: no mmap per allocation, no trimming
    of the heap); False where the C library is not glibc. A CPU training step frees and
    allocates its activations again each step, and glibc hands large blocks back to the kernel
    and maps them afresh, so each step page-faults its memory in again: on the 2-core AMD
    EPYC, 8,000 to 18,000 faults and a fifth to a quarter of the wall time in the kernel per
    step of the default model, none of it with the memory kept, at the same peak resident
    memory (docs/benchmarks.md). Process-wide, for the rest of the process."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # malloc.h
    return mallopt(m_mmap_max, 0) == 1 and mallopt(m_trim_threshold, 2**31 - 1) == 1


def peak_memory_mb(device: torch.device) -> float:
    """The peak memory so far: allocated tensors on a GPU, the process's resident set on a CPU."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def resident_memory_mb() -> float | None:
    """The process's resident memory now (Linux), or None where /proc is not there: what a
    leak makes grow from epoch to epoch, where a peak would hide it."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
