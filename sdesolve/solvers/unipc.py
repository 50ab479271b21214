"""UniPC (Zhao et al. 2023): a unified predictor-corrector for diffusion ODEs, data prediction.

With the data prediction m = D(x, t) in lambda = log(alpha / sigma), a step from t (point s0) to
s with h = lambda_s - lambda_s0 and earlier points s_k (k = 1..p-1), r_k = (lambda_{s_k} -
lambda_s0) / h, D1_k = (m_k - m_0) / r_k:

UniP-p (predictor, Algorithm 2 of the paper in the B(h) form):
    x_s = (sigma_s / sigma_s0) x - alpha_s (e^{-h} - 1) m_0 - alpha_s B(h) sum_k a_k D1_k
UniC-p (corrector, no extra evaluation: it uses m_s = D(x_s^pred, s), the model output of the
next step, with r_p = 1 and D1_p = m_s - m_0):
    x_s^c = (sigma_s / sigma_s0) x - alpha_s (e^{-h} - 1) m_0 - alpha_s B(h) sum_{k<=p} c_k D1_k
where, with hh = -h, g_1 = (e^{hh} - 1) / hh - 1, g_{i+1} = g_i / hh - 1/(i+1)!, the weights
solve  sum_k a_k r_k^{i-1} = i! g_i / B(h)  (i = 1..p-1 for the predictor; i = 1..p with c for
the corrector), except a_1 = 1/2 for UniP-2 and c_1 = 1/2 for UniC-1 (the paper's simplified
choices). B(h) = hh ("bh1") or e^{hh} - 1 ("bh2").

The evaluation at the predicted point serves both the corrector of the step that produced it
and the next predictor; the corrected point replaces the prediction as the state, while the
history keeps the model outputs at the predicted points (as in the paper and diffusers). The
last step has no corrector. UniPC-p (UniP-p + UniC-p) has order of accuracy p + 1 where
the corrector runs. Steps warm up with lower orders; ``lower_order_final`` caps step i's order at
N - i (the last step first order, the one before second order: this needs the grid when
p = 3); ``disable_corrector`` lists step indices whose result is not corrected.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..schedules import time_uniform
from .base import CONTROLLED, Step, per_sample
from .diffusion import DiffusionSolver, multistep_order
from .exponential import LogSNRPoint, data_step, point

__all__ = ["UniPC"]

_VARIANTS = ("bh1", "bh2")


@dataclass(frozen=True)
class _UniState:
    """UniPC's history: the last points' lambdas and model outputs (at the predicted points,
    newest last), and the point the last predictor started from, with its order."""

    lams: tuple = ()
    outs: tuple = ()
    start: LogSNRPoint | None = None
    x_start: torch.Tensor | None = None
    order_prev: int = 0


def _weights(h: torch.Tensor, n: int, variant: str):
    """(B(h), e^{-h} - 1, [b_1..b_n]) per sample, b_i = i! g_i / B(h)."""
    hh = -h
    h_phi_1 = torch.expm1(hh)
    B_h = hh if variant == "bh1" else torch.expm1(hh)
    b, g, fact = [], h_phi_1 / hh - 1.0, 1
    for i in range(1, n + 1):
        b.append(g * fact / B_h)
        fact *= i + 1
        g = g / hh - 1.0 / fact
    return B_h, h_phi_1, b


def _solve(rks: list, b: list) -> list:
    """Per-sample solution c of sum_k c_k r_k^{i-1} = b_i (i = 1..n), n = len(rks)."""
    n = len(rks)
    R = torch.stack([torch.stack([r ** (i - 1) for r in rks], -1) for i in range(1, n + 1)], -2)  # (B, n, n)
    rhs = torch.stack(b[:n], -1).unsqueeze(-1)
    return list(torch.linalg.solve(R, rhs).squeeze(-1).unbind(-1))


class UniPC(DiffusionSolver):
    """UniPC-p with the data prediction, B(h) = ``variant`` ("bh1": h, "bh2": e^h - 1).

    One model evaluation per step: N steps cost N evaluations. The multistep history, the point
    the last predictor started from and its order are in the state.

    Defaults chosen by measurement at 5-10 model evaluations (the README's defaults table, made by
    ``benchmarks/few_step_report.py --defaults-table``): order 2 on the time grid
    ``time_uniform(1.75)``, the best pair over the digits model and the two mixtures (order 3 is
    best on ``time_uniform(1.5)``, a little behind). diffusers' default is order 2 on its own grid
    (``schedules.linspace_timesteps()``).
    """

    default_schedule = staticmethod(time_uniform(1.75))

    def __init__(self, order: int = 2, variant: str = "bh2", lower_order_final: bool = True,
                 disable_corrector: tuple = ()):
        if order not in (1, 2, 3):
            raise ValueError(f"UniPC: order must be 1, 2 or 3, got {order!r}")
        if variant not in _VARIANTS:
            raise ValueError(f"UniPC: variant must be one of {_VARIANTS} (the B(h) of the paper), got {variant!r}")
        self.order, self.variant = order, variant
        self.lower_order_final = bool(lower_order_final)
        self.disable_corrector = tuple(int(i) for i in disable_corrector)

    def init(self, eq, t0, y0):
        return _UniState()

    def step(self, eq, t0, t1, y0, state: _UniState, noise, at=CONTROLLED):
        p = eq.process
        here, there = point(p, t0), point(p, t1)
        m = eq.denoised(t0, y0)
        x = y0
        if state.start is not None and (at.index - 1) not in self.disable_corrector:
            x = self._uni_c(state, here, m)
        lams = (state.lams + (here.lam,))[-self.order:]
        outs = (state.outs + (m,))[-self.order:]
        k = multistep_order(self.order, len(state.outs), at, self.lower_order_final)
        y = self._uni_p(here, there, x, lams, outs, k)
        return Step(y, None, _UniState(lams, outs, here, x, k))

    def _uni_p(self, a, b, x, lams, outs, order):
        h = b.lam - a.lam
        m0 = outs[-1]
        y = data_step(a, b, x, m0)
        if order >= 2:
            rks = [(lams[-1 - k] - a.lam) / h for k in range(1, order)]
            B_h, _, bs = _weights(h, order, self.variant)
            rhos = [torch.full_like(h, 0.5)] if order == 2 else _solve(rks, bs[:order - 1])
            for k in range(1, order):
                y = y + per_sample(-b.alpha * B_h * rhos[k - 1] / rks[k - 1], x) * (outs[-1 - k] - m0)
        return y

    def _uni_c(self, state: _UniState, here, m_t):
        """UniC for the last step (from the previous point s0 to here), with m_t the output here."""
        order = state.order_prev
        a = state.start
        h = here.lam - a.lam
        x, m0 = state.x_start, state.outs[-1]
        rks = [(state.lams[-1 - k] - a.lam) / h for k in range(1, order)]
        B_h, h_phi_1, bs = _weights(h, order, self.variant)
        rhos = [torch.full_like(h, 0.5)] if order == 1 else _solve(rks + [torch.ones_like(h)], bs)
        y = data_step(a, here, x, m0)
        for k in range(1, order):
            y = y + per_sample(-here.alpha * B_h * rhos[k - 1] / rks[k - 1], x) * (state.outs[-1 - k] - m0)
        return y + per_sample(-here.alpha * B_h * rhos[-1], x) * (m_t - m0)
