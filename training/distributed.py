"""Multi-process training with torch's own engine: torchrun + DistributedDataParallel.

    torchrun --standalone --nproc_per_node=2 -m training pipeline ...
    torchrun --nnodes=2 --node_rank=K --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT \\
        --nproc_per_node=2 -m training pipeline ...   (multi-node: a shared --out-dir)

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them (a plain `python -m`) training
runs in one process exactly as before. Each rank trains on its shard of every epoch's
permutation (DistributedSampler's partitioning: padded to a multiple of the world size,
then every world_size-th example), gradients are averaged by DDP (gloo on CPU, NCCL on
GPU), and only rank 0 writes checkpoints, reports and the bundle.
"""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    backend: str = "none"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current() -> World:
    """The process group this process belongs to (one process when none was started)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), str(dist.get_backend()))


def init_from_env(device: torch.device) -> World:
    """Joins the process group torchrun describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or (dist.is_available() and dist.is_initialized()):
        return current()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    world = current()
    log.info("rank %d of %d (%s)", world.rank, world.world_size, world.backend)
    return world


def local_device(device: torch.device) -> torch.device:
    """This rank's GPU under torchrun (LOCAL_RANK), else `device` itself."""
    if device.type == "cuda" and current().distributed:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def shard(perm: Tensor, world: World) -> Tensor:
    """This rank's part of an epoch's permutation, as torch's DistributedSampler splits it.

    Padded by repeating its head to a multiple of the world size, so every rank takes the
    same number of steps (DDP needs every rank in every gradient exchange).
    """
    if not world.distributed:
        return perm
    total = -(-perm.numel() // world.world_size) * world.world_size
    padded = torch.cat([perm, perm[: total - perm.numel()]])
    return padded[world.rank : total : world.world_size]


def wrap(module: nn.Module, world: World) -> nn.Module:
    """`module` in DistributedDataParallel when there are several ranks, else itself."""
    if not world.distributed:
        return module
    device_ids = None
    params = list(module.parameters())
    if params and params[0].device.type == "cuda":
        device_ids = [params[0].device.index]
    # find_unused_parameters: id-dropout and masked lists may leave a row table unused.
    return nn.parallel.DistributedDataParallel(
        module, device_ids=device_ids, find_unused_parameters=True, **_no_buffer_sync()
    )


def _no_buffer_sync() -> dict[str, Any]:
    """DDP's switch for no buffer sync before every forward.

    The models' buffers are constants every rank builds alike (field offsets, the global
    mean, the users' training items of MF's history term), and the histories are the size
    of the training data: sent every step they would cost more than the gradients. torch
    2.13 renamed the switch and warns on the old name (the new one still syncs once, at
    construction, which is harmless); the old name serves torch >= 2.2.
    """
    ddp = inspect.signature(nn.parallel.DistributedDataParallel).parameters
    if "forward_sync_buffers" in ddp:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def broadcast(obj: Any, world: World) -> Any:
    """Rank 0's `obj` on every rank (e.g. validation metrics only rank 0 computed)."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()
