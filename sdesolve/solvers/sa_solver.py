"""SA-Solver (Xue et al. 2023, "SA-Solver: Stochastic Adams solver for fast sampling of diffusion
models", NeurIPS): a stochastic Adams predictor-corrector in the data prediction.

The SDE family dx = [f x - (1 + tau^2) g^2 score / 2] dt + tau g dW_bar shares the marginals of
the forward process for every tau(t) >= 0 (tau = 0: the probability-flow ODE, tau = 1: the reverse
SDE). In lambda = log(alpha / sigma) its variation-of-constants solution from s to t reads
(the paper's Eq. 11, data prediction D):

    x_t = (sigma_t / sigma_s) e^{-tau^2 h} x_s
          + (1 + tau^2) sigma_t e^{-tau^2 lambda_t} int_{lambda_s}^{lambda_t} e^{(1 + tau^2) l} D(l) dl
          + sigma_t sqrt(1 - e^{-2 tau^2 h}) z,                          h = lambda_t - lambda_s.

SA-Predictor (order p, the paper's Eq. 13): D(l) replaced by the Lagrange polynomial in lambda
through the last p model outputs D_i (at lambda_i, newest first), so that
    coefficient of D_i = (1 + tau^2) alpha_t int_{lambda_s}^{lambda_t} e^{(1 + tau^2)(l - lambda_t)} L_i(l) dl
(exact: Gauss-Legendre, 16 nodes, of an analytic integrand). SA-Corrector (order c, Eq. 15): the
same step from x_s again with the new output D(x_t^pred, t) among the c nodes (lambda_t, lambda_s,
...) and the same z; its evaluation is the one the next predictor uses, so one model evaluation
per step. The corrected point is the state; the last step is not corrected. Warm-up: the
predictor order is min(p, i + 1), the corrector's min(c, i + 2) (as diffusers, and the authors'
code); with ``lower_order_final`` the predictor's order at step i is at most N - i, the
corrector's at most N - i + 1.

tau: a float, or a function ``tau(process, t) -> (B,)`` of the start time of the step (the
predictor and its corrector use the same tau). :func:`tau_band` is the authors' default: 1 on the
middle of the time range (timesteps 200-800 of 1000 in their code and diffusers), 0 elsewhere.
At 20-40 evaluations on the digits model tau = 1 everywhere came closer to the 1000-step
Euler-Maruyama reference than the band (paired FD difference band - tau 1 at 30 NFE:
+1.18 [0.26, 2.33], n = 2000; ``benchmarks/results/sde_reference*.md``); the default stays the
band, chosen at 5-10 evaluations.

Noise: the predictor of step i draws one normal (draw 0 of step i); the corrector of the next
step reuses it (it is kept in the state).

Peer difference: the authors' code and diffusers' SASolverScheduler add, whenever the order is 2,
a term of O(h^3) to the first two coefficients ("similar to UniPC", empirically better images;
not in the paper). ``order2_correction=True`` adds it (needed for equality with diffusers); by
default we follow the paper. tests/test_sa_restart.py checks both.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..schedules import time_uniform
from .base import CONTROLLED, Step, per_sample
from .diffusion import DiffusionSolver, multistep_order
from .exponential import LogSNRPoint, data_step, point
from .multistep import lagrange_integrals

__all__ = ["SASolver", "tau_band"]


def tau_band(value: float = 1.0, lo: float = 0.2, hi: float = 0.8):
    """tau = ``value`` where lo <= (t - t_min) / (T - t_min) <= hi, 0 elsewhere (the SA-Solver
    authors' default with value 1, lo 0.2, hi 0.8, on DDPM's timesteps 200..800 of 1000)."""
    value, lo, hi = float(value), float(lo), float(hi)

    def tau(process, t):
        u = (t - process.t_min) / (process.T - process.t_min)
        inside = (u >= lo - 1e-12) & (u <= hi + 1e-12)
        return torch.where(inside, torch.full_like(t, value), torch.zeros_like(t))
    tau.__name__ = f"tau_band({value}, {lo}, {hi})"
    return tau


@dataclass(frozen=True)
class _SAState:
    """The history: the last outputs and their lambdas, and what the coming corrector redoes."""

    lams: tuple = ()     # lambdas of the last outputs (newest last)
    outs: tuple = ()     # the last model outputs D (newest last)
    x_prev: torch.Tensor | None = None    # the point the last predictor started from
    a_prev: LogSNRPoint | None = None     # its LogSNR point
    z_prev: torch.Tensor | None = None    # the normal the last predictor drew
    c_order: int = 0                      # the order of the coming corrector


def _weights(a, b, nodes: list, tau2: torch.Tensor) -> list:
    """(1 + tau^2) alpha_b int_{lam_a}^{lam_b} e^{(1 + tau^2)(l - lam_b)} L_i(l) dl, per sample."""
    k = (1.0 + tau2)[..., None]
    return lagrange_integrals(nodes, lambda lam: lam, a.lam, b.lam,
                              lambda lam: torch.exp(k * (lam - b.lam[..., None])) * k * b.alpha[..., None], 16)


class SASolver(DiffusionSolver):
    """SA-Solver (Xue et al. 2023): stochastic Adams predictor (order 1-4) and corrector (order
    1-4, 0 for none), data prediction, with variance control tau (float or ``tau(process, t)``);
    tau = 0 integrates the probability-flow ODE. See the module docstring. Default grid:
    ``time_uniform(1.5)`` (measured best of the grids valid for every process at 5-10 evaluations
    over the digits model and both mixtures, for the default orders (3, 3) with and without noise;
    the README's defaults table; diffusers' own grid,
    ``schedules.linspace_timesteps(final_zero=False)``, is a valid choice for VP models)."""

    default_schedule = staticmethod(time_uniform(1.5))

    def __init__(self, predictor_order: int = 3, corrector_order: int = 3, tau=None, lower_order_final: bool = True,
                 order2_correction: bool = False):
        if predictor_order not in (1, 2, 3, 4) or corrector_order not in (0, 1, 2, 3, 4):
            raise ValueError(f"SASolver: predictor_order must be 1-4 and corrector_order 0-4, got "
                             f"{predictor_order}, {corrector_order}")
        self.predictor_order, self.corrector_order = predictor_order, corrector_order
        self.order = max(predictor_order, corrector_order)
        self.tau = tau_band() if tau is None else tau
        self.lower_order_final, self.order2_correction = bool(lower_order_final), bool(order2_correction)
        self.stochastic = callable(self.tau) or float(self.tau) > 0
        if self.stochastic:
            self.weak_order = 1.0

    def _tau2(self, process, t):
        tau = self.tau(process, t) if callable(self.tau) else torch.full_like(t, float(self.tau))
        return torch.as_tensor(tau, dtype=torch.float64, device=t.device).expand_as(t) ** 2

    def init(self, eq, t0, y0):
        return _SAState()

    def _update(self, a, b, x, outs, nodes, tau2, z, prev_lam):
        """The stochastic Adams step from point a (state x) to b with outputs/nodes newest first."""
        h = b.lam - a.lam
        cs = _weights(a, b, nodes, tau2)
        if self.order2_correction and len(nodes) == 2:
            # (1 + tau^2) alpha_t (h^2/2 - (k h - 1 + e^{-k h}) / k^2) / r, k = 1 + tau^2, r = the last
            # lambda step (predictor) or h (corrector)
            k = 1.0 + tau2
            core = k * b.alpha * (h**2 / 2 - (h * k - 1.0 + torch.exp(-k * h)) / k**2)
            extra = core / (a.lam - prev_lam) if prev_lam is not None else core / h
            cs = [cs[0] + extra, cs[1] - extra] + cs[2:]
        y = per_sample(b.sigma / a.sigma * torch.exp(-tau2 * h), x) * x
        for c, d in zip(cs, outs):
            y = y + per_sample(c, x) * d
        std = b.sigma * torch.sqrt(-torch.expm1(-2.0 * tau2 * h))
        return y + per_sample(std, x) * z

    def step(self, eq, t0, t1, y0, state, noise, at=CONTROLLED):
        p = eq.process
        a, b = point(p, t0), point(p, t1)
        d0 = eq.denoised(t0, y0)
        x = y0
        if state.x_prev is not None and self.corrector_order > 0:  # SA-Corrector of the last step
            c = state.c_order
            outs = [d0] + list(reversed(state.outs))[: c - 1]
            nodes = [a.lam] + list(reversed(state.lams))[: c - 1]
            tau2 = self._tau2(p, state.a_prev.t)
            x = self._update(state.a_prev, a, state.x_prev, outs, nodes, tau2, state.z_prev, None)
        keep = max(self.predictor_order, self.corrector_order - 1)
        lams = (state.lams + (a.lam,))[-keep:]
        outs_hist = (state.outs + (d0,))[-keep:]
        if at.ends_low:  # into sigma = 0: alpha D, nothing drawn
            return Step(data_step(a, b, x, d0), None, _SAState(lams, outs_hist))
        po = multistep_order(self.predictor_order, len(state.outs), at, self.lower_order_final)
        co = min(self.corrector_order, len(state.outs) + 2)
        if self.lower_order_final and at.steps is not None:
            co = min(co, at.remaining + 1)
        z = noise.normal(x, 0) if self.stochastic else torch.zeros_like(x)
        tau2 = self._tau2(p, a.t)
        outs = list(reversed(outs_hist))[:po]
        nodes = list(reversed(lams))[:po]
        prev_lam = state.lams[-1] if state.lams else None
        y = self._update(a, b, x, outs, nodes, tau2, z, prev_lam)
        return Step(y, None, _SAState(lams, outs_hist, x, a, z, co))
