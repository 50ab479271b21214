"""Butcher tableaus that check themselves.

A tableau (c, A, b) of an explicit Runge-Kutta method has order p when, for every rooted tree
tau with at most p vertices, the elementary weight equals 1/gamma(tau) (Butcher 2008,
Thm. 315A):  b . g(tau) = 1 / gamma(tau), where for tau = [tau_1, ..., tau_m]
g(tau)_i = prod_k (A g(tau_k))_i and gamma(tau) = |tau| prod_k gamma(tau_k).
Constructing a :class:`ButcherTableau` verifies these conditions for its claimed order (and
for the embedded weights' order), that A is strictly lower triangular and that c = A 1.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from fractions import Fraction as F

import torch

__all__ = ["ButcherTableau", "rooted_trees", "EULER", "HEUN", "MIDPOINT", "RK4", "BOSH3", "DOPRI5", "TSIT5"]


@lru_cache(maxsize=None)
def rooted_trees(n: int) -> tuple:
    """All rooted trees with n vertices, each a sorted tuple of its children's trees."""
    if n == 1:
        return ((),)
    out = set()

    def forests(total):
        # multisets of trees with ``total`` vertices in all, as sorted tuples
        if total == 0:
            yield ()
            return
        for size in range(total, 0, -1):
            for tr in rooted_trees(size):
                for rest in forests(total - size):
                    yield tuple(sorted((tr,) + rest))

    return tuple(sorted(set(forests(n - 1))))


def _tree_size(tau) -> int:
    return 1 + sum(_tree_size(c) for c in tau)


def _gamma(tau) -> int:
    g = _tree_size(tau)
    for c in tau:
        g *= _gamma(c)
    return g


def _g(tau, A, s):
    v = [1.0] * s
    for child in tau:
        gc = _g(child, A, s)
        Agc = [sum(A[i][j] * gc[j] for j in range(s)) for i in range(s)]
        v = [v[i] * Agc[i] for i in range(s)]
    return v


def satisfies_order(A, b, c, p: int, tol: float = 1e-12) -> list:
    """The rooted trees (up to p vertices) whose order condition fails; empty if order >= p."""
    s = len(b)
    bad = []
    for n in range(1, p + 1):
        for tau in rooted_trees(n):
            phi = sum(bi * gi for bi, gi in zip(b, _g(tau, A, s)))
            if abs(phi - 1.0 / _gamma(tau)) > tol:
                bad.append((tau, phi, 1.0 / _gamma(tau)))
    return bad


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit RK method: nodes c, matrix A, weights b of order ``order``; optionally the
    embedded weights ``b_hat`` of order ``embedded_order`` (the error estimate is
    h sum (b_i - b_hat_i) k_i) and FSAL (first stage = last stage of the previous step)."""

    name: str
    c: tuple
    A: tuple
    b: tuple
    order: int
    b_hat: tuple | None = None
    embedded_order: int | None = None
    fsal: bool = False
    tol: float = field(default=1e-12, repr=False)

    def __post_init__(self):
        s = len(self.b)
        A, c = self.A, self.c
        if len(c) != s or len(A) != s or any(len(row) != s for row in A):
            raise ValueError(f"{self.name}: c, A and b must describe {s} stages")
        for i in range(s):
            if any(A[i][j] != 0 for j in range(i, s)):
                raise ValueError(f"{self.name}: A must be strictly lower triangular (row {i})")
            if abs(sum(A[i]) - c[i]) > self.tol:
                raise ValueError(f"{self.name}: c[{i}] = {c[i]} but row {i} of A sums to {sum(A[i])}")
        bad = satisfies_order(A, self.b, c, self.order, self.tol)
        if bad:
            raise ValueError(f"{self.name}: weights b fail {len(bad)} order conditions up to order {self.order}, "
                             f"first for tree {bad[0][0]}: {bad[0][1]} != {bad[0][2]}")
        if self.b_hat is not None:
            bad = satisfies_order(A, self.b_hat, c, self.embedded_order, self.tol)
            if bad:
                raise ValueError(f"{self.name}: embedded weights fail order {self.embedded_order} at tree {bad[0][0]}")
        if self.fsal and (c[-1] != 1 or any(abs(A[-1][j] - self.b[j]) > self.tol for j in range(s))):
            raise ValueError(f"{self.name}: FSAL needs the last row of A equal to b and c[-1] = 1")

    @property
    def stages(self) -> int:
        return len(self.b)


def _f(rows):
    return tuple(tuple(float(F(x)) if isinstance(x, str) else float(x) for x in r) for r in rows)


def _v(xs):
    return tuple(float(F(x)) if isinstance(x, str) else float(x) for x in xs)


EULER = ButcherTableau("Euler", c=(0.0,), A=((0.0,),), b=(1.0,), order=1)

# explicit trapezoidal rule ("Heun's method")
HEUN = ButcherTableau("Heun", c=(0.0, 1.0), A=((0.0, 0.0), (1.0, 0.0)), b=(0.5, 0.5), order=2)

MIDPOINT = ButcherTableau("Midpoint", c=(0.0, 0.5), A=((0.0, 0.0), (0.5, 0.0)), b=(0.0, 1.0), order=2)

# the classical fourth-order method (Kutta 1901)
RK4 = ButcherTableau(
    "RK4", c=(0.0, 0.5, 0.5, 1.0),
    A=((0, 0, 0, 0), (0.5, 0, 0, 0), (0, 0.5, 0, 0), (0, 0, 1.0, 0)),
    b=_v(["1/6", "1/3", "1/3", "1/6"]), order=4)

# Bogacki & Shampine 1989: 3(2) pair, FSAL
BOSH3 = ButcherTableau(
    "Bosh3", c=_v([0, "1/2", "3/4", 1]),
    A=_f([[0, 0, 0, 0], ["1/2", 0, 0, 0], [0, "3/4", 0, 0], ["2/9", "1/3", "4/9", 0]]),
    b=_v(["2/9", "1/3", "4/9", 0]), order=3,
    b_hat=_v(["7/24", "1/4", "1/3", "1/8"]), embedded_order=2, fsal=True)

# Dormand & Prince 1980: 5(4) pair, FSAL
DOPRI5 = ButcherTableau(
    "Dopri5", c=_v([0, "1/5", "3/10", "4/5", "8/9", 1, 1]),
    A=_f([
        [0, 0, 0, 0, 0, 0, 0],
        ["1/5", 0, 0, 0, 0, 0, 0],
        ["3/40", "9/40", 0, 0, 0, 0, 0],
        ["44/45", "-56/15", "32/9", 0, 0, 0, 0],
        ["19372/6561", "-25360/2187", "64448/6561", "-212/729", 0, 0, 0],
        ["9017/3168", "-355/33", "46732/5247", "49/176", "-5103/18656", 0, 0],
        ["35/384", 0, "500/1113", "125/192", "-2187/6784", "11/84", 0],
    ]),
    b=_v(["35/384", 0, "500/1113", "125/192", "-2187/6784", "11/84", 0]), order=5,
    b_hat=_v(["5179/57600", 0, "7571/16695", "393/640", "-92097/339200", "187/2100", "1/40"]),
    embedded_order=4, fsal=True)

# Tsitouras 2011, "Runge-Kutta pairs of order 5(4) satisfying only the first column simplifying
# assumption", Table 1 (coefficients as published, to the digits given there)
_TS_C = (0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0)
_TS_A = (
    (0, 0, 0, 0, 0, 0, 0),
    (0.161, 0, 0, 0, 0, 0, 0),
    (-0.008480655492356989, 0.335480655492357, 0, 0, 0, 0, 0),
    (2.897153057105493, -6.359448489975075, 4.3622954328695815, 0, 0, 0, 0),
    (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525, 0, 0, 0),
    (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401, -0.028269050394068383, 0, 0),
    (0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081, 2.324710524099774, 0),
)
_TS_B = _TS_A[-1]
# the published error weights are b - b_hat
_TS_E = (0.001780011052226, 0.000816434459657, -0.007880878010262, 0.144711007173263,
         -0.582357165452555, 0.458082105929187, -1.0 / 66.0)
TSIT5 = ButcherTableau(
    "Tsit5", c=_TS_C, A=_TS_A, b=_TS_B, order=5,
    b_hat=tuple(b - e for b, e in zip(_TS_B, _TS_E)), embedded_order=4, fsal=True, tol=1e-9)
