"""Multi-process training with ``torchrun``: data parallel over the router parameters.

Each process takes an equal slice of the global batch (every process draws the same global noise
and labels, then keeps its slice), and the router gradients of every step are averaged across
processes before the optimizer step, which is what DDP does, done explicitly because we take one
optimizer step per denoising step on a router row. gloo on CPU, nccl on CUDA.

    torchrun --nproc_per_node 2 -m harmonica_compile optimize --model tiny-dit-digits ...
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import ConfigError

__all__ = ["Comm", "init_from_env"]


@dataclass
class Comm:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def shard(self, global_batch: int) -> slice:
        """This process's slice of a global batch (which must divide evenly)."""
        if global_batch % self.world_size:
            raise ConfigError(
                f"batch size {global_batch} does not divide over {self.world_size} processes; use a multiple"
            )
        per = global_batch // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    def mean_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            tensor /= self.world_size
        return tensor

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def init_from_env(device: torch.device | str = "cpu") -> Comm:
    """A :class:`Comm` from torchrun's environment (``WORLD_SIZE``, ``RANK``), or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Comm()
    if not dist.is_initialized():
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return Comm(rank=dist.get_rank(), world_size=dist.get_world_size())
