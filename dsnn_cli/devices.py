"""Where tensors live: the device a command runs on, and the memory layout of image batches."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from dsnn_cli.errors import UsageError

DEVICE_NAMES = "auto, cpu, cuda, cuda:N, mps"


def resolve_device(name: str, key: str = "trainer.device") -> torch.device:
    """`auto` picks cuda, then mps, then cpu; a device that is not there is a usage error."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(name)):
        raise UsageError(f"{key}={name} is not a device (valid: {DEVICE_NAMES})")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"{key}={name} but CUDA is not available; use {key}=auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError(f"{key}=mps but MPS is not available; use {key}=auto")
    return torch.device(name)


def memory_format(channels_last: bool) -> torch.memory_format:
    """channels_last runs 3x3 convolutions fastest on CPUs and GPUs alike."""
    return torch.channels_last if channels_last else torch.contiguous_format


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
