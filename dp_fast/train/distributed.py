"""torch.distributed for training: the process group torchrun describes, each rank's device, its shard
of a global batch, and the few collectives the trainer needs.

A process started without torchrun (no WORLD_SIZE, or WORLD_SIZE=1) gets `Dist()`, world size 1: no
process group, no collective, the trainer runs as a single process. Under torchrun, NCCL on CUDA (one
device per local rank, cuda:LOCAL_RANK) and gloo on CPU; a second, gloo group carries the barriers
(torch's monitored_barrier, which names the ranks that did not arrive) and the Python objects broadcast
from rank 0 (the resume state, the RNG state), so that neither needs the accelerator.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Dict, Iterable, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from .build import resolve_device


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: Optional[str] = None
    timeout: timedelta = timedelta(minutes=60)
    control: Any = None              # the gloo group (None: the default group is gloo already)
    owns_group: bool = False         # this object initialised the default group (close() destroys it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, idx: torch.Tensor) -> Tuple[torch.Tensor, int]:
        """This rank's part of a global batch of sample indices (torch.tensor_split: contiguous, sizes
        differing by at most one) and its start within the batch."""
        parts = torch.tensor_split(idx, self.world_size)
        start = sum(len(p) for p in parts[:self.rank])
        return parts[self.rank], start

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """All-reduce SUM in place over the default group (the tensor on the training device)."""
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def average_(self, tensors: Iterable[torch.Tensor]) -> None:
        """Replace each tensor by its mean over the ranks (in place)."""
        if not self.enabled:
            return
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t.div_(self.world_size)

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any (a decision taken from each rank's own clock)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return bool(t.item())

    def broadcast(self, obj: Any) -> Any:
        """rank 0's `obj` on every rank (pickled through the gloo group)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def barrier(self) -> None:
        """Wait for every rank, at most `timeout` (training.dist_timeout_minutes); past it, raise naming
        the ranks that did not arrive."""
        if self.enabled:
            dist.monitored_barrier(group=self.control, timeout=self.timeout, wait_all_ranks=True)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def slice_draws(draws: Dict[str, Any], n_all: int, start: int, n: int) -> Dict[str, Any]:
    """Samples start .. start + n of a global batch's loss draws (DiffusionPolicy.loss_draws: row-major by
    sample; the crops hold n_all * steps rows)."""
    def part(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(n_all, -1, *t.shape[1:])[start:start + n].reshape(-1, *t.shape[1:])
    crops = draws["crop_offsets"]
    return {"crop_offsets": None if crops is None else {k: part(v) for k, v in crops.items()},
            "noise": draws["noise"][start:start + n], "timesteps": draws["timesteps"][start:start + n]}


def rank_seed(seed: int, step: int, rank: int) -> int:
    """A seed of its own for (run seed, global step, rank): the ranks' dropout streams."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(step), int(rank)]).generate_state(1, np.uint64)[0]) >> 1


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def setup(device_name: str, timeout_minutes: float) -> Tuple[Dist, torch.device]:
    """(Dist, this rank's device) from torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE,
    MASTER_ADDR / MASTER_PORT); a single process when WORLD_SIZE is unset or 1."""
    device = resolve_device(device_name)
    world = world_size_from_env()
    timeout = timedelta(minutes=float(timeout_minutes))
    if world <= 1:
        return Dist(timeout=timeout), device
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        n = torch.cuda.device_count()
        if local >= n:
            raise ValueError(f"local rank {local} needs cuda:{local}, this node has {n} CUDA device(s); "
                             f"start at most {n} processes per node (--nproc_per_node)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"training.device={device_name!r}: distributed training runs on cuda (NCCL) or "
                         f"cpu (gloo), not {device.type}")
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend, timeout=timeout)
    control = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
    return Dist(rank, local, world, backend, timeout, control, owns), device
