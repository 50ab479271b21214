"""Adams-type multistep samplers on the probability-flow ODE in the noise level: iPNDM, LMS, DEIS.

All three integrate the probability-flow ODE in the variance-exploding variables of Karras et al.
(2022, EDM, Sec. 4): x~ = x / alpha(t) and the noise level rho = sigma(t) / alpha(t) = e^{-lambda}
(what k-diffusion calls sigma, DEIS calls rho), where it reads

    dx~ / drho = eps(x, t),     eps = E[z | x_t = x] = (x~ - D) / rho,

for any process with Gaussian marginals (VP, sub-VP, VE, EDM, discrete VP). A step from t_a to
t_b extrapolates eps from the current and the k - 1 previous nodes by the polynomial through them
(in a variable v), and integrates it exactly over rho:

    x~_b = x~_a + sum_j c_j eps_j,    c_j = int_{rho_a}^{rho_b} L_j(v(rho)) drho,

with L_j the Lagrange basis on the nodes v_j; then x_b = alpha_b x~_b. One model evaluation per
step; the history (past eps and nodes) travels in the state; the first steps warm up with lower
orders, min(order, i + 1).

IPNDM(order)     the improved pseudo-numerical method of Zhang & Chen (2023, DEIS paper, Sec. 5
                 and App. "iPNDM"): Adams-Bashforth with the constant-step coefficients
                 (1), (3, -1)/2, (23, -16, 5)/12, (55, -59, 37, -9)/24, multiplied by rho_b - rho_a,
                 on any grid. Order k on uniform-in-rho grids; on other grids the constant-step
                 weights are not consistent beyond first order, yet it is the method published
                 with EDM's grid (rho = 7) in Zhou et al. (2024), diff-sampler. diffusers'
                 IPNDMScheduler is order 4 on its own grid.
IPNDM(variable=True)  the variable-step Adams-Bashforth method (Hairer, Norsett & Wanner, Solving
                 ODEs I, Sec. III.1, Eq. 1.5): c_j integrates the Lagrange polynomial in rho
                 exactly; it is order k on any grid. diff-sampler's "iPNDM_v" agrees with it for
                 k <= 2 but for k = 3, 4 uses other weights, which integrate polynomials of degree
                 k - 1 exactly only on constant steps (tests/test_multistep.py shows both facts);
                 we follow the textbook method.
LMS(order)       k-diffusion's ``sample_lms`` (and diffusers' LMSDiscreteScheduler): the same
                 variable-step Adams-Bashforth method in rho, orders 1-4 (default 4).
DEIS(order)      the diffusion exponential integrator sampler (Zhang & Chen 2023, Eq. 14-15,
                 "tAB-r"): eps extrapolated by the polynomial of degree r = ``order`` in the
                 process's time t through r + 1 nodes, integrated exactly against drho (this is
                 the exponential integrator x_b = Psi x_a + sum C_j eps_j written in x~); order
                 r + 1. ``order=0`` is DDIM. ``in_log_rho=True`` interpolates in log rho instead:
                 diffusers' DEISMultistepScheduler (``solver_type="logrho"``, whose
                 ``solver_order`` p is our ``order`` p - 1). The paper's rhoAB (polynomial in rho)
                 is :class:`LMS`.

The integrals c_j: over rho by Gauss-Legendre quadrature (exact for polynomials in rho, i.e. for
IPNDM(variable=True) and LMS; for DEIS a smooth integrand: t(rho) is analytic in rho for the VP,
VE and EDM processes; 32 nodes), or over w = log rho with drho = e^w dw for the log-rho variant.

Analytical first step (``afs=True``; Zhou et al. 2024, AMED, Sec. 4.3): the first step uses
eps ~= x / sqrt(alpha^2 + sigma^2) (in EDM's variables x~ / sqrt(1 + rho^2)) instead of the model:
at sigma_max >> the data scale the data prediction is close to the data mean, taken to be 0. It
saves one model evaluation (one more step for the same budget); its error is about
rho_0 |E x_0| / (1 + rho_0^2) per coordinate, and grows when the data are far from zero mean or
the first noise level is not much larger than the data's scale.

``lower_order_final``: as diffusers' DPM-Solver++ and DEIS, on grids of fewer than 15 steps the
last step is first order (and the one before at most second order). Off by default (the papers
and k-diffusion do not lower the order); the diffusers oracle switches it on.
"""
from __future__ import annotations


import torch

from ..schedules import logsnr, time_uniform
from .base import CONTROLLED, Step, per_sample
from .diffusion import DiffusionSolver, multistep_order
from .exponential import point

__all__ = ["IPNDM", "LMS", "DEIS", "AB_COEFFICIENTS"]

#: constant-step Adams-Bashforth weights, newest first (Hairer et al., Table III.1.1)
AB_COEFFICIENTS = {1: (1.0,), 2: (1.5, -0.5), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}

LOWER_ORDER_FINAL_BELOW = 15

_GL_CACHE: dict = {}


def _gauss_legendre(n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights of n-point Gauss-Legendre quadrature on [0, 1], float64."""
    key = (n, device)
    if key not in _GL_CACHE:
        import numpy as np
        x, w = np.polynomial.legendre.leggauss(n)
        _GL_CACHE[key] = (torch.as_tensor((x + 1) / 2, dtype=torch.float64, device=device),
                          torch.as_tensor(w / 2, dtype=torch.float64, device=device))
    return _GL_CACHE[key]


def lagrange_integrals(nodes: list, v_of_w, w_a: torch.Tensor, w_b: torch.Tensor, drho_dw, n_quad: int) -> list:
    """c_j = int_{w_a}^{w_b} L_j(v(w)) drho/dw dw per sample, for the Lagrange basis L_j on
    ``nodes`` (a list of (B,) tensors, or 0-d where the batch shares its times); Gauss-Legendre
    with ``n_quad`` nodes. Returns (B,) (or 0-d) tensors."""
    u, wq = _gauss_legendre(n_quad, w_a.device)
    w = w_a[..., None] + (w_b - w_a)[..., None] * u            # (B, Q) or (Q,)
    v = v_of_w(w)
    jac = drho_dw(w) * wq * (w_b - w_a)[..., None]
    out = []
    for j, vj in enumerate(nodes):
        L = torch.ones_like(v)
        for m, vm in enumerate(nodes):
            if m != j:
                L = L * (v - vm[..., None]) / (vj - vm)[..., None]
        out.append((L * jac).sum(-1))
    return out


class _Adams(DiffusionSolver):
    """Shared step: x_b = (alpha_b / alpha_a) x_a + alpha_b sum_j c_j eps_j. The state is the
    history (nodes, eps): the last nodes and eps, newest last."""

    max_order = 4
    afs = False
    lower_order_final = False
    #: how many eps the polynomial goes through: order (IPNDM, LMS) or order + 1 (DEIS)
    _points = 1

    @property
    def points(self) -> int:
        return self._points

    def init(self, eq, t0, y0):
        return ((), ())

    def node(self, a) -> torch.Tensor:
        """The interpolation variable at a point (rho by default)."""
        return torch.exp(-a.lam)

    def weights(self, eq, a, b, nodes: list) -> list:
        raise NotImplementedError

    def _first_eps(self, eq, a, y0):
        if self.afs:
            return y0 / per_sample(torch.sqrt(a.alpha**2 + a.sigma**2), y0)
        return eq.eps(a.t, y0)

    def step(self, eq, t0, t1, y0, state, noise, at=CONTROLLED):
        hist_v, hist_e = state
        p = eq.process
        a, b = point(p, t0), point(p, t1)
        e = self._first_eps(eq, a, y0) if at.index == 0 else eq.eps(t0, y0)
        low = at.ends_low and not self._to_zero_ok  # full order into rho = 0 where the weights stay finite
        k = multistep_order(self._points, len(hist_e), at._replace(ends_low=low), self.lower_order_final,
                            LOWER_ORDER_FINAL_BELOW)
        va = self.node(a)
        eps = [e] + list(reversed(hist_e))[: k - 1]
        nodes = [va] + list(reversed(hist_v))[: k - 1]
        cs = self.weights(eq, a, b, nodes)
        incr = per_sample(cs[0], y0) * eps[0]
        for c, ej in zip(cs[1:], eps[1:]):
            incr = incr + per_sample(c, y0) * ej
        y = per_sample(b.alpha / a.alpha, y0) * y0 + per_sample(b.alpha, y0) * incr
        keep = self._points - 1
        return Step(y, None, ((hist_v + (va,))[-keep:], (hist_e + (e,))[-keep:]) if keep else ((), ()))

    #: the weights stay finite for a step into rho = 0 (lambda = inf)
    _to_zero_ok = True


class IPNDM(_Adams):
    """iPNDM (Zhang & Chen 2023): Adams-Bashforth in rho = sigma / alpha, orders 1-4 with a
    lower-order warm start; ``variable=True`` uses the variable-step weights (iPNDM_v, order k on
    any grid); ``afs=True`` takes the first step without the model (see the module docstring).

    Default grid ``logsnr``, chosen by measurement at 5-10 model evaluations (the README's
    defaults table, made by ``benchmarks/few_step_report.py --defaults-table``): over the digits
    model and the two mixtures it was the best grid valid for every process, level with
    ``time_uniform(2.0)`` (which is far better at 5 NFE on the digits model) and well ahead of
    EDM's rho = 7 grid to sigma = 0 on which Zhou et al. (2024) publish iPNDM; ``quadratic``
    measured better still but starts at T, where rho is infinite on a path to pure noise."""

    default_schedule = staticmethod(logsnr)

    def __init__(self, order: int = 4, variable: bool = False, afs: bool = False, lower_order_final: bool = False):
        if order not in (1, 2, 3, 4):
            raise ValueError(f"{type(self).__name__}: order must be 1, 2, 3 or 4, got {order!r}")
        self.order = self._points = order
        self.variable, self.afs, self.lower_order_final = bool(variable), bool(afs), bool(lower_order_final)

    def weights(self, eq, a, b, nodes):
        ra, rb = torch.exp(-a.lam), torch.exp(-b.lam)
        if not self.variable:
            return [(rb - ra) * c for c in AB_COEFFICIENTS[len(nodes)]]
        ident = lambda w: w  # noqa: E731
        return lagrange_integrals(nodes, ident, ra, rb, torch.ones_like, max(2, (len(nodes) + 1) // 2 + 1))


class LMS(IPNDM):
    """k-diffusion's linear multistep sampler (``sample_lms``; diffusers' LMSDiscreteScheduler):
    the variable-step Adams-Bashforth method in rho, orders 1-4 (``IPNDM(order, variable=True)``).
    Default grid ``time_uniform(1.5)``, measured best of the grids valid for every process at
    5-10 evaluations on the digits model and both mixtures, ahead of log-SNR steps and
    k-diffusion's Karras grid to sigma = 0 (the README's defaults table); pass
    ``schedule=append_zero(karras(7.0))`` for k-diffusion's."""

    default_schedule = staticmethod(time_uniform(1.5))

    def __init__(self, order: int = 4, afs: bool = False, lower_order_final: bool = False):
        super().__init__(order, variable=True, afs=afs, lower_order_final=lower_order_final)


class DEIS(_Adams):
    """DEIS tAB-r (Zhang & Chen 2023): the exponential integrator with eps extrapolated by a
    polynomial of degree r = ``order`` (0-3) in the time t; order r + 1. ``in_log_rho=True``:
    the polynomial in log rho (diffusers' "logrho" DEIS, ``solver_order`` = order + 1).
    Default grid ``time_uniform(1.5)``, chosen by measurement at 5-10 model evaluations (the
    README's defaults table, made by ``benchmarks/few_step_report.py --defaults-table``)."""

    default_schedule = staticmethod(time_uniform(1.5))
    n_quad = 32

    def __init__(self, order: int = 3, in_log_rho: bool = False, afs: bool = False, lower_order_final: bool = False):
        if order not in (0, 1, 2, 3):
            raise ValueError(f"DEIS: order (the polynomial degree r of tAB-r) must be 0, 1, 2 or 3, got {order!r}")
        self.order = order
        self._points = order + 1
        self.in_log_rho, self.afs, self.lower_order_final = bool(in_log_rho), bool(afs), bool(lower_order_final)
        # log rho is -inf at rho = 0: a step into sigma = 0 is first order there
        self._to_zero_ok = not self.in_log_rho

    def node(self, a):
        return -a.lam if self.in_log_rho else a.t

    def weights(self, eq, a, b, nodes):
        if len(nodes) == 1:
            return [torch.exp(-b.lam) - torch.exp(-a.lam)]
        if self.in_log_rho:
            return lagrange_integrals(nodes, lambda w: w, -a.lam, -b.lam, torch.exp, self.n_quad)
        p = eq.process
        t_of_rho = lambda r: p.t_of_sigma_edm(r.clamp_min(1e-300)).reshape(r.shape).where(r > 0, torch.zeros_like(r))  # noqa: E731
        return lagrange_integrals(nodes, t_of_rho, torch.exp(-a.lam), torch.exp(-b.lam), torch.ones_like, self.n_quad)
