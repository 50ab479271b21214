"""Adaptive integrators: embedded Runge-Kutta pairs with dense output, and an embedded SDE pair.

Embedded Runge-Kutta pairs (Bosh3, Dopri5, Tsit5). One step of per-sample size h = t1 - t0:
    y1  = y0 + h sum_i b_i k_i                              (order p, propagated)
    err = RMS_j( h sum_i (b_i - b_hat_i) k_ij / (atol + rtol max(|y0_j|, |y1_j|)) )
per sample, computed with y1 in one pass over the stages (:func:`sdesolve.kernels.rk_combine`;
Hairer, Norsett & Wanner, "Solving ODEs I", II.4, eq. (4.11)). The error estimate is O(h^q)
with q = min(p, p_hat) + 1, the exponent the step size controller uses (``error_order``). All
three pairs are FSAL: the last stage is f(t1, y1) and is the next step's first stage (the solver
state), so a step costs s - 1 evaluations.

Dense output: y(t0 + theta h) = y0 + h sum_i b_i(theta) k_i with polynomial weights b_i(theta)
(:class:`DenseOutput`), checked at construction against the continuous order conditions
    sum_i b_i(theta) Phi_i(tau) = theta^|tau| / gamma(tau)   for all trees |tau| <= q
and b_i(1) = b_i. Dopri5 uses Shampine's 4th-order interpolant (Shampine 1986, "Some practical
Runge-Kutta formulas"; the coefficients d_i of Hairer & Wanner's DOPRI5 code, "Solving ODEs I",
II.6), Tsit5 Tsitouras's own 4th-order interpolant (Tsitouras 2011, the b_i(theta) polynomials
published with the pair), Bosh3 the cubic Hermite interpolant through (y0, f0) and (y1, f1),
which is 3rd order (:func:`hermite`).

Used at fixed step (``solve(..., steps=n)`` with no controller) the pairs are plain explicit
Runge-Kutta methods of order p; the error estimate is computed and ignored.

AdaptiveSDE: the embedded Euler-Maruyama / stochastic improved-Euler pair of Jolicoeur-Martineau
et al. 2021, "Gotta Go Fast When Generating Data with Score-Based Models", Algorithm 1, for SDEs
with additive noise. With one Brownian increment dW = sqrt(|h|) z shared by both,
    x'  = x + h f(t0, x)  + g(t0) dW                       (Euler-Maruyama)
    x~  = x + h f(t1, x') + g(t1) dW
    x'' = (x' + x~) / 2                                     (improved Euler / stochastic Heun)
    E   = sqrt( (1/D) sum_j ((x''_j - x'_j) / delta_j)^2 ),
    delta_j = max(atol, rtol max(|x'_j|, |x'_prev,j|))
with D the number of elements of one sample and x'_prev the Euler-Maruyama proposal x' of the
sample's last accepted step (x itself before the first one). A step is accepted when E <= 1;
the new state is x'' (``extrapolate=True``, the paper's choice) or x'. The step size rule
h <- min(h_max, theta h E^{-r}), theta = 0.9, r = 0.9, is the controller's: the solver carries it
in ``controller_options`` and :meth:`sdesolve.controllers.PIController.for_solver` applies it.
The defaults rtol = atol = 1e-2 and the initial step 1e-2 are the paper's PyTorch defaults (for
processes on [0, 1]). Noise: each attempt's z comes from the sample's stream at its attempt
counter. The paper draws a fresh z after a rejection; the controller here by default keeps the
rejected increment and refines it by the Brownian bridge (RSwM1, see
:mod:`sdesolve.controllers`), which removes the bias that rejecting on a noise-dependent error
introduces (large in low dimension: on a 2-D mixture, fresh noise shifts component proportions
by several binomial standard deviations). ``PIController.for_solver(AdaptiveSDE(), bridge=False)``
gives the paper's behaviour.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction as F

import torch

from ..kernels import rk_combine
from ..tensors import rms
from .base import CONTROLLED, Solver, Step, per_sample
from .rk import RungeKutta
from .tableaus import BOSH3, DOPRI5, TSIT5, ButcherTableau, _g, _gamma, rooted_trees

__all__ = ["DenseOutput", "DenseStep", "EmbeddedRungeKutta", "Bosh3", "Dopri5", "Tsit5", "AdaptiveSDE",
           "hermite"]


# --- polynomials as coefficient lists, index = power ------------------------------------------
def _padd(*ps):
    n = max(len(p) for p in ps)
    return [sum(p[i] for p in ps if i < len(p)) for i in range(n)]


def _pmul(*ps):
    out = [1.0]
    for p in ps:
        r = [0.0] * (len(out) + len(p) - 1)
        for i, a in enumerate(out):
            for j, b in enumerate(p):
                r[i + j] += a * b
        out = r
    return out


def _pscale(c, p):
    return [c * x for x in p]


def _peval(p, x):
    return sum(c * x**i for i, c in enumerate(p))


@dataclass
class DenseStep(Step):
    """A step that also hands the controller what dense output needs: its stages."""

    ks: tuple = ()


class DenseOutput:
    """Continuous extension of a Runge-Kutta tableau: b_i(theta) = sum_m P[i][m] theta^m.

    Construction checks b_i(0) = 0, b_i(1) = b_i and the continuous order conditions of order
    ``order`` (exactly, as polynomials in theta: at more points than their degree) with
    tolerance ``tol``.
    """

    def __init__(self, name: str, tableau: ButcherTableau, polys, order: int, tol: float = 1e-12):
        s = tableau.stages
        if len(polys) != s:
            raise ValueError(f"{name}: {len(polys)} weight polynomials for {s} stages")
        self.name, self.tableau, self.order = name, tableau, int(order)
        deg = max(len(p) for p in polys) - 1
        self.P = torch.tensor([list(p) + [0.0] * (deg + 1 - len(p)) for p in polys], dtype=torch.float64)
        for i, p in enumerate(polys):
            if abs(p[0]) > tol or abs(_peval(p, 1.0) - tableau.b[i]) > tol:
                raise ValueError(f"{name}: b_{i}(theta) must vanish at 0 and equal b_{i} at 1")
        A, c = tableau.A, tableau.c
        thetas = [(j + 1) / (deg + self.order + 2) for j in range(deg + self.order + 1)]
        for n in range(1, self.order + 1):
            for tau in rooted_trees(n):
                phi = _g(tau, A, s)
                for th in thetas:
                    lhs = sum(_peval(p, th) * phi[i] for i, p in enumerate(polys))
                    rhs = th**n / _gamma(tau)
                    if abs(lhs - rhs) > tol:
                        raise ValueError(f"{name}: continuous order condition for tree {tau} fails at "
                                         f"theta={th}: {lhs} != {rhs}")

    def weights(self, theta: torch.Tensor) -> torch.Tensor:
        """b_i(theta) for a (n,) tensor of theta: shape (n, stages), float64."""
        theta = theta.to(torch.float64)
        powers = theta[:, None] ** torch.arange(self.P.shape[1], dtype=torch.float64, device=theta.device)
        return powers @ self.P.to(theta.device).T

    def __repr__(self):
        return f"DenseOutput({self.name}, order={self.order})"


def hermite(tableau: ButcherTableau) -> DenseOutput:
    """The cubic Hermite interpolant through (y0, f(t0, y0)) and (y1, f(t1, y1)) of an FSAL pair:
    y(theta) = y0 + h01 (y1 - y0) + h (h10 f0 + h11 f1) with h01 = 3 theta^2 - 2 theta^3,
    h10 = theta - 2 theta^2 + theta^3, h11 = theta^3 - theta^2; third order."""
    if not tableau.fsal:
        raise ValueError(f"{tableau.name}: Hermite dense output needs an FSAL pair (f(t1, y1) as its last stage)")
    h01, h10, h11 = [0.0, 0.0, 3.0, -2.0], [0.0, 1.0, -2.0, 1.0], [0.0, 0.0, -1.0, 1.0]
    s = tableau.stages
    polys = []
    for i in range(s):
        p = _pscale(tableau.b[i], h01)
        if i == 0:
            p = _padd(p, h10)
        if i == s - 1:
            p = _padd(p, h11)
        polys.append(p)
    return DenseOutput(f"{tableau.name} Hermite", tableau, polys, order=3, tol=1e-12)


def _dopri5_shampine() -> DenseOutput:
    """y(theta) = y0 + theta r2 + theta(1-theta) r3 + theta^2 (1-theta) r4 + theta^2 (1-theta)^2 r5,
    r2 = h sum b_i k_i, r3 = h k1 - r2, r4 = 2 r2 - h (k1 + k7), r5 = h sum d_i k_i
    (Hairer & Wanner's DOPRI5 dense output, coefficients d_i after Shampine 1986)."""
    tab = DOPRI5
    d = [float(F(x)) for x in ("-12715105075/11282082432", "0", "87487479700/32700410799",
                               "-10690763975/1880347072", "701980252875/199316789632",
                               "-1453857185/822651844", "69997945/29380423")]
    th, one_m = [0.0, 1.0], [1.0, -1.0]
    q1 = th                                   # theta
    q2 = _pmul(th, one_m)                     # theta (1 - theta)
    q3 = _pmul(th, th, one_m)                 # theta^2 (1 - theta)
    q4 = _pmul(th, th, one_m, one_m)          # theta^2 (1 - theta)^2
    polys = []
    for i, b in enumerate(tab.b):
        first, last = float(i == 0), float(i == tab.stages - 1)
        polys.append(_padd(_pscale(b, q1), _pscale(first - b, q2), _pscale(2 * b - first - last, q3),
                           _pscale(d[i], q4)))
    return DenseOutput("Dopri5 (Shampine)", tab, polys, order=4, tol=1e-12)


def _tsit5_own() -> DenseOutput:
    """Tsitouras 2011's continuous extension of Tsit5 (order 4), its published b_i(theta)."""
    t = [0.0, 1.0]

    def lin(r):  # theta - r
        return [-r, 1.0]

    def quad(p, q):  # theta^2 + p theta + q
        return [q, p, 1.0]

    t2 = _pmul(t, t)
    polys = [
        _pscale(-1.0530884977290216, _pmul(t, lin(1.3299890189751412), quad(-1.4364028541716351, 0.7139816917074209))),
        _pscale(0.1017, _pmul(t2, quad(-2.1966568338249754, 1.2949852507374631))),
        _pscale(2.490627285651252793, _pmul(t2, quad(-2.38535645472061657, 1.57803468208092486))),
        _pscale(-16.54810288924490272, _pmul(lin(1.21712927295533244), lin(0.61620406037800089), t2)),
        _pscale(47.37952196281928122, _pmul(lin(1.203071208372362603), lin(0.658047292653547382), t2)),
        _pscale(-34.87065786149660974, _pmul(lin(1.2), lin(0.666666666666666667), t2)),
        _pscale(2.5, _pmul(lin(1.0), lin(0.6), t2)),
    ]
    # the published coefficients carry ~16 significant digits; TSIT5 itself is checked to 1e-9
    return DenseOutput("Tsit5 (Tsitouras)", TSIT5, polys, order=4, tol=1e-9)


def _check_tolerances(name, rtol, atol):
    rtol, atol = float(rtol), float(atol)
    if not (math.isfinite(rtol) and math.isfinite(atol)) or rtol < 0 or atol < 0 or rtol + atol == 0:
        raise ValueError(f"{name}: tolerances must be finite, non-negative and not both zero; got rtol={rtol}, "
                         f"atol={atol}")
    return rtol, atol


class EmbeddedRungeKutta(RungeKutta):
    """An embedded explicit Runge-Kutta pair with per-sample error norm and dense output.

    ``Step.error`` is the per-sample error norm (B,) that the controller compares with 1;
    ``error_order`` = min(p, p_hat) + 1 is the exponent of its step-size law.
    """

    adaptive = True

    def __init__(self, rtol: float = 1e-3, atol: float = 1e-6, tableau: ButcherTableau | None = None,
                 dense: DenseOutput | None = None):
        super().__init__(tableau)
        tab = self.tableau
        if tab.b_hat is None:
            raise ValueError(f"{tab.name}: an adaptive solver needs an embedded pair (b_hat)")
        if dense is not None:
            self.dense = dense
        self.rtol, self.atol = _check_tolerances(type(self).__name__, rtol, atol)
        self._b_err = tuple(b - bh for b, bh in zip(tab.b, tab.b_hat))

    @property
    def error_order(self) -> float:
        return min(self.tableau.order, self.tableau.embedded_order) + 1

    def start(self, eq, t0, y0):
        """(state, f(t0, y0)) before the first adaptive step: the drift, evaluated once, is both the
        first stage and what the controller's initial step-size selection needs."""
        f0 = eq.drift(t0, y0)
        return f0, f0

    def step(self, eq, t0, t1, y0, state, noise, at=CONTROLLED):
        ks = self.stages(eq, t0, t1, y0, k0=state)
        # y1 and the error norm in one pass over the stages (sdesolve.kernels.rk_combine)
        y1, err = rk_combine(y0, ks, self.tableau.b, t1 - t0, self._b_err, rtol=self.rtol, atol=self.atol)
        return DenseStep(y1, err.to(torch.float64), state=self.next_state(ks), ks=tuple(ks))

    def interpolate(self, y0, y1, ks, h, theta):
        """y(t0 + theta h) for rows with y0, y1, stages ks (row subsets of one step), per-row step
        sizes h and fractions theta in [0, 1] (both (n,) float64)."""
        if self.dense is None:
            return super().interpolate(y0, y1, ks, h, theta)
        W = self.dense.weights(theta)
        acc = None
        for i, k in enumerate(ks):
            c = per_sample(W[:, i], y0) * k
            acc = c if acc is None else acc + c
        y = y0 + per_sample(h, y0) * acc
        return torch.where(per_sample(theta == 1.0, y0).bool(), y1, y)


class Bosh3(EmbeddedRungeKutta):
    """Bogacki & Shampine 1989, 3(2) pair, FSAL; cubic Hermite dense output."""
    tableau = BOSH3
    dense = hermite(BOSH3)


class Dopri5(EmbeddedRungeKutta):
    """Dormand & Prince 1980, 5(4) pair, FSAL; Shampine's 4th-order dense output."""
    tableau = DOPRI5
    dense = _dopri5_shampine()


class Tsit5(EmbeddedRungeKutta):
    """Tsitouras 2011, 5(4) pair, FSAL; Tsitouras's 4th-order dense output."""
    tableau = TSIT5
    dense = _tsit5_own()


class AdaptiveSDE(Solver):
    """Euler-Maruyama / stochastic improved-Euler embedded pair with extrapolation
    (Jolicoeur-Martineau et al. 2021, Algorithm 1; see the module docstring for the formulas).

    Additive noise only (the stochastic Heun scheme converges to the Ito solution only there);
    the reverse SDEs of VP, sub-VP, VE and EDM are additive. The state is x'_prev. Two drift
    evaluations per attempt.

    Batch size: every decision is per sample, but the *model's* output is not bit-identical across
    batch sizes (a network's matmuls round differently for different batch shapes, ~1e-7 relative in
    float32, ~1e-16 in float64). This step-size law (no growth limit, exponent 0.9) feeds the error
    estimate's last bits into the next step size, and the difference grows from step to step
    (measured on a random float64 network: 1e-16 in the step size at the first step, 1e-10 after 80
    steps). A different step sequence is another discretisation of the same bridged Brownian path,
    which at loose tolerances can end in another mode; and once a discrete decision flips (accept or
    reject; use a stored Brownian increment whole or split it) the later increments are drawn at
    other counters. In float32 the difference reaches that scale within a sampling run, so a few
    samples may be entirely different draws between ``--batch`` sizes (each equally valid). In
    float64 (``dtype=torch.float64`` with a float64 model) the decisions hold and the samples agree
    within the tolerance. Fixed-step solvers and the adaptive ODE solvers are batch-invariant to
    rounding in either precision.
    """

    order = 1.0          # strong order of the propagated solution for additive noise
    weak_order = 1.0
    stochastic = True
    adaptive = True
    nfe_per_step = 2
    noise_types = ("additive",)

    def __init__(self, rtol: float = 1e-2, atol: float = 1e-2, extrapolate: bool = True,
                 safety: float = 0.9, exponent: float = 0.9, dt0: float = 1e-2):
        self.rtol, self.atol = _check_tolerances("AdaptiveSDE", rtol, atol)
        self.extrapolate = bool(extrapolate)
        if not (0 < safety <= 1 and exponent > 0 and dt0 > 0):
            raise ValueError(f"AdaptiveSDE: need 0 < safety <= 1, exponent > 0, dt0 > 0; got {safety}, "
                             f"{exponent}, {dt0}")
        self.safety, self.exponent, self.dt0 = float(safety), float(exponent), float(dt0)

    @property
    def controller_options(self) -> dict:
        """The paper's step-size law h <- min(h_max, safety h E^{-exponent}) as PIController
        arguments: an I controller with no growth or shrink limits."""
        return dict(safety=self.safety, pcoeff=0.0, icoeff=self.exponent, min_factor=0.0,
                    max_factor=math.inf, dt0=self.dt0, relax_after_reject=False)

    error_order = 1.0    # the law is h <- theta h E^{-r}: the exponent r is the controller's icoeff

    def init(self, eq, t0, y0):
        return y0

    def step(self, eq, t0, t1, y0, state, noise, at=CONTROLLED):
        h = t1 - t0
        hx = per_sample(h, y0)
        dW = per_sample(h.abs().sqrt(), y0) * noise.normal(y0, 0)
        x1 = y0 + hx * eq.drift(t0, y0) + eq.diffusion(t0, y0) * dW
        x2 = y0 + hx * eq.drift(t1, x1) + eq.diffusion(t1, x1) * dW
        heun = 0.5 * (x1 + x2)
        prev = y0 if state is None else state
        delta = torch.clamp(self.rtol * torch.maximum(x1.abs(), prev.abs()), min=self.atol)
        err = rms((heun - x1) / delta)
        return Step(heun if self.extrapolate else x1, err, state=x1)
