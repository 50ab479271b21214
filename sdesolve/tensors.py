"""Small tensor conventions shared by processes, equations, scores and solvers."""
from __future__ import annotations

import torch

__all__ = ["per_sample", "rms", "shared_time", "grid_point", "PointTable"]


def shared_time(t):
    """Per-sample times ``t`` (B,) as the one value they share, a 0-d tensor, when they share it by
    construction: a view with stride 0 (a fixed grid's time, one grid point expanded to the batch,
    as the sampling loop hands it out). Otherwise ``t`` itself. Coefficients of the time computed
    on the result broadcast against the batch as the (B,) ones do and cost one evaluation instead
    of B (elementwise float64 functions of the same value: equal up to the last bit of the
    vectorised transcendental functions); a 0-d float64 coefficient meets a state of lower
    precision as a number does, rounded to the state's dtype (:func:`per_sample`)."""
    if isinstance(t, torch.Tensor) and t.dim() == 1 and t.shape[0] > 1 and t.stride(0) == 0:
        return t[0]
    return t


def grid_point(t):
    """``(grid, i)`` when ``t`` (B,) is point i of a 1-D float64 tensor ``grid`` expanded to the
    batch (a stride-0 view of it: how the fixed-grid loop hands out its times), else None."""
    if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.shape[0] == 0 or t.stride(0) != 0:
        return None
    grid = t._base
    if grid is None or grid.dim() != 1 or grid.stride(0) != 1 or grid.dtype != torch.float64:
        return None
    return grid, t.storage_offset() - grid.storage_offset()


class PointTable:
    """``fn(t)`` at every point of a grid, computed for the whole grid at once: ``lookup(t)`` for
    t = grid[i] expanded to the batch (:func:`grid_point`) is ``tuple(c[i] for c in fn(grid))``,
    one-element views (numbers in arithmetic with a state, as :func:`shared_time`'s values are),
    in float64 or, on request (``dtype``), in a state's dtype (a coefficient of that dtype costs an
    operation with the state less than a float64 one, converted on the fly); any other time gives
    None (the caller computes per call). A row is made when it is asked for: a table holds a few
    tensors, not an object per grid point that would live as long as the table and add to the
    interpreter's garbage collections. One grid at a time, the last one seen; a grid modified in
    place since is tabulated again. Only host grids that carry no gradient are tabulated: a table is
    what saves the CPU loop its per-step operations on one-element tensors, and a device grid's
    loop is captured whole in a CUDA graph, whose kernels would read a table's memory after the
    table has moved on to another grid. The function is elementwise in time, so a row equals the
    per-call value of the same times up to the last bit of vectorised transcendental functions."""

    def __init__(self, fn):
        self.fn = fn
        self.held = None  # (grid, its version counter, {dtype: the columns})

    def lookup(self, t, dtype=torch.float64):
        hit = grid_point(t)
        return None if hit is None else self._row(hit[0], hit[1], dtype)

    def _row(self, grid, i: int, dtype=torch.float64):
        if grid.requires_grad or grid.device.type != "cpu":
            return None
        held = self.held
        if held is None or held[0] is not grid or held[1] != grid._version:
            n = grid.numel()
            columns = [torch.as_tensor(c, dtype=torch.float64).broadcast_to((n,)) for c in self.fn(grid)]
            held = self.held = (grid, grid._version, {torch.float64: columns})
        columns = held[2].get(dtype)
        if columns is None:
            columns = held[2][dtype] = [c.to(dtype) for c in held[2][torch.float64]]
        return tuple([c[i] for c in columns])


def per_sample(c, x: torch.Tensor):
    """A per-sample coefficient (B,) (or a scalar) broadcast against x of shape (B, ...), in x's
    dtype and on x's device: (B,) becomes (B, 1, ..., 1). A number, or a 0-d floating tensor on x's
    device or the CPU, is returned as it is: in arithmetic with x it is rounded to x's dtype first,
    as the conversion would (type promotion does not let a 0-d operand widen x), without the
    operations of a conversion."""
    if not isinstance(c, torch.Tensor):
        if isinstance(c, float):
            return c
        c = torch.as_tensor(c)
    if c.dim() == 0 and c.dtype.is_floating_point and (c.device == x.device or c.device.type == "cpu"):
        return c
    if c.dtype != x.dtype or c.device != x.device:
        c = c.to(device=x.device, dtype=x.dtype)
    return c.reshape(c.shape + (1,) * (x.dim() - c.dim())) if c.dim() else c


def rms(x: torch.Tensor) -> torch.Tensor:
    """Per-sample root mean square of x (B, ...): sqrt(mean over all but the batch dimension of
    x^2), in float64, shape (B,). The error norms of the adaptive solvers and controllers."""
    return x.reshape(x.shape[0], -1).to(torch.float64).pow(2).mean(1).sqrt()

