"""Data-parallel training under torchrun: who this process is, and the few collectives needed.

`torchrun --nproc_per_node=N -m dsnn_cli train ...` starts N processes with RANK, WORLD_SIZE
and LOCAL_RANK set. Every rank draws the same global batch (one shuffling and augmentation
stream, as a single process would) and trains on its share; DistributedDataParallel averages
the gradients, weighted so that the step is the one a single process takes on the whole
batch. Only rank 0 writes the run directory. A checkpoint holds no trace of the world size,
so a run resumes under any number of ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the ranks (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def share(self, n: int) -> slice:
        """This rank's contiguous share of a global batch of n (sizes differ by at most one)."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def sum(self, *values: float) -> list[float]:
        """Sums over the ranks (the values themselves in one process), in float64."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def max(self, value: float) -> float:
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return float(tensor)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def current_world() -> World:
    """The world torchrun describes in the environment, or a submitit job's tasks (a SLURM or
    local job with several tasks per node: `hydra/launcher=slurm_ddp`)."""
    if "WORLD_SIZE" not in os.environ and os.environ.get("SUBMITIT_EXECUTOR"):
        export_submitit_tasks()
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def export_submitit_tasks() -> None:
    """Set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT from submitit's job
    environment when the job has more than one task."""
    import submitit

    environment = submitit.JobEnvironment()
    if environment.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def join(world: World, device: torch.device) -> torch.device:
    """Join the process group (NCCL on GPUs, gloo on CPUs); returns this rank's device."""
    if not world.distributed:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def leave(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
