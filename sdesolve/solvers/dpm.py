"""DPM-Solver (Lu et al. 2022a) and DPM-Solver++ (Lu et al. 2022b): exponential integrators of
the probability-flow ODE in the half log-SNR lambda = log(alpha / sigma).

Step from t to s, h = lambda_s - lambda_t > 0, with the noise prediction eps_hat (DPM-Solver) or
the data prediction x0_hat = D (DPM-Solver++):

DPMSolver(order=k), singlestep, k model evaluations per step at points placed in lambda
  1  x_s = (alpha_s / alpha_t) x - sigma_s (e^h - 1) eps(x, t)                       (= DDIM)
  2  (Algorithm 1, r1 = 1/2)  s1 = t_lambda(lambda_t + h / 2),
     u = (alpha_s1 / alpha_t) x - sigma_s1 (e^{h/2} - 1) eps(x, t),
     x_s = (alpha_s / alpha_t) x - sigma_s (e^h - 1) eps(u, s1)
  3  (Algorithm 2, r1 = 1/3, r2 = 2/3)  s_i = t_lambda(lambda_t + r_i h),
     u1 = (alpha_s1 / alpha_t) x - sigma_s1 (e^{r1 h} - 1) eps_t,      D1 = eps(u1, s1) - eps_t
     u2 = (alpha_s2 / alpha_t) x - sigma_s2 (e^{r2 h} - 1) eps_t
          - sigma_s2 (r2 / r1) ((e^{r2 h} - 1) / (r2 h) - 1) D1,        D2 = eps(u2, s2) - eps_t
     x_s = (alpha_s / alpha_t) x - sigma_s (e^h - 1) eps_t - (sigma_s / r2) ((e^h - 1) / h - 1) D2

DPMSolverPP(order=2|3), multistep (one evaluation per step; DPM-Solver++(2M), Algorithm 2, and
(3M) as in the authors' code), with the previous points' lambda_{-1}, lambda_{-2} and outputs
D_{-1}, D_{-2}:  r0 = (lambda_t - lambda_{-1}) / h,  r1 = (lambda_{-1} - lambda_{-2}) / h,
  base  x_s = (sigma_s / sigma_t) x + alpha_s (1 - e^{-h}) D_0
  2M    + alpha_s (1 - e^{-h}) / 2 * (D_0 - D_{-1}) / r0
  3M    + alpha_s phi_2 D1 - alpha_s phi_3 D2,  phi_2 = (e^{-h} - 1) / h + 1,
        phi_3 = (e^{-h} - 1 + h) / h^2 - 1/2,  D1_0 = (D_0 - D_{-1}) / r0,
        D1_1 = (D_{-1} - D_{-2}) / r1,  D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1),
        D2 = (D1_0 - D1_1) / (r0 + r1)
  The first steps warm up with the lower orders. ``lower_order_final`` (for grids of fewer than
  15 steps, as in diffusers): the last step is first order and, for order 3, the one before is
  second order (that one needs the grid, see :mod:`sdesolve.solvers.diffusion`). A step into
  sigma = 0 is always first order: x_s = alpha_s D_0.
DPMSolverPP(order=2, multistep=False): DPM-Solver++(2S) (Algorithm 1, r = 1/2), two evaluations
  per step: u = (sigma_s1 / sigma_t) x + alpha_s1 (1 - e^{-h/2}) D(x, t),
  x_s = (sigma_s / sigma_t) x + alpha_s (1 - e^{-h}) D(u, s1).
DPMSolverPP(order=2, sde=True): SDE-DPM-Solver++(2M) (Lu et al. 2022b, Appendix; the "midpoint"
  form of k-diffusion's ``sample_dpmpp_2m_sde`` with eta = 1 and of diffusers'
  "sde-dpmsolver++"), integrating the reverse SDE:
  x_s = (sigma_s / sigma_t) e^{-h} x + alpha_s (1 - e^{-2h}) D_0
        + alpha_s (1 - e^{-2h}) / 2 * (D_0 - D_{-1}) / r0 + sigma_s sqrt(1 - e^{-2h}) z.

Singlestep steps that end where the model is not evaluated (sigma = 0, or below t_min) are first
order (one evaluation): DPMSolver(order=k) on N steps makes k N evaluations, k (N - 1) + 1 on a
grid ending at sigma = 0.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..schedules import logsnr, time_uniform
from .base import CONTROLLED, Step, per_sample
from .diffusion import DiffusionSolver, multistep_order
from .exponential import LogSNRPoint, data_coefficients, data_step, noise_step, point

__all__ = ["DPMSolver", "DPMSolverPP", "LOWER_ORDER_FINAL_BELOW"]

#: lower_order_final applies to grids with fewer steps than this (diffusers' rule)
LOWER_ORDER_FINAL_BELOW = 15


class DPMSolver(DiffusionSolver):
    """Singlestep DPM-Solver-1/2/3 with the noise prediction (Lu et al. 2022a, Algorithms 1-2).

    ``order`` model evaluations per step, at intermediate points placed in lambda. The default
    grid is uniform in lambda (the paper's "logSNR" spacing, recommended there for low-resolution
    data; for VP models on images the paper also uses time-uniform grids: pass
    ``schedule=sdesolve.schedules.uniform``).
    """

    default_schedule = staticmethod(logsnr)

    def __init__(self, order: int = 2):
        if order not in (1, 2, 3):
            raise ValueError(f"DPMSolver: order must be 1, 2 or 3, got {order!r}")
        self.order = order
        self.nfe_per_step = order

    def step(self, eq, t0, t1, y0, state, noise, at=CONTROLLED):
        p = eq.process
        a, b = point(p, t0), point(p, t1)
        h = b.lam - a.lam
        x = y0
        e0 = eq.eps(t0, x)
        order = 1 if at.ends_low else self.order
        if order == 1:
            y = noise_step(a, b, x, e0)
        elif order == 2:
            s1 = point(p, p.t_of_lam(a.lam + 0.5 * h))
            y = noise_step(a, b, x, eq.eps(s1.t, noise_step(a, s1, x, e0)))
        else:
            r1, r2 = 1.0 / 3.0, 2.0 / 3.0
            s1 = point(p, p.t_of_lam(a.lam + r1 * h))
            s2 = point(p, p.t_of_lam(a.lam + r2 * h))
            d1 = eq.eps(s1.t, noise_step(a, s1, x, e0)) - e0
            c2 = s2.sigma * (r2 / r1) * (torch.expm1(r2 * h) / (r2 * h) - 1.0)
            d2 = eq.eps(s2.t, noise_step(a, s2, x, e0) - per_sample(c2, x) * d1) - e0
            c3 = b.sigma / r2 * (torch.expm1(h) / h - 1.0)
            y = noise_step(a, b, x, e0) - per_sample(c3, x) * d2
        return Step(y)


def _step_coefficients(a: LogSNRPoint, b: LogSNRPoint, sde: bool) -> tuple:
    """What a DPM-Solver++ multistep step from a to b needs of its two ends (module docstring):
    (c_x, c_0, std, h, phi_2, phi_3, alpha_s, lambda_t) with x_s = c_x x + c_0 D_0 (+ std z for
    the SDE variant; std None otherwise). Elementwise: one step's values or a whole grid's."""
    h = b.lam - a.lam
    cx, c0 = data_coefficients(a, b)
    std = None
    if sde:
        cx = cx * torch.exp(-h)
        c0 = -b.alpha * torch.expm1(-2.0 * h)
        std = b.sigma * torch.sqrt(-torch.expm1(-2.0 * h))
    phi2 = torch.expm1(-h) / h + 1.0
    phi3 = (torch.expm1(-h) + h) / h**2 - 0.5
    return cx, c0, std, h, phi2, phi3, b.alpha, a.lam


def _history_coefficients(c, lam_1, lam_2):
    """The terms of the history (module docstring), from the step's ``c`` of
    :func:`_step_coefficients` and the lambdas of the previous points: c_2 of (2M),
    x_s += c_2 (D_0 - D_{-1}), given lambda_{-1}; or (a_0, a_1) of (3M), x_s += a_0 (D_0 - D_{-1})
    + a_1 (D_{-1} - D_{-2}), given lambda_{-2} too. Arithmetic only: numbers or tensors."""
    _, c0, _, h, phi2, phi3, alpha, lam = c
    r0 = (lam - lam_1) / h
    if lam_2 is None:
        return 0.5 * c0 / r0
    r1 = (lam_1 - lam_2) / h
    rr = r0 + r1
    # D1 = D1_0 + r0 / rr (D1_0 - D1_1), D2 = (D1_0 - D1_1) / rr, written in the differences of D
    return alpha * (phi2 * (1.0 + r0 / rr) - phi3 / rr) / r0, alpha * (phi3 - phi2 * r0) / (rr * r1)


class _GridTable:
    """:func:`_step_coefficients` of every step of one grid, computed together on the host grid, and
    with them the history terms of :func:`_history_coefficients` for a history of the grid's own
    earlier points (c_2 of (2M) from step 1 on, (a_0, a_1) of (3M) from step 2 on). A step reads its
    terms as one-element views (numbers in arithmetic with a state on any device, read without a
    host transfer: a fixed-step loop stays free of host synchronisation), made when asked for (a
    table holds a few tensors, not objects per step that would live as long as the solve). The
    terms that multiply a state also come in float32 (``own``), where an operation with a float32
    state costs less than with a float64 number converted on the fly."""

    def __init__(self, process, grid: torch.Tensor, sde: bool, order: int = 3):
        self.grid = grid
        pts = point(process, grid.to(torch.float64))
        a = LogSNRPoint(pts.t[:-1], pts.alpha[:-1], pts.sigma[:-1], pts.lam[:-1])
        b = LogSNRPoint(pts.t[1:], pts.alpha[1:], pts.sigma[1:], pts.lam[1:])
        n = grid.numel() - 1
        coefficients = _step_coefficients(a, b, sde)
        self.coefficients = coefficients
        self.lam = pts.lam
        nan = torch.full((n,), float("nan"), dtype=torch.float64)
        # the columns that multiply a state: cx, c0, std (SDE only); c_2 of (2M); (a_0, a_1) of (3M)
        columns = list(coefficients[:3]) + [None, None, None]
        lam = pts.lam
        if n > 1:  # step i >= 1 after the point i - 1: c_2 of (2M)
            tail = tuple(c[1:] if c is not None else None for c in coefficients)
            columns[3] = torch.cat([nan[:1], _history_coefficients(tail, lam[:-2], None)])
        if n > 2 and order == 3:  # step i >= 2 after the points i - 1 and i - 2: (a_0, a_1) of (3M)
            tail = tuple(c[2:] if c is not None else None for c in coefficients)
            a0, a1 = _history_coefficients(tail, lam[1:-2], lam[:-3])
            columns[4], columns[5] = torch.cat([nan[:2], a0]), torch.cat([nan[:2], a1])
        self.typed = {torch.float64: columns}

    def step(self, i: int):
        """Step i's coefficients (:func:`_step_coefficients`), one-element views."""
        return tuple(c[i] if c is not None else None for c in self.coefficients)

    def own(self, i: int, k: int, dtype):
        """Step i's (cx, c0, std, history terms) for a step of order k after the grid's own k - 1
        previous points (history terms: None for k = 1, c_2 for k = 2, (a_0, a_1) for k = 3),
        one-element tensors of ``dtype``; std None for the ODE."""
        cols = self.typed.get(dtype)
        if cols is None:
            cols = self.typed[dtype] = [c.to(dtype) if c is not None else None for c in self.typed[torch.float64]]
        std = cols[2][i] if cols[2] is not None else None
        hist = None if k == 1 else cols[3][i] if k == 2 else (cols[4][i], cols[5][i])
        return cols[0][i], cols[1][i], std, hist


class _GridMark(NamedTuple):
    """The end of a multistep step on a grid's table: the next step is step ``index`` of
    ``table``'s grid, and the last ``own`` points of the history are that grid's points
    index - 1, index - 2, ... (a history handed over from elsewhere, as by Restart, has fewer)."""

    table: _GridTable
    index: int
    own: int


def _add_scaled(y, c, v):
    """y + c v for a coefficient c (one-element, or (B,) per sample): one pass over the state."""
    return torch.addcmul(y, v, per_sample(c, y))


# ------------------------------------------------------------------------------------------------
class DPMSolverPP(DiffusionSolver):
    """DPM-Solver++ with the data prediction (Lu et al. 2022b): multistep (2M)/(3M) by default,
    singlestep (2S) with ``multistep=False``, the SDE variant (2M) with ``sde=True``.

    Multistep solvers make one model evaluation per step; their history, the state, is the tuple
    of the last points' lambdas and model outputs (newest last) and the last step's end point
    (t, alpha, sigma, lambda), reused as the next step's start when the loop hands that step the
    same time tensor (as a fixed grid does). ``lower_order_final`` follows
    diffusers: for grids of fewer than 15 steps the last step is first order (and the one before
    second order, for order 3).

    Default grid ``time_uniform(1.5)``, chosen by measurement at 5-10 model evaluations (the
    README's defaults table, made by ``benchmarks/few_step_report.py --defaults-table``); order 3
    measured better still, order 2 (the 2M method that the name denotes in the literature and in
    k-diffusion and diffusers) stays the default.
    """

    default_schedule = staticmethod(time_uniform(1.5))

    def __init__(self, order: int = 2, multistep: bool = True, sde: bool = False, lower_order_final: bool = True):
        if order not in (1, 2, 3):
            raise ValueError(f"DPMSolverPP: order must be 1, 2 or 3, got {order!r}")
        if not multistep and order != 2:
            raise ValueError(f"DPMSolverPP: the singlestep variant is DPM-Solver++(2S), order 2; got order={order}")
        if sde and (order != 2 or not multistep):
            raise ValueError("DPMSolverPP: the SDE variant is SDE-DPM-Solver++(2M): order=2, multistep=True")
        self.order, self.multistep, self.sde = order, bool(multistep), bool(sde)
        self.lower_order_final = bool(lower_order_final)
        self.stochastic = self.sde
        self.nfe_per_step = 1 if multistep else 2
        if self.sde:
            self.weak_order = 1.0

    def init(self, eq, t0, y0):
        return ((), (), None)

    def step(self, eq, t0, t1, y0, state, noise, at=CONTROLLED):
        if not self.multistep:
            return self._step_2s(eq, t0, t1, y0, at)
        lams, outs, end = state
        x, i, own = y0, at.index, -1
        if at.grid is not None and not t0.requires_grad:  # times that carry a gradient: per step
            # a fixed grid's coefficients, computed for the whole grid at its first step (as
            # diffusers' schedulers do), in place of some thirty operations on one-element tensors
            # per step; ``end`` marks the step and how much of the history is the grid's own
            mark = end if (isinstance(end, _GridMark) and end.table.grid is at.grid) else None
            table = mark.table if mark is not None else _GridTable(eq.process, at.grid, self.sde, self.order)
            own = mark.own if (mark is not None and mark.index == i) else 0
            new_end = _GridMark(table, i + 1, min(own + 1, 2))
            lam0, c = table.lam[i], None
        else:
            p = eq.process
            a = LogSNRPoint(*end) if (isinstance(end, tuple) and end[0] is t0) else point(p, t0)
            b = point(p, t1)
            c = _step_coefficients(a, b, self.sde)
            new_end = (b.t, b.alpha, b.sigma, b.lam)
            lam0 = c[7]
        d0 = eq.denoised(t0, x)
        k = multistep_order(self.order, len(outs), at, self.lower_order_final, LOWER_ORDER_FINAL_BELOW)
        if own >= k - 1:  # on the grid after its own points: every term from the table
            dtype = torch.float32 if (x.dtype == torch.float32 and x.device.type == "cpu") else torch.float64
            cx, c0, std, hist = table.own(i, k, dtype)
        else:
            if c is None:
                c = table.step(i)
            cx, c0, std = c[0], c[1], c[2]
            hist = _history_coefficients(c, lams[-1], lams[-2] if k == 3 else None) if k > 1 else None
        y = _add_scaled(per_sample(cx, x) * x, c0, d0)
        if k == 2:
            y = _add_scaled(y, hist, d0 - outs[-1])
        elif k == 3:
            a0, a1 = hist
            y = _add_scaled(_add_scaled(y, a0, d0 - outs[-1]), a1, outs[-1] - outs[-2])
        if self.sde:
            y = _add_scaled(y, std, noise.normal(x, 0))
        keep = self.order - 1
        history = ((lams + (lam0,))[-keep:], (outs + (d0,))[-keep:]) if keep else ((), ())
        return Step(y, None, history + (new_end,))

    def _step_2s(self, eq, t0, t1, y0, at):
        p = eq.process
        a, b = point(p, t0), point(p, t1)
        x = y0
        d0 = eq.denoised(t0, x)
        if at.ends_low:
            return Step(data_step(a, b, x, d0))
        s1 = point(p, p.t_of_lam(a.lam + 0.5 * (b.lam - a.lam)))
        return Step(data_step(a, b, x, eq.denoised(s1.t, data_step(a, s1, x, d0))))
