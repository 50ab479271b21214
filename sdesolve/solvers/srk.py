"""Higher-order fixed-step SDE solvers (Ito), for forward (h > 0) and reverse (h < 0) time.

Milstein (derivative-free; Kloeden & Platen 1992, "Numerical Solution of SDEs", Sec. 11.1,
eq. (1.5)), strong order 1.0 for diagonal and scalar noise. With dW = sqrt(|h|) z,
    x_bar = x + h f(t, x) + g(t, x) sqrt(|h|)
    x1    = x + h f(t, x) + g(t, x) dW + (g(t, x_bar) - g(t, x)) (dW^2 - |h|) / (2 sqrt(|h|))
where (g(t, x_bar) - g(t, x)) / sqrt(|h|) = g g' + O(sqrt(|h|)) replaces the derivative term
g g' of Milstein's scheme x1 = x + f h + g dW + g g' (dW^2 - |h|) / 2 (elementwise g'_i =
dg_i/dx_i for diagonal noise; the derivative of g along g for scalar noise). For additive noise
the correction vanishes and the step is Euler-Maruyama. One drift and two diffusion evaluations.

SRA1 (Rossler 2010, "Runge-Kutta methods for the strong approximation of solutions of stochastic
differential equations", SIAM J. Numer. Anal. 48(3), the SRA1 tableau), strong order 1.5 for
additive noise dx = f(t, x) dt + g(t) dW:
    c0 = (0, 3/4), A0 = [[0, 0], [3/4, 0]], B0 = [[0, 0], [3/2, 0]], c1 = (1, 0),
    alpha = (1/3, 2/3), beta1 = (1, 0), beta2 = (-1, 1)
    H1 = x,   H2 = x + (3/4) h f(t, H1) + (3/2) g(t + h) I10 / |h|
    x1 = x + h (f(t, H1) / 3 + 2 f(t + 3h/4, H2) / 3) + g(t + h) I1 + (g(t) - g(t + h)) I10 / |h|
with I1 = W(t + |h|) - W(t) and I10 = int_t^{t+|h|} (W(s) - W(t)) ds (:meth:`Noise.increments`).
Reverse time: with s = -t the equation integrated with h < 0 reads dx = -f(-s, x) ds +
g(-s) dW_s, a forward additive SDE in s with step |h|; the scheme above in s is the one written
here in t (drift terms scaled by the signed h and evaluated at t + c h, noise terms by |h|), so
the same formulas hold for both directions. Two drift evaluations per step.
"""
from __future__ import annotations

from .base import CONTROLLED, Solver, Step, per_sample
from .sde import normal_for

__all__ = ["Milstein", "SRA1"]


class Milstein(Solver):
    """Derivative-free Milstein scheme (see the module docstring), Ito, strong order 1.0."""

    order = 1.0
    weak_order = 1.0
    stochastic = True
    noise_types = ("diagonal", "scalar", "additive")

    def step(self, eq, t0, t1, y0, state, noise, at=CONTROLLED):
        h = t1 - t0
        hx = per_sample(h, y0)
        sq = per_sample(h.abs().sqrt(), y0)
        f = eq.drift(t0, y0)
        g = eq.diffusion(t0, y0)
        dW = sq * normal_for(eq, noise, y0)
        y = y0 + hx * f + g * dW
        if eq.noise_type != "additive":
            g_bar = eq.diffusion(t0, y0 + hx * f + g * sq)
            y = y + (g_bar - g) * (dW * dW - sq * sq) / (2.0 * sq)
        return Step(y)


class SRA1(Solver):
    """Rossler's SRA1 for additive noise (see the module docstring), strong order 1.5."""

    order = 1.5
    stochastic = True
    nfe_per_step = 2
    noise_types = ("additive",)

    def step(self, eq, t0, t1, y0, state, noise, at=CONTROLLED):
        h = t1 - t0
        hx = per_sample(h, y0)
        habs = per_sample(h.abs(), y0)
        I1, I10 = noise.increments(y0, h, 0)
        g0 = eq.diffusion(t0, y0)
        g1 = eq.diffusion(t1, y0)
        f1 = eq.drift(t0, y0)
        H2 = y0 + 0.75 * hx * f1 + 1.5 * g1 * (I10 / habs)
        f2 = eq.drift(t0 + 0.75 * h, H2)
        y = y0 + hx * (f1 / 3.0 + 2.0 * f2 / 3.0) + g1 * I1 + (g0 - g1) * (I10 / habs)
        return Step(y)
