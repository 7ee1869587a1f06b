"""Data-parallel training on ``torch.distributed`` (DDP), launched by ``torchrun`` (docs/design.md, contract 6).

pyro-sparse does no process management of its own: ``torchrun --nproc-per-node N`` (or ``pyro-sparse train ...
--devices N``, which calls torchrun's launcher, :func:`torch.distributed.run.run`) starts the processes and sets
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`pyro_sparse.infer.fit` then joins the process group (gloo on
CPU, nccl on CUDA) unless the caller already did, wraps model + guide in
:class:`~torch.nn.parallel.DistributedDataParallel` and splits every global batch across the ranks.

Why the objective stays right: rank r computes ``(N/B_r)·NLL_r + β·KL`` (its data plate scales by ``N/B_r``), and
DDP averages the gradients over the W ranks; with equal shards ``B_r = B/W`` the average is the gradient of
``(N/B)·Σ_r NLL_r + β·KL``, the ELBO of the global batch B. A final batch that does not split evenly gets a weight
``B_r·W/B`` on its likelihood, so that the average is still exact.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """Where this process stands: ``rank`` of ``size`` processes, ``local_rank`` on its machine; ``owned``: this
    module initialised the process group (and tears it down)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    owned: bool = False

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs, the compact network and metrics."""
        return self.rank == 0


def launched_size() -> int:
    """``WORLD_SIZE`` set by torchrun (1 when not launched by it)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def join(device: str) -> World:
    """The process group of this run: the caller's if initialised, else the one torchrun's environment describes
    (backend nccl for a CUDA ``device``, gloo otherwise), else a single process."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if launched_size() <= 1:
        return World()
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    if backend == "nccl":  # one GPU per process; collectives and broadcast_object_list use the current device
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owned=True)


def leave(world: World) -> None:
    """Tear down the process group if :func:`join` created it, once every rank got here and the DDP wrapper (with
    its reducer's pending work) is gone: gloo aborts a process whose group dies under live work."""
    if world.owned and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def device_of(device: str, world: World) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` for a plain ``cuda`` when several processes share a machine."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and world.size > 1:
        return torch.device("cuda", world.local_rank)
    return dev


def shard(idx: torch.Tensor, world: World) -> tuple[torch.Tensor, float]:
    """This rank's part of a global batch of indices (every W-th, from ``rank``) and the weight of its likelihood
    (``B_r·W/B``: 1 when the batch splits evenly). Sizes are Python ints: no device read."""
    if world.size == 1:
        return idx, 1.0
    part = idx[world.rank::world.size]
    return part, part.shape[0] * world.size / idx.shape[0]


def all_sum(*tensors: torch.Tensor, world: World) -> None:
    """Sum ``tensors`` over the ranks, in place (one collective each; a no-op on one process)."""
    if world.size > 1:
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


def first_over_ranks(step: torch.Tensor, world: World) -> None:
    """The earliest non-negative ``step`` over the ranks (−1 if none), in place: every rank learns of a divergence."""
    if world.size > 1:
        big = torch.iinfo(step.dtype).max
        t = torch.where(step < 0, torch.full_like(step, big), step)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        step.copy_(torch.where(t == big, torch.full_like(t, -1), t))


def broadcast(obj, world: World):
    """``obj`` of rank 0 on every rank."""
    if world.size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()
