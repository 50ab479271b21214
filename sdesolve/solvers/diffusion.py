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

Where a step is comes from the loop (``at``, a :class:`~sdesolve.timeplan.Position`): EDM's churn
is divided by the number of steps, multistep solvers lower their order in the first and (with
``lower_order_final``) the last steps, and a step that ends where the model is not evaluated
(``at.ends_low``: sigma = 0, the last point of :func:`append_zero` grids) is first order and
evaluates nothing there.
"""
from __future__ import annotations

import math

import torch

from ..equations import DiffusionEquation
from ..kernels import affine_noise_step
from ..noise import kernel_noise
from ..schedules import karras, uniform
from .base import CONTROLLED, Solver, Step, per_sample
from .exponential import ancestral, data_step, point

__all__ = ["DiffusionSolver", "DDIM", "EDMHeun", "append_zero", "multistep_order"]


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


class DiffusionSolver(Solver):
    """Base class of the solvers that use the process and the denoised prediction."""

    equation = DiffusionEquation


def multistep_order(order: int, history: int, at, lower_order_final: bool, below: int | None = None) -> int:
    """The order of a multistep step: at most ``order``, warm-up min(order, history + 1) with
    ``history`` earlier model outputs; first order into sigma = 0 (``at.ends_low``); with
    ``lower_order_final`` on a grid of N steps (N < ``below`` when given) at most the number of
    steps left, N - i (the last step first order, the one before second order)."""
    if at.ends_low:
        return 1
    k = min(order, history + 1)
    if lower_order_final and at.steps is not None and (below is None or at.steps < below):
        k = min(k, at.remaining)
    return k


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

    def step(self, eq, t0, t1, y0, state, noise, at=CONTROLLED):
        p = eq.process
        a, b = point(p, t0), point(p, t1)
        x0 = eq.denoised(t0, y0)
        if not self.stochastic:
            return Step(data_step(a, b, y0, x0))
        cx, cd, std = ancestral(a, b, self.eta)
        return Step(affine_noise_step(y0, cx, x0, cd, std, **kernel_noise(noise, y0, 0)))  # z drawn in-kernel on CUDA


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

    def step(self, eq, t0, t1, y0, state, noise, at=CONTROLLED):
        p = eq.process
        a = point(p, t0)
        sig0 = torch.exp(-a.lam)
        x = y0 / per_sample(a.alpha, y0)
        t_hat, sig_hat = t0, sig0
        if self.churn > 0:
            if at.steps is None:
                raise ValueError("EDMHeun with churn > 0 divides the churn by the number of steps: it needs the grid "
                                 "(run it on a fixed grid: give steps or a schedule)")
            g = min(self.churn / at.steps, math.sqrt(2.0) - 1.0)
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
        if at.ends_low:
            x_new = x_euler
        else:
            a1 = per_sample(b.alpha, x)
            d2 = (x_euler - eq.denoised(t1, a1 * x_euler)) / per_sample(sig1, x)
            x_new = x + dt * (0.5 * (d + d2))
        return Step(per_sample(b.alpha, x_new) * x_new)
