"""Sharding a sampling run over the processes of a ``torchrun`` job.

W processes (ranks 0..W-1) share n samples by global sample index: rank r takes

    [r n / W, (r + 1) n / W)        (integer division)

and samples them with ``sample_offset`` = its first index, so that sample i draws the noise
streams of global index i (:mod:`sdesolve.noise`): every sample is the same in any split, and a
W-process run produces the samples of one process. Statistics are combined by reductions
(sums, :meth:`sdesolve.metrics.GaussianStats.all_reduce`), samples that a metric needs whole are
gathered in rank order, and rank 0 writes the outputs.

The process group is joined from torchrun's environment (WORLD_SIZE > 1): NCCL on CUDA (each
rank on ``cuda:LOCAL_RANK``), gloo on the CPU. Without torchrun everything here is the identity
on one process.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["init", "rank_world", "shard", "gather", "all_sum", "all_max", "barrier", "finish", "local_device"]

_joined_here = False


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the joined process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def local_device(device=None) -> torch.device:
    """The device this rank works on: ``device`` (default: CUDA if available, else the CPU), with
    an unindexed CUDA device made ``cuda:LOCAL_RANK`` under torchrun."""
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available()
                                                                          else "cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def init(device) -> tuple[int, int]:
    """Join the process group that torchrun describes (WORLD_SIZE > 1): NCCL for a CUDA
    ``device``, gloo otherwise. Returns (rank, world size); (0, 1) outside torchrun."""
    global _joined_here
    device = torch.device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        _joined_here = True
    return rank_world()


def finish() -> None:
    """Leave the process group if :func:`init` joined it."""
    global _joined_here
    if _joined_here and dist.is_initialized():
        dist.destroy_process_group()
    _joined_here = False


def shard(n: int, rank: int | None = None, world: int | None = None) -> tuple[int, int]:
    """Global sample indices [lo, hi) of ``rank`` among ``world`` ranks (default: this process)."""
    if rank is None or world is None:
        rank, world = rank_world()
    if n < 0 or not 0 <= rank < world:
        raise ValueError(f"shard: need n >= 0 and 0 <= rank < world, got n={n}, rank={rank}, world={world}")
    return rank * n // world, (rank + 1) * n // world


def _comm_device(like: torch.device) -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if like.type != "cpu" else like


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``x`` (N_r, ...) along dimension 0, in rank order, on every rank.

    Ranks may hold different N_r (the shards of :func:`shard`); trailing shapes and dtypes must
    agree. Returns ``x`` itself on a single process."""
    rank, world = rank_world()
    if world == 1:
        return x
    comm = _comm_device(x.device)
    n = torch.tensor([x.shape[0]], dtype=torch.int64, device=comm)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    pad = max(sizes)
    buf = torch.zeros((pad,) + tuple(x.shape[1:]), dtype=x.dtype, device=comm)
    buf[: x.shape[0]] = x.to(comm)
    parts = [torch.empty_like(buf) for _ in range(world)]
    dist.all_gather(parts, buf)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(x.device)


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over ranks (a new tensor; ``x`` itself on one process)."""
    if rank_world()[1] == 1:
        return x
    y = x.detach().clone().to(_comm_device(x.device))
    dist.all_reduce(y)
    return y.to(x.device)


def all_max(value: float) -> float:
    """The largest ``value`` over ranks."""
    if rank_world()[1] == 1:
        return float(value)
    y = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device(torch.device("cpu")))
    dist.all_reduce(y, op=dist.ReduceOp.MAX)
    return float(y.item())


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()
