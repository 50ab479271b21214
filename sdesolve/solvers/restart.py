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

import torch

from ..equations import DiffusionEquation
from ..schedules import karras
from ..timeplan import plan_times
from .base import CONTROLLED, Solver, Step, per_sample
from .diffusion import EDMHeun
from .exponential import point

__all__ = ["Restart"]


class Restart(Solver):
    """Restart sampling (Xu et al. 2023) around an inner ODE solver; see the module docstring.
    The state is the inner solver's; after the restarts of a step it is the state at the end of
    the last restart, so that a multistep inner solver continues the main grid with the history
    of the restarted trajectory (the outputs of the trajectory it replaced would enter its next
    extrapolation at the size of the re-noising, not of the step).

    Default: EDM Heun inside, one interval rho in [0.06, 0.30] (the paper's setting for its
    CIFAR-10 EDM runs, in sigma) with K = 2 restarts of 3 steps; grid: the inner solver's."""

    equation = DiffusionEquation
    stochastic = False

    def __init__(self, inner: Solver | None = None, intervals=((0.06, 0.30, 2),), restart_steps: int = 3):
        self.inner = inner if inner is not None else EDMHeun()
        if self.inner.stochastic:
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

    def init(self, eq, t0, y0):
        return self.inner.init(eq, t0, y0)

    def _due(self, eq, t0, t1, at) -> list:
        """The intervals whose low end this step reaches: on a grid, the first grid time with
        0 < rho <= rho_lo (read from the host grid); under step-size control, the step that crosses
        rho_lo (one host read)."""
        if at.grid is not None:
            ends = at.grid[at.index:at.index + 2]
        else:
            ends = torch.stack([t0[0], t1[0]]).to(torch.float64).cpu()
        rho0, rho1 = eq.process.sigma_edm(ends.to(torch.float64)).tolist()
        first = at.grid is not None and at.index == 0
        return [j for j, (lo, _, _) in enumerate(self.intervals) if 0.0 < rho1 <= lo and (rho0 > lo or first)]

    def step(self, eq, t0, t1, y0, state, noise, at=CONTROLLED):
        out = self.inner.step(eq, t0, t1, y0, state, noise, at)
        y, state = out.y, out.state
        p = eq.process
        for j in self._due(eq, t0, t1, at):
            lo, hi, k = self.intervals[j]
            t_lo = float(at.grid[at.index + 1]) if at.grid is not None else float(t1[0])
            sub = karras(7.0)(p, self.restart_steps, t_start=float(p.t_of_sigma_edm(torch.tensor(hi, dtype=torch.float64))),
                              t_end=t_lo)
            positions = plan_times(p, schedule=sub).positions
            a_lo, a_hi = point(p, t1), point(p, sub[:1].expand_as(t1).to(t1.device))
            ratio = a_hi.alpha / a_lo.alpha
            std = torch.sqrt((a_hi.sigma**2 - ratio**2 * a_lo.sigma**2).clamp_min(0.0))
            B = y.shape[0]
            grid_dev = sub.to(t1.device)
            for r in range(k):
                y = per_sample(ratio, y) * y + per_sample(std, y) * noise.normal(y, 1 + r)
                st = self.inner.init(eq, grid_dev[0].expand(B), y)
                for m in range(self.restart_steps):
                    o = self.inner.step(eq, grid_dev[m].expand(B), grid_dev[m + 1].expand(B), y, st, noise, positions[m])
                    y, st = o.y, o.state
            state = st  # the history of the restarted trajectory, which the main grid continues
        return Step(y, None, state)
