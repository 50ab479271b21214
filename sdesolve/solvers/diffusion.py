"""Fast samplers for diffusion models: what they share, DDIM, and EDM's Heun sampler.

These solvers do not integrate an equation's drift: they ask it for its process (for alpha(t),
sigma(t) and the half log-SNR lambda(t) = log(alpha / sigma)) and for the model's denoised
prediction ``eq.denoised(t, x)`` (or ``eq.eps``), each call one model evaluation. They work for
any process with Gaussian marginals x_t = alpha x_0 + sigma z (VP, sub-VP, VE, EDM, discrete VP),
with per-sample times: every coefficient is a float64 tensor of shape (B,).

Notation for one step from t (noisier) to s (cleaner), as in Lu et al. (2022):
    lambda_t = log(alpha_t / sigma_t),   h = lambda_s - lambda_t > 0,
    x_s = (sigma_s / sigma_t) x_t + alpha_s (1 - e^{-h}) x0_hat      (first order, data form)
        = (alpha_s / alpha_t) x_t - sigma_s (e^h - 1) eps_hat          (first order, noise form)

DDIM(eta)     Song, Meng & Ermon (2021), Eq. 12 and 16, in alpha / sigma form:
                  x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z,
                  c = eta (sigma_s / sigma_t) sqrt(sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2)
                    = eta sigma_s sqrt(1 - e^{-2h}),
              i.e. the standard deviation of the forward posterior q(x_s | x_t, x_0) scaled by eta
              (for VP: eta sqrt((1 - a_s) / (1 - a_t)) sqrt(1 - a_t / a_s), a = alpha^2).
              eta = 0 is deterministic (first-order DPM-Solver), eta = 1 is DDPM's ancestral step.
EDMHeun       Karras et al. (2022), Algorithm 2: Heun's method on dx~/dsigma = (x~ - D) / sigma in
              the variance-exploding variable x~ = x / alpha, sigma = sigma / alpha (what
              k-diffusion calls sigma), with optional stochastic churn; the step into sigma = 0
              (or below t_min, where the model is not evaluated) is an Euler step.

Grids. Multistep solvers lower their order in the last steps and EDM's churn is divided by the
number of steps, so these solvers plan from the whole grid when they are given it:
``init(eq, t0, y0, t_end, grid=grid)`` (the class attribute ``uses_grid`` says so). Given only
``t_end``, they find the last step by comparing times with ``t_end``. The final grid point may be
t = 0 (sigma = 0 for VP, sub-VP and EDM), where nothing is evaluated: see :func:`append_zero`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from ..kernels import affine_noise_step, noise_source
from ..schedules import karras, uniform
from .base import Solver, Step, per_sample

__all__ = ["DiffusionSolver", "DDIM", "EDMHeun", "append_zero", "GridPlan", "StepCount", "step_order",
           "first_order_mask", "point"]


def append_zero(schedule):
    """A schedule ending at t = 0: ``schedule(process, steps - 1)`` followed by 0.

    This is EDM's and k-diffusion's grid, whose last step goes to sigma = 0 (for VP, sub-VP and
    EDM processes t = 0 is sigma = 0), e.g. ``append_zero(karras(7.0))``: ``steps`` steps, the
    last of which is a first-order (Euler / DDIM) step that evaluates nothing at t = 0.
    """
    def schedule_to_zero(process, steps: int, t_start=None, t_end=None) -> torch.Tensor:
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 2:
            raise ValueError(f"append_zero needs steps >= 2 (one step goes to t = 0), got {steps!r}")
        grid = schedule(process, steps - 1, t_start=t_start, t_end=t_end)
        if float(grid[-1]) == 0.0:  # t_min = 0 already (e.g. DiscreteVP): no second zero
            return schedule(process, steps, t_start=t_start, t_end=t_end)
        return torch.cat([grid, grid.new_zeros(1)])
    schedule_to_zero.__name__ = f"append_zero({getattr(schedule, '__name__', schedule)})"
    return schedule_to_zero


@dataclass(frozen=True)
class GridPlan:
    """What a solver knows about the grid it runs on.

    steps: the number of steps (None when the solver was not given the grid); t_end: (B,) end
    times; ends_low: the last step ends where the model is not evaluated (sigma = 0 or t < t_min).
    """

    steps: int | None
    t_end: torch.Tensor | None
    ends_low: bool


@dataclass(frozen=True)
class _Point:
    """alpha, sigma, lambda at per-sample times t: float64 tensors of shape (B,)."""

    t: torch.Tensor
    alpha: torch.Tensor
    sigma: torch.Tensor
    lam: torch.Tensor


def point(process, t: torch.Tensor) -> _Point:
    """alpha(t), sigma(t) and lambda(t) of ``process`` at per-sample times t (B,), float64."""
    t = t.to(torch.float64)
    return _Point(t, torch.exp(process.log_alpha(t)), process.sigma(t), process.lam(t))


def _low(process, t: torch.Tensor) -> torch.Tensor:
    """Per-sample mask: t is where the model is not evaluated (sigma = 0 or t below t_min)."""
    tol = 1e-12 * max(1.0, process.T)
    return (t < process.t_min - tol) | (process.sigma(t) == 0)


class DiffusionSolver(Solver):
    """Base class of the solvers that use the process and the denoised prediction."""

    needs_process = True
    #: plans from the whole grid when ``init`` is given it (``grid=``)
    uses_grid = True

    def plan(self, eq, t_end: torch.Tensor | None, grid: torch.Tensor | None) -> GridPlan:
        p = eq.process
        if grid is not None:
            grid = torch.as_tensor(grid, dtype=torch.float64)
            last = grid[-1:]
            return GridPlan(grid.numel() - 1, t_end, bool(_low(p, last).any()))
        if t_end is None:
            return GridPlan(None, None, False)
        return GridPlan(None, t_end, bool(_low(p, t_end.to(torch.float64)).any()))  # one sync, before the loop

    def _last_low(self, eq, plan: GridPlan, i: int, t1: torch.Tensor) -> bool:
        """Whether step i (to t1) ends where the model must not be evaluated (host-level)."""
        if not plan.ends_low:
            return False
        if plan.steps is not None:
            return i == plan.steps - 1
        return bool(_low(eq.process, t1).any())  # without the grid: one check on the times

    def _is_last(self, plan: GridPlan, i: int, t1: torch.Tensor):
        """Step i is the last one: a Python bool when the grid is known, else a (B,) mask."""
        if plan.steps is not None:
            return i == plan.steps - 1
        if plan.t_end is None:
            return False
        return t1 == plan.t_end.to(t1.device)


@dataclass(frozen=True)
class StepCount:
    """The state of a one-step solver: its grid plan and the index of the next step."""

    plan: GridPlan
    i: int = 0


def step_order(solver_order: int, i: int, plan: GridPlan, lower_order_final: bool, below: int | None) -> int:
    """The order of multistep step i: warm-up min(order, i + 1), and with ``lower_order_final``
    on a known grid of N steps (N < ``below`` when given) at most N - i."""
    k = min(solver_order, i + 1)
    if lower_order_final and plan.steps is not None and (below is None or plan.steps < below):
        k = min(k, plan.steps - i)
    return k


def first_order_mask(solver: DiffusionSolver, plan: GridPlan, i: int, t1, b: _Point, lower_order_final: bool,
                     below: int | None) -> torch.Tensor:
    """(B,) mask of the samples whose step i must be first order although its planned order is
    higher: a step into sigma = 0 (lambda = inf) and, when the grid is not known, the last step
    under ``lower_order_final`` (found by t1 == t_end; N = i + 1 there)."""
    mask = torch.isinf(b.lam)
    if lower_order_final and plan.steps is None and (below is None or i + 1 < below):
        last = solver._is_last(plan, i, t1)
        if isinstance(last, torch.Tensor):
            mask = mask | last
    return mask


# ------------------------------------------------------------------------------------------------


class DDIM(DiffusionSolver):
    """DDIM (Song, Meng & Ermon 2021) for any process; ``eta`` in [0, 1] scales the noise.

    eta = 0 integrates the probability-flow ODE to first order (``stochastic`` is False, so
    :func:`sdesolve.sample` hands it the probability-flow equation); eta > 0 draws one normal per
    step (draw 0) and ``sample`` hands it the reverse SDE. One model evaluation per step.
    """

    order = 1.0
    default_schedule = staticmethod(uniform)

    def __init__(self, eta: float = 0.0):
        eta = float(eta)
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"DDIM: eta must lie in [0, 1], got {eta}")
        self.eta = eta
        self.stochastic = eta > 0
        if self.stochastic:
            self.weak_order = 1.0

    def init(self, eq, t0, y0, t_end=None, grid=None):
        return StepCount(self.plan(eq, t_end, grid))

    def step(self, eq, t0, t1, y0, state, noise):
        p = eq.process
        a, b = point(p, t0), point(p, t1)
        x0 = eq.denoised(t0, y0)
        h = b.lam - a.lam
        one_m = -torch.expm1(-2.0 * h)  # 1 - e^{-2h}
        if self.eta == 0.0:
            cx = b.sigma / a.sigma
            cd = -b.alpha * torch.expm1(-h)
            y = per_sample(cx, y0) * y0 + per_sample(cd, y0) * x0
        else:
            e2 = torch.exp(-2.0 * h)
            keep = torch.sqrt((1.0 - self.eta**2 * one_m).clamp_min(0.0))  # sqrt(sigma_s^2 - c^2) / sigma_s
            cx = b.sigma / a.sigma * keep
            # alpha_s - alpha_t sqrt(sigma_s^2 - c^2) / sigma_t, written without cancellation
            cd = b.alpha * one_m * (1.0 + self.eta**2 * e2) / (1.0 + torch.exp(-h) * keep)
            c = self.eta * b.sigma * torch.sqrt(one_m)
            y = affine_noise_step(y0, cx, x0, cd, c, **noise_source(noise, y0, 0))  # fused; z drawn in-kernel on CUDA
        return Step(y, None, replace(state, i=state.i + 1))


# ------------------------------------------------------------------------------------------------
class EDMHeun(DiffusionSolver):
    """EDM's stochastic Heun sampler (Karras et al. 2022, Algorithm 2), for any process.

    In x~ = x / alpha(t) and sigma = sigma_edm(t), step i from sigma_i to sigma_{i+1}:
        gamma = min(churn / N, sqrt(2) - 1) if s_tmin <= sigma_i <= s_tmax else 0
        sigma^ = (1 + gamma) sigma_i,  x^ = x~ + sqrt(sigma^2 - sigma_i^2) s_noise z
        d = (x^ - D(x^; sigma^)) / sigma^,   x' = x^ + (sigma_{i+1} - sigma^) d
        x~_{i+1} = x^ + (sigma_{i+1} - sigma^) (d + d') / 2,  d' = (x' - D(x'; sigma_{i+1})) / sigma_{i+1}
    except that a step into sigma = 0 (or below t_min) keeps the Euler value x'. N is the number
    of steps, so ``churn > 0`` needs the grid (``init(..., grid=)``). NFE = 2N, or 2N - 1 on a
    grid ending at sigma = 0 (``append_zero(karras(7))``, the default, as in EDM). With churn = 0
    this is deterministic and agrees with ``Heun`` on the EDM process (alpha = 1, sigma = t).
    """

    order = 2.0
    nfe_per_step = 2
    default_schedule = staticmethod(append_zero(karras(7.0)))

    def __init__(self, churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"),
                 s_noise: float = 1.0):
        if churn < 0:
            raise ValueError(f"EDMHeun: churn must be >= 0, got {churn}")
        self.churn, self.s_tmin, self.s_tmax, self.s_noise = float(churn), float(s_tmin), float(s_tmax), float(s_noise)
        self.stochastic = self.churn > 0
        if self.stochastic:
            self.weak_order = 1.0

    def init(self, eq, t0, y0, t_end=None, grid=None):
        plan = self.plan(eq, t_end, grid)
        if self.churn > 0 and plan.steps is None:
            raise ValueError("EDMHeun with churn > 0 divides the churn by the number of steps: it needs the "
                             "grid (solver.init(eq, t0, y0, t_end, grid=grid))")
        return StepCount(plan)

    def step(self, eq, t0, t1, y0, state, noise):
        p = eq.process
        a = point(p, t0)
        sig0 = torch.exp(-a.lam)
        x = y0 / per_sample(a.alpha, y0)
        t_hat, sig_hat = t0, sig0
        if self.churn > 0:
            g = min(self.churn / state.plan.steps, math.sqrt(2.0) - 1.0)
            inside = (sig0 >= self.s_tmin) & (sig0 <= self.s_tmax)
            gamma = torch.where(inside, torch.full_like(sig0, g), torch.zeros_like(sig0))
            sig_hat = sig0 * (1.0 + gamma)
            t_hat = torch.where(gamma > 0, p.t_of_sigma_edm(sig_hat), t0)
            amp = torch.sqrt(sig_hat**2 - sig0**2) * self.s_noise
            x = x + per_sample(amp, y0) * noise.normal(y0, 0)
        d = (x - eq.denoised(t_hat, per_sample(torch.exp(p.log_alpha(t_hat)), x) * x)) / per_sample(sig_hat, x)
        b = point(p, t1)
        sig1 = torch.exp(-b.lam)
        dt = per_sample(sig1 - sig_hat, x)
        x_euler = x + dt * d
        if self._last_low(eq, state.plan, state.i, t1):
            x_new = x_euler
        else:
            a1 = per_sample(b.alpha, x)
            d2 = (x_euler - eq.denoised(t1, a1 * x_euler)) / per_sample(sig1, x)
            x_new = x + dt * (0.5 * (d + d2))
        return Step(per_sample(b.alpha, x_new) * x_new, None, replace(state, i=state.i + 1))
