"""``solve`` integrates any equation with any solver; ``sample`` draws from a diffusion model.

On a fixed grid the loop is::

    y = y0
    for i, (t_i, t_{i+1}) in enumerate(grid):
        y, state = solver.step(eq, t_i, t_{i+1}, y, state, noise.at(i))

with ``t`` passed as (B,) float64 tensors and the noise of step i a pure function of (seed,
sample, i). The loop makes no data-dependent host synchronisation: non-finite values are
recorded per sample on the device and reported once, after the loop, with the first step,
time and samples at fault. Adaptive solvers (or an explicit ``controller``) hand the solve to
the controller, which keeps a step size per sample.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .errors import NonFiniteError, _fmt
from .noise import PRIOR_STEP, Noise, streams
from .schedules import validate

__all__ = ["solve", "sample", "Solution", "Stats"]


@dataclass
class Stats:
    """nfe: model (or drift) calls; sample_nfe: per-sample evaluations (summed batch sizes);
    steps: steps taken (for adaptive solves: batched step calls, the most attempts, accepted or
    rejected, of any sample); accepted / rejected: per sample (tensors of shape (B,)) for adaptive
    solves, ints on a fixed grid; wall_time: seconds (adaptive solves)."""

    nfe: int = 0
    sample_nfe: int = 0
    steps: int = 0
    accepted: object = 0
    rejected: object = 0
    wall_time: float | None = None


@dataclass
class Solution:
    y: torch.Tensor
    ts: torch.Tensor | None = None
    ys: torch.Tensor | None = None
    stats: Stats = field(default_factory=Stats)


class _ZeroNoise(Noise):
    """Noise that is all zeros: the last step of a sampler without its noise (score_sde's
    noise removal)."""

    def normal(self, like, draw=0):
        return torch.zeros_like(like)


def _progress(iterable, enabled, total, desc):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress is a nicety, never a requirement
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False)


def _make_noise(seed, batch, device, offset=0) -> Noise:
    return Noise(streams(seed, batch, offset=offset, device=device))


def _grid(eq, t0, t1, steps, schedule):
    process = getattr(eq, "process", None)
    if schedule is not None:
        if callable(schedule):
            if process is None:
                raise ValueError("a schedule function needs a diffusion equation; pass an explicit tensor of times")
            if steps is None:
                raise ValueError("a schedule function needs steps")
            kw = {}
            if t0 is not None:
                kw["t_start"] = float(t0)
            if t1 is not None:
                kw["t_end"] = float(t1)
            schedule = schedule(process, steps, **kw)
        return validate(schedule, process)
    if steps is None:
        raise ValueError("a fixed-step solve needs steps or a schedule")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if t0 is None or t1 is None:
        if process is None:
            raise ValueError("solve needs t0 and t1")
        t0 = process.T if t0 is None else t0
        t1 = process.t_min if t1 is None else t1
    return validate(torch.linspace(float(t0), float(t1), steps + 1, dtype=torch.float64), process)


def solve(eq, y0: torch.Tensor, t0=None, t1=None, solver=None, *, steps: int | None = None, schedule=None,
          controller=None, seed=None, save_at=None, progress: bool = False, final_noise: bool = True,
          check_finite: bool = True, noise: Noise | None = None) -> Solution:
    """Integrate ``eq`` from ``t0`` to ``t1`` starting at ``y0`` (shape (B, ...)).

    ``steps`` / ``schedule`` fix the grid (a schedule function of (process, steps) or an explicit
    1-D tensor of times). An explicit ``controller`` makes the solve adaptive; otherwise an
    adaptive solver (``solver.adaptive``) is step-size controlled when neither ``steps`` nor
    ``schedule`` is given (default controller: the per-sample PI controller with the solver's
    tolerances, :meth:`sdesolve.controllers.PIController.for_solver`), and runs on the fixed grid
    when one is. ``seed`` is an int or a (B,) tensor of
    per-sample seeds (see :mod:`sdesolve.noise`); ``noise`` overrides it with a ready Noise.
    ``save_at``: on a fixed grid, ``True`` saves every grid point; adaptive solves take a tensor
    of times. ``final_noise=False`` makes the last step add no noise.
    """
    if solver is None:
        raise ValueError("solve needs a solver object, e.g. sdesolve.Heun() or sdesolve.EulerMaruyama()")
    if not isinstance(y0, torch.Tensor) or y0.dim() < 1:
        raise ValueError("y0 must be a tensor of shape (B, ...)")
    solver.check(eq)
    B, device = y0.shape[0], y0.device
    if noise is None:
        noise = _make_noise(seed, B, device)
    eq.reset_counts()

    if controller is not None or (solver.adaptive and steps is None and schedule is None):
        if controller is None:
            from .controllers import PIController
            controller = PIController.for_solver(solver)
        return controller.solve(eq, y0, t0, t1, solver, noise=noise, save_at=save_at, progress=progress,
                                check_finite=check_finite)

    grid = _grid(eq, t0, t1, steps, schedule).to(device)
    n = grid.numel() - 1
    tvec = lambda i: grid[i].expand(B)
    y = y0
    plan = {"grid": grid} if getattr(solver, "uses_grid", False) else {}
    state = solver.init(eq, tvec(0), y0, tvec(n), **plan)
    first_bad = torch.full((B,), -1, dtype=torch.int64, device=device) if check_finite else None
    ys = [y0] if save_at is not None else None
    zero = None if final_noise else _ZeroNoise(noise.stream, noise.step)
    for i in _progress(range(n), progress, n, type(solver).__name__):
        nz = noise.at(i) if (final_noise or i < n - 1) else zero
        out = solver.step(eq, tvec(i), tvec(i + 1), y, state, nz)
        y, state = out.y, out.state
        if check_finite:
            bad = ~torch.isfinite(y.reshape(B, -1)).all(1)
            first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, i), first_bad)
        if ys is not None:
            ys.append(y)
    if check_finite:
        _raise_nonfinite(first_bad, grid, eq)
    stats = Stats(nfe=eq.nfe, sample_nfe=eq.sample_nfe, steps=n, accepted=n, rejected=0)
    return Solution(y=y, ts=grid if ys is not None else None, ys=torch.stack(ys) if ys is not None else None,
                    stats=stats)


def _raise_nonfinite(first_bad: torch.Tensor, grid: torch.Tensor, eq):
    bad = first_bad >= 0
    if not bool(bad.any()):  # the one host sync, after the loop
        return
    step = int(first_bad[bad].min())
    samples = torch.nonzero(first_bad == step).flatten().tolist()
    t_from, t_to = float(grid[step]), float(grid[step + 1])
    what = "score model" if getattr(eq, "process", None) is not None else "drift or diffusion"
    raise NonFiniteError(
        f"non-finite values (NaN or Inf) at step {step} (t = {t_from:.6g} -> {t_to:.6g}) in samples "
        f"{_fmt(samples)}: the {what} returned NaN/Inf there", step=step, t=t_from, samples=samples)


def sample(process, score, solver, *, shape=None, x_T=None, steps: int | None = None, schedule=None,
           seed=None, device=None, dtype=None, progress: bool = False, final_noise: bool = True,
           save_at=None, sample_offset: int = 0, **solve_kwargs) -> Solution:
    """Draw samples: x_T from the prior (or given), then the reverse SDE (stochastic solvers)
    or the probability-flow ODE (deterministic ones) from T down to t_min.

    ``shape`` is (B, ...); x_T's noise comes from the same per-sample streams as the solver's
    (step counter ``PRIOR_STEP``), so sample b is the same in any batch. ``sample_offset``
    shifts the global sample indices of an int seed (for sharding a run over processes).
    """
    eq = process.reverse(score) if solver.stochastic else process.probability_flow(score)
    if x_T is None:
        if shape is None:
            raise ValueError("sample needs shape=(B, ...) or x_T")
        shape = tuple(shape)
        noise = _make_noise(seed, shape[0], device, offset=sample_offset)
        z = noise.at(PRIOR_STEP).normal(torch.empty(shape, device=device, dtype=dtype or torch.float32))
        x_T = process.prior_from_normal(z)
    else:
        noise = _make_noise(seed, x_T.shape[0], x_T.device, offset=sample_offset)
        if dtype is not None:
            x_T = x_T.to(dtype)
    if schedule is None and not solver.adaptive:
        schedule = solver.default_schedule
    if callable(schedule) and steps is None and not solver.adaptive:
        raise ValueError(f"sample with {type(solver).__name__} needs steps (or an explicit schedule tensor)")
    t0 = process.T
    t1 = process.t_min
    if isinstance(schedule, torch.Tensor):
        t0 = t1 = None
    return solve(eq, x_T, t0, t1, solver, steps=steps, schedule=schedule, noise=noise, progress=progress,
                 final_noise=final_noise, save_at=save_at, **solve_kwargs)
