"""Restart sampling (Xu et al. 2023, "Restart sampling for improving generative processes",
NeurIPS, Algorithm 1).

An ODE sampler that, on reaching the low end of a restart interval [t_lo, t_hi], jumps back to
t_hi by the forward process and integrates the ODE down to t_lo again, K times:

    x_hi = (alpha_hi / alpha_lo) x_lo + sqrt(sigma_hi^2 - (alpha_hi / alpha_lo)^2 sigma_lo^2) z
         (in EDM's variables x~_hi = x~_lo + sqrt(rho_hi^2 - rho_lo^2) z, the paper's Eq. 4),

then ``restart_steps`` steps of the inner solver on Karras' grid (rho = 7) from rho_hi to rho_lo.
The forward noise contracts the accumulated error (the paper's Theorem 2) while the ODE steps
keep the discretisation error small; the inner solver is the paper's EDM Heun by default.

Arguments: ``intervals``, a sequence of (rho_lo, rho_hi, K) in the noise level rho = sigma /
alpha (EDM's sigma); ``restart_steps``, the inner steps of each restart; ``inner``, any one-step
deterministic diffusion solver. On the main grid the interval's low end is taken to be the first
grid time whose noise level is at most rho_lo (the step that reaches it is followed by the
restarts). Model evaluations: the inner solver's over the main grid plus K times its count over
the restart grid per interval.

Noise: restart k (k = 0..K-1) of the interval that ends step i draws draw number 1 + k of step i
(at most 15 restarts per step).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..schedules import karras
from .base import Solver, Step, per_sample
from .diffusion import EDMHeun, append_zero, point

__all__ = ["Restart"]


@dataclass(frozen=True)
class _RestartState:
    inner: object
    i: int = 0
    done: tuple = ()   # indices of the intervals already restarted
    fires: dict | None = None   # on a known grid: step index -> the intervals restarted after it


class Restart(Solver):
    """Restart sampling (Xu et al. 2023) around an inner ODE solver; see the module docstring.

    Default: EDM Heun inside, one interval rho in [0.06, 0.30] (the paper's setting for its
    CIFAR-10 EDM runs, in sigma) with K = 2 restarts of 3 steps; grid: the inner solver's."""

    needs_process = True
    uses_grid = True
    stochastic = False

    def __init__(self, inner: Solver | None = None, intervals=((0.06, 0.30, 2),), restart_steps: int = 3):
        self.inner = inner if inner is not None else EDMHeun()
        if getattr(self.inner, "stochastic", False):
            raise ValueError("Restart: the inner solver must integrate the ODE (a deterministic solver)")
        ivs = []
        for iv in intervals:
            lo, hi, k = float(iv[0]), float(iv[1]), int(iv[2])
            if not (0 < lo < hi) or not 1 <= k <= 15:
                raise ValueError(f"Restart: an interval is (rho_lo, rho_hi, K) with 0 < rho_lo < rho_hi and "
                                 f"1 <= K <= 15, got {iv!r}")
            ivs.append((lo, hi, k))
        if not isinstance(restart_steps, int) or restart_steps < 1:
            raise ValueError(f"Restart: restart_steps must be an integer >= 1, got {restart_steps!r}")
        self.intervals, self.restart_steps = tuple(ivs), restart_steps

    @property
    def order(self):
        return self.inner.order

    @property
    def default_schedule(self):
        return self.inner.default_schedule

    def check(self, eq) -> None:
        super().check(eq)
        self.inner.check(eq)

    def _init_inner(self, solver, eq, t0, y0, t_end, grid):
        if getattr(solver, "uses_grid", False):
            return solver.init(eq, t0, y0, t_end, grid=grid)
        return solver.init(eq, t0, y0, t_end)

    def init(self, eq, t0, y0, t_end=None, grid=None):
        fires = None
        if grid is not None:  # plan the restarts on the host, from the grid
            rho = eq.process.sigma_edm(torch.as_tensor(grid, dtype=torch.float64)).tolist()
            fires = {}
            for j, (lo, _, _) in enumerate(self.intervals):
                i = next((i for i in range(len(rho) - 1) if 0.0 < rho[i + 1] <= lo), None)
                if i is not None:
                    fires.setdefault(i, []).append(j)
        return _RestartState(self._init_inner(self.inner, eq, t0, y0, t_end, grid), fires=fires)

    def _due(self, eq, state, t1) -> list:
        if state.fires is not None:
            return state.fires.get(state.i, [])
        rho1 = float(eq.process.sigma_edm(t1[:1].to(torch.float64)))  # without the grid: one host read
        return [j for j, (lo, _, _) in enumerate(self.intervals) if j not in state.done and 0.0 < rho1 <= lo]

    def step(self, eq, t0, t1, y0, state, noise):
        out = self.inner.step(eq, t0, t1, y0, state.inner, noise)
        y, done = out.y, state.done
        p = eq.process
        for j in self._due(eq, state, t1):
            lo, hi, k = self.intervals[j]
            done = done + (j,)
            sub = karras(7.0)(p, self.restart_steps, t_start=float(p.t_of_sigma_edm(torch.tensor(hi, dtype=torch.float64))),
                              t_end=float(t1[0]))
            a_lo, a_hi = point(p, t1), point(p, sub[:1].expand_as(t1).to(t1.device))
            ratio = a_hi.alpha / a_lo.alpha
            std = torch.sqrt((a_hi.sigma**2 - ratio**2 * a_lo.sigma**2).clamp_min(0.0))
            B = y.shape[0]
            grid_dev = sub.to(t1.device)
            for r in range(k):
                y = per_sample(ratio, y) * y + per_sample(std, y) * noise.normal(y, 1 + r)
                st = self._init_inner(self.inner, eq, grid_dev[0].expand(B), y, grid_dev[-1].expand(B), sub)
                for m in range(self.restart_steps):
                    o = self.inner.step(eq, grid_dev[m].expand(B), grid_dev[m + 1].expand(B), y, st, noise)
                    y, st = o.y, o.state
        return Step(y, None, replace(state, inner=out.state, i=state.i + 1, done=done))
