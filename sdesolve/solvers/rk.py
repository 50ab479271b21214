"""Explicit Runge-Kutta methods over Butcher tableaus.

One step from (t0, y0) with h = t1 - t0 (per sample):
    k_i = f(t0 + c_i h, y0 + h sum_{j<i} a_ij k_j),   y1 = y0 + h sum_i b_i k_i
and, for an embedded pair, the per-sample error norm
    err = RMS( h sum_i (b_i - b_hat_i) k_i / (atol + rtol max(|y0|, |y1|)) ),
accepted when err <= 1. The state between steps is f(t0, y0) when it is known (FSAL pairs hand
their last stage, f(t1, y1), to the next step) and None otherwise; a step given a state uses it
as its first stage.
"""
from __future__ import annotations

from . import tableaus
from .base import CONTROLLED, Solver, Step, linear_step_table, per_sample
from .tableaus import ButcherTableau
from ..tensors import shared_time

__all__ = ["RungeKutta", "Euler", "Heun", "Midpoint", "RK4"]


class RungeKutta(Solver):
    """An explicit Runge-Kutta method given by a :class:`ButcherTableau` (its order is the
    tableau's, checked against the order conditions when the tableau is made). A new method is
    a subclass that names its tableau, or ``RungeKutta(tableau)``."""

    tableau: ButcherTableau

    def __init__(self, tableau: ButcherTableau | None = None):
        if tableau is not None:
            self.tableau = tableau
        self.order = self.tableau.order
        self.nfe_per_step = self.tableau.stages - (1 if self.tableau.fsal else 0)

    def stages(self, eq, t0, t1, y0, k0=None, h=None):
        """The stage derivatives k_1..k_s for one step (``h``: t1 - t0 when the caller has it)."""
        tab = self.tableau
        if h is None:
            h = shared_time(t1) - shared_time(t0)
        hx = None
        ks = []
        for i in range(tab.stages):
            if i == 0 and k0 is not None:
                ks.append(k0)
                continue
            yi = y0
            if i > 0 and hx is None:
                hx = per_sample(h, y0)
            for j, a in enumerate(tab.A[i][:i]):
                if a != 0.0:
                    yi = yi + (a * hx) * ks[j]
            c = tab.c[i]
            ks.append(eq.drift(t0 if c == 0.0 else t1 if c == 1.0 else t0 + c * h, yi))
        return ks

    def combine(self, y0, ks, h, weights):
        hx = per_sample(h, y0)
        acc = None
        for w, k in zip(weights, ks):
            if w != 0.0:
                wk = k if w == 1.0 else w * k  # 1.0 * k is k, bit for bit
                acc = wk if acc is None else acc + wk
        return y0 + hx * acc

    def step(self, eq, t0, t1, y0, state, noise, at=CONTROLLED):
        h = at.h if (at.h is not None and not t0.requires_grad) else shared_time(t1) - shared_time(t0)
        ks = self.stages(eq, t0, t1, y0, k0=state, h=h)
        return Step(self.combine(y0, ks, h, self.tableau.b), state=self.next_state(ks))

    def next_state(self, ks):
        """FSAL: the last stage is f(t1, y1), the next step's first stage; otherwise nothing."""
        return ks[-1] if self.tableau.fsal else None


class Euler(RungeKutta):
    """Forward Euler, order 1: y1 = y0 + h f(t0, y0). On a fixed host grid, for an equation linear
    in the score (:meth:`~sdesolve.Equation.score_linear`: the probability-flow ODE of a
    diffusion, f x + c s), the step y1 = (1 + f h) y0 + c h s with the coefficients of every step
    computed at once (one affine update, :class:`~sdesolve.solvers.base.AffineSteps`)."""
    tableau = tableaus.EULER

    def init(self, eq, t0, y0):
        return linear_step_table(eq, noise=False)

    def step(self, eq, t0, t1, y0, state, noise, at=CONTROLLED):
        row = None if state is None else state.row(at, t0, y0)
        if row is None:
            return Step(super().step(eq, t0, t1, y0, None, noise, at).y, state=state)
        return Step(state.update(y0, row, eq.score_at(t0, y0), None), state=state)


class Heun(RungeKutta):
    """Heun's method (explicit trapezoidal rule), order 2: k-diffusion's and EDM's second-order step."""
    tableau = tableaus.HEUN


class Midpoint(RungeKutta):
    """Explicit midpoint method, order 2."""
    tableau = tableaus.MIDPOINT


class RK4(RungeKutta):
    """The classical Runge-Kutta method, order 4."""
    tableau = tableaus.RK4
