"""Argument checks shared by the entry points: each raises a ``TypeError`` or ``ValueError`` that
names the argument and what was given, instead of silently truncating, reinterpreting or ignoring
it (a float seed, an integer dtype, an increasing sampling grid, a ``shape`` that contradicts
``x_T``, an empty batch)."""
from __future__ import annotations

import math
import numbers
import operator

import torch

__all__ = ["check_count", "check_index", "check_seed", "check_sample_args", "check_interval"]


def check_index(name: str, value, minimum: int = 0) -> int:
    """An integer (Python or NumPy, not bool) >= ``minimum``; floats are refused, not truncated."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.dtype.is_floating_point \
                and value.dtype != torch.bool:
            value = int(value)
        else:
            raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = operator.index(value)
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def check_count(name: str, value) -> int:
    """A count: an integer >= 1 (0 and negatives are errors, never replaced by a default)."""
    return check_index(name, value, 1)


def check_seed(seed) -> None:
    """None, an integer in [0, 2**32) or an integer tensor of per-sample seeds."""
    if seed is None or isinstance(seed, torch.Tensor):
        return
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, a (B,) integer tensor or None, got {seed!r} ({type(seed).__name__}); "
                        f"a float seed would be truncated")
    if not 0 <= int(seed) < 2**32:
        raise ValueError(f"an int seed must lie in [0, 2**32), got {seed}")


def check_sample_args(process, shape, x_T, dtype, sample_offset, schedule) -> None:
    """What :func:`sdesolve.sample` needs: a float dtype, a non-empty batch, a ``shape`` that
    agrees with ``x_T`` when both are given, an integer ``sample_offset`` >= 0, and an explicit
    grid that runs from noise to data (decreasing time, T first)."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"sample: dtype must be a floating-point torch dtype, got {dtype!r} (the prior noise "
                        f"would be truncated)")
    check_index("sample: sample_offset", sample_offset, 0)
    if x_T is not None:
        if not isinstance(x_T, torch.Tensor) or x_T.dim() < 1:
            raise TypeError(f"sample: x_T must be a tensor of shape (B, ...), got {type(x_T).__name__}")
        if not x_T.dtype.is_floating_point:
            raise TypeError(f"sample: x_T must be floating point, got {x_T.dtype}")
        if shape is not None and tuple(shape) != tuple(x_T.shape):
            raise ValueError(f"sample: shape={tuple(shape)} contradicts x_T of shape {tuple(x_T.shape)}; give one")
        shape = tuple(x_T.shape)
    if shape is not None:
        try:
            dims = [operator.index(s) for s in shape]
        except TypeError:
            raise TypeError(f"sample: shape must be a tuple of integers (B, ...), got {shape!r}") from None
        if not dims or any(d < 1 for d in dims):
            raise ValueError(f"sample: shape must be (B, ...) with every size >= 1 (an empty batch has nothing "
                             f"to sample), got {tuple(shape)}")
    if isinstance(schedule, torch.Tensor) and schedule.numel() >= 2:
        grid = schedule.detach().reshape(-1)
        if float(grid[0]) < float(grid[-1]):
            raise ValueError(f"sample: the explicit schedule runs from t = {float(grid[0]):.6g} up to "
                             f"{float(grid[-1]):.6g}; a sampling grid must run from noise to data, T first and "
                             f"decreasing (e.g. {grid.flip(0).tolist()[:4]}...)")


def check_interval(eq, t0, t1) -> None:
    """An adaptive solve of a diffusion equation must stay inside [t_min, T] (as the fixed-step
    grids do)."""
    process = getattr(eq, "process", None)
    if process is None or t0 is None or t1 is None:
        return
    lo, hi = process.t_min, process.T
    tol = 1e-12 * max(1.0, hi)
    bad = [(n, float(v)) for n, v in (("t0", t0), ("t1", t1))
           if not (math.isfinite(float(v)) and lo - tol <= float(v) <= hi + tol)]
    if bad:
        raise ValueError(f"solve: {', '.join(f'{n} = {v:.6g}' for n, v in bad)} outside [t_min, T] = [{lo}, {hi}] "
                         f"of the equation's process")
