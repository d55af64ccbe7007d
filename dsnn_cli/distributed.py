"""Data-parallel training under torchrun: who this process is, and the few collectives needed.

`torchrun --nproc_per_node=N -m dsnn_cli train ...` starts N processes with RANK, WORLD_SIZE
and LOCAL_RANK set. Every rank draws the same global batch (one shuffling and augmentation
stream, as a single process would) and trains on its share; DistributedDataParallel averages
the gradients, weighted so that the step is the one a single process takes on the whole
batch. Only rank 0 writes the run directory. A checkpoint holds no trace of the world size,
so a run resumes under any number of ranks.

On GPUs the process group has NCCL for CUDA tensors and gloo for CPU ones
(`cpu:gloo,cuda:nccl`); the training loop reduces tensors of its own device, so a collective
does not wait for the host.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dsnn_cli.errors import DsnnError


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

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over the ranks, in place on the tensor's own device (the tensor itself in one
        process): no host sync on a GPU."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    def max(self, tensor: torch.Tensor) -> torch.Tensor:
        """The largest value over the ranks, in place on the tensor's own device."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

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


def backend(device: torch.device) -> str:
    """The process group's backends: NCCL for CUDA tensors and gloo for CPU ones on GPUs (NCCL
    alone refuses a CPU tensor), gloo elsewhere."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def local_gpu(world: World) -> torch.device:
    """This rank's GPU among the ones it sees: cuda:LOCAL_RANK where the ranks of a node share
    its GPUs, cuda:0 where each task sees only its own (SLURM binding one GPU per task)."""
    count = torch.cuda.device_count()
    if world.local_rank < count:
        return torch.device("cuda", world.local_rank)
    if count == 1:
        return torch.device("cuda", 0)
    raise DsnnError(
        f"rank {world.rank} (local rank {world.local_rank}) sees {count} GPUs: start at most one "
        "rank per GPU on a node (torchrun --nproc_per_node, hydra.launcher.tasks_per_node)"
    )


def join(world: World, device: torch.device) -> torch.device:
    """Join the process group (NCCL and gloo on GPUs, gloo on CPUs); returns this rank's device."""
    if not world.distributed:
        return device
    if device.type == "cuda":
        device = local_gpu(world)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend(device))
    return device


@contextmanager
def main_first(world: World) -> Iterator[None]:
    """Rank 0 runs the block before the others do (a download into a shared folder: the others
    then find the files); one process runs it plainly. Rank 0 lets the others go even when the
    block fails."""
    if world.distributed and not world.main:
        world.barrier()
    try:
        yield
    finally:
        if world.distributed and world.main:
            world.barrier()


def leave(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
