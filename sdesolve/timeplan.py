"""The time plan of a solve: one function turns (equation, t0, t1, steps, schedule) into either a
fixed grid or an interval for step-size control, for every caller (``solve``, ``sample``,
``log_likelihood``, the controllers).

A fixed grid is a float64 tensor of times t_0, ..., t_N (``steps = N``), strictly monotone; a
schedule function ``schedule(process, steps, t_start=, t_end=)`` gives one from the process
(noise to data: T first). Integrating the other way (t0 < t1, as the likelihood does from t_min
up to T) takes the schedule's grid between the same end points reversed, so both directions share
the same points. Without a schedule a fixed grid is uniform in t.

Each step of a fixed grid is told where it is by a :class:`Position` (a named tuple made when
the step asks, :class:`Positions`): its index, the number of steps, the grid, and whether the step
ends where a diffusion model is not evaluated (sigma = 0, or t below t_min: only the last step of
a grid that ends at 0, as EDM's and k-diffusion's do). Under step-size control every step sees
:data:`CONTROLLED`: no index, no count, no grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .schedules import validate

__all__ = ["Position", "Positions", "CONTROLLED", "TimePlan", "plan_times", "ends_low"]


class Position(NamedTuple):
    """Where a step is. index: 0-based step index; steps: the number of steps of the fixed grid
    (None under step-size control); grid: that grid (float64, on the host), or None, whose points
    ``index`` and ``index + 1`` are the step's t0 and t1 (a step may read its times there); ends_low:
    the step ends where the model is not evaluated (sigma(t1) = 0 or t1 < t_min); lengths: the
    grid's step lengths grid[1:] - grid[:-1] (shared by the positions of a grid, so that making a
    position costs no tensor operation), or this step's own t1 - t0 as a one-element tensor, or
    None with no grid. The grid and its lengths carry no gradient: a step whose times do computes
    from its times. Immutable (a named tuple: ``at._replace(ends_low=...)`` for a changed copy)."""

    index: int = 0
    steps: int | None = None
    grid: torch.Tensor | None = None
    ends_low: bool = False
    lengths: torch.Tensor | None = None

    @property
    def h(self) -> torch.Tensor | None:
        """t1 - t0 as a one-element view of the grid's lengths (or the step's own length; None with
        no grid): a number in arithmetic with a state that costs the step no operation."""
        lengths = self.lengths
        if lengths is None or lengths.dim() == 0:
            return lengths
        return lengths[self.index]

    @property
    def last(self) -> bool:
        """This is the last step of a fixed grid (False under step-size control)."""
        return self.steps is not None and self.index == self.steps - 1

    @property
    def remaining(self) -> int | None:
        """Steps left including this one (None under step-size control)."""
        return None if self.steps is None else self.steps - self.index


#: what a step under step-size control is told: nothing about a grid
CONTROLLED = Position()


def ends_low(process, t: float) -> bool:
    """A time where a diffusion model is not evaluated: below t_min, or where sigma(t) = 0."""
    tol = 1e-12 * max(1.0, process.T)
    tt = torch.tensor([float(t)], dtype=torch.float64)
    return bool(t < process.t_min - tol or float(process.sigma(tt)[0]) == 0.0)


@dataclass(frozen=True)
class TimePlan:
    """A fixed grid (``grid`` set, ``adaptive`` False) or an interval [t0, t1] under step-size
    control. ``positions[i]`` is what step i of a grid is told."""

    t0: float
    t1: float
    grid: torch.Tensor | None = None
    positions: "Positions | tuple" = ()

    @property
    def adaptive(self) -> bool:
        return self.grid is None

    @property
    def steps(self) -> int | None:
        return None if self.grid is None else self.grid.numel() - 1

    @property
    def direction(self) -> float:
        return 1.0 if self.t1 >= self.t0 else -1.0


def _check_steps(steps):
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")


def plan_times(process, t0=None, t1=None, *, steps: int | None = None, schedule=None,
               adaptive: bool = False, check_range: bool = True) -> TimePlan:
    """The plan of a solve. ``process``: the equation's process (None for a plain equation, which
    then needs t0 and t1 or an explicit grid). ``adaptive``: step-size control, which takes the
    interval (an explicit controller overrides steps and schedule). t0 / t1 default to T / t_min of the process. ``check_range``:
    refuse times outside [t_min, T] of the process (a caller with its own interval rule, such as
    the likelihood, checks it itself)."""
    within = process if check_range else None
    if adaptive:
        if t0 is None or t1 is None:
            if process is None:
                raise ValueError("an adaptive solve needs t0 and t1")
            t0 = process.T if t0 is None else t0
            t1 = process.t_min if t1 is None else t1
        t0, t1 = float(t0), float(t1)
        if not (math.isfinite(t0) and math.isfinite(t1)):
            raise ValueError(f"t0 and t1 must be finite, got {t0}, {t1}")
        if within is not None:
            _inside(within, [t0, t1])
        return TimePlan(t0, t1)

    if isinstance(schedule, torch.Tensor) or (schedule is not None and not callable(schedule)):
        grid = validate(schedule, within)
    elif schedule is not None:
        if process is None:
            raise ValueError("a schedule function needs a diffusion equation; pass an explicit tensor of times")
        if steps is None:
            raise ValueError("a schedule function needs steps")
        _check_steps(steps)
        kw = {}
        if t0 is not None:
            kw["t_start"] = float(t0)
        if t1 is not None:
            kw["t_end"] = float(t1)
        if t0 is not None and t1 is not None and float(t1) > float(t0):
            # integrating up (likelihoods): the schedule's points between the same ends, reversed
            grid = schedule(process, steps, t_start=float(t1), t_end=float(t0)).to(torch.float64).flip(0)
        else:
            grid = schedule(process, steps, **kw)
        grid = validate(grid, within)
    else:
        if steps is None:
            raise ValueError("a fixed-step solve needs steps or a schedule")
        _check_steps(steps)
        if t0 is None or t1 is None:
            if process is None:
                raise ValueError("solve needs t0 and t1")
            t0 = process.T if t0 is None else t0
            t1 = process.t_min if t1 is None else t1
        grid = validate(torch.linspace(float(t0), float(t1), steps + 1, dtype=torch.float64), within)
    grid = grid.detach().cpu() if not grid.requires_grad else grid.cpu()
    host = grid.detach()
    low = process is not None and ends_low(process, float(host[-1]))
    return TimePlan(float(host[0]), float(host[-1]), grid, Positions(host, low))


class Positions:
    """The positions of a fixed grid's steps, ``positions[i]`` made when asked for (a sequence of
    length ``steps``): what a step is told, without an object per step that lives as long as the
    solve."""

    __slots__ = ("grid", "ends_low", "lengths", "n")

    def __init__(self, grid: torch.Tensor, ends_low: bool):
        self.grid, self.ends_low = grid, ends_low
        self.lengths = grid[1:] - grid[:-1]
        self.n = self.lengths.shape[0]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Position:
        n = self.n
        if not -n <= i < n:
            raise IndexError(f"step {i} of a grid of {n} steps")
        if i < 0:
            i += n
        return Position(i, n, self.grid, self.ends_low and i == n - 1, self.lengths)

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def _inside(process, times):
    tol = 1e-12 * max(1.0, process.T)
    bad = [t for t in times if not (process.t_min - tol <= t <= process.T + tol)]
    if bad:
        raise ValueError(f"times outside [t_min, T] = [{process.t_min}, {process.T}] of {type(process).__name__}: "
                         f"{bad} (the model is trained on that interval)")
