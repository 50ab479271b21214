"""Step-size controllers: policies, not loops (as in diffrax).

A controller is asked three things by the loop of :func:`sdesolve.solve`: the first step size of
each sample (:meth:`PIController.initial_step`), whether an attempted step is accepted, and the
size of the next one (:meth:`PIController.adapt`). It keeps nothing between calls: the loop
holds the per-sample memory (the previous error, whether the last attempt was rejected).
:class:`FixedGrid` is the trivial policy: walk the grid, accept every step.

The step-size law (PI control: Gustafsson 1991; Soderlind 2002; Hairer & Wanner, "Solving ODEs
II", IV.2), with err_n the error norm of the step (accepted when err_n <= 1) and k the solver's
``error_order`` (the error estimate is O(h^k)):

    accepted:  h_{n+1} = h_n * clip(safety * err_n^{-(pcoeff + icoeff)/k} * err_{n-1}^{pcoeff/k},
                                    min_factor, max_factor)
    rejected:  h_n    <- h_n * clip(safety * err_n^{-(pcoeff + icoeff)/k}, min_factor, 1)

with err_{n-1} the error of the sample's previous accepted step (1 before the first, and at
least 1e-4, as in Hairer's codes). pcoeff = 0, icoeff = 1 is the classical I controller
h * safety * err^{-1/k}; the defaults pcoeff = 0.4, icoeff = 0.3 are Gustafsson's PI values
(alpha = 0.7/k, beta = 0.4/k). After a rejection the next accepted step does not grow
(``relax_after_reject``; Hairer's codes do the same). The loop clips each step so that a sample
lands exactly on the end time (a step that would stop within 1% of the end is stretched to it, as
in Hairer's DOPRI5), and never beyond.

Initial step (per sample; Hairer, Norsett & Wanner, "Solving ODEs I", II.4, "Starting step
size"), with ||.|| the RMS norm scaled by atol + rtol |y0| and p the solver's order:
    d0 = ||y0||, d1 = ||f(t0, y0)||,  h0 = 0.01 d0 / d1  (1e-6 if d0 or d1 < 1e-5)
    d2 = ||f(t0 + h0, y0 + h0 f0) - f0|| / h0
    h1 = (0.01 / max(d1, d2))^{1/(p+1)}  (max(1e-6, 1e-3 h0) if max(d1, d2) <= 1e-15)
    h  = min(100 h0, h1, |t1 - t0|)
(one extra evaluation; f0 is shared with the first step of FSAL solvers). ``dt0`` skips it.
Stochastic solvers keep their Brownian path across rejections (:mod:`sdesolve.brownian`,
``bridge=True``).
"""
from __future__ import annotations

import math

import torch

from .tensors import per_sample, rms

__all__ = ["PIController", "FixedGrid"]


class FixedGrid:
    """The trivial controller: every step of the grid is taken and accepted."""

    adaptive = False

    def __repr__(self):
        return "FixedGrid()"


class PIController:
    """Per-sample PI step-size control (see the module docstring for the law).

    rtol, atol: tolerances for the initial step-size selection (the solvers carry their own error
    norms; :meth:`for_solver` copies theirs). max_steps: attempts (accepted + rejected) allowed per
    sample. dt0: the first step size (magnitude); None selects it per sample. bridge: keep rejected
    Brownian increments and refine them by the Brownian bridge (stochastic solvers).
    """

    adaptive = True

    def __init__(self, rtol: float | None = None, atol: float | None = None, safety: float = 0.9,
                 min_factor: float = 0.2, max_factor: float = 10.0, pcoeff: float = 0.4, icoeff: float = 0.3,
                 max_steps: int = 10_000, dt0: float | None = None, relax_after_reject: bool = True,
                 bridge: bool = True):
        if not 0 < safety <= 1:
            raise ValueError(f"safety must lie in (0, 1], got {safety}")
        if not 0 <= min_factor <= 1 <= max_factor:
            raise ValueError(f"need 0 <= min_factor <= 1 <= max_factor, got {min_factor}, {max_factor}")
        if icoeff <= 0 or pcoeff < 0:
            raise ValueError(f"need icoeff > 0 and pcoeff >= 0, got icoeff={icoeff}, pcoeff={pcoeff}")
        if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1:
            raise ValueError(f"max_steps must be an integer >= 1, got {max_steps!r}")
        if dt0 is not None and not (dt0 > 0 and math.isfinite(dt0)):
            raise ValueError(f"dt0 must be a positive step size, got {dt0}")
        self.rtol = None if rtol is None else float(rtol)
        self.atol = None if atol is None else float(atol)
        self.safety, self.min_factor, self.max_factor = float(safety), float(min_factor), float(max_factor)
        self.pcoeff, self.icoeff = float(pcoeff), float(icoeff)
        self.max_steps, self.dt0, self.relax_after_reject = max_steps, dt0, bool(relax_after_reject)
        self.bridge = bool(bridge)

    @classmethod
    def for_solver(cls, solver, **overrides) -> "PIController":
        """A controller with the solver's tolerances and the step-size law its authors use
        (``solver.controller_options``, e.g. AdaptiveSDE's), updated with ``overrides``."""
        kw = dict(rtol=solver.rtol, atol=solver.atol)
        kw.update(solver.controller_options)
        kw.update(overrides)
        return cls(**kw)

    def __repr__(self):
        return "PIController(" + ", ".join(f"{k}={v!r}" for k, v in vars(self).items()) + ")"

    def initial_step(self, eq, t0: torch.Tensor, y0: torch.Tensor, f0: torch.Tensor, span: torch.Tensor,
                     order: float) -> torch.Tensor:
        """Per-sample |h| by Hairer, Norsett & Wanner's starting-step algorithm (module docstring)."""
        rtol = 1e-3 if self.rtol is None else self.rtol
        atol = 1e-6 if self.atol is None else self.atol
        scale = atol + rtol * y0.abs()
        d0, d1 = rms(y0 / scale), rms(f0 / scale)
        small = (d0 < 1e-5) | (d1 < 1e-5)
        h0 = torch.where(small, torch.full_like(d0, 1e-6), 0.01 * d0 / torch.where(small, torch.ones_like(d1), d1))
        h0 = torch.minimum(h0, span.abs())
        hs = h0 * torch.sign(span)
        f1 = eq.drift(t0 + hs, y0 + per_sample(hs, y0) * f0)
        d2 = rms((f1 - f0) / scale) / h0
        dm = torch.maximum(d1, d2)
        h1 = torch.where(dm <= 1e-15, torch.clamp(h0 * 1e-3, min=1e-6),
                         (0.01 / torch.where(dm <= 1e-15, torch.ones_like(dm), dm)) ** (1.0 / (order + 1)))
        return torch.minimum(torch.minimum(100 * h0, h1), span.abs())

    def adapt(self, err: torch.Tensor, err_prev: torch.Tensor, k: float, accepted: torch.Tensor,
              after_reject: torch.Tensor) -> torch.Tensor:
        """The factor by which each sample's step size changes, given the error norms of its
        attempt (``err``, finite here) and of its previous accepted step."""
        b1 = (self.pcoeff + self.icoeff) / k
        b2 = self.pcoeff / k
        grow = self.safety * err.clamp_min(1e-300) ** (-b1) * torch.where(accepted, err_prev ** b2,
                                                                           torch.ones_like(err))
        upper = torch.where(accepted & ~after_reject, torch.full_like(err, self.max_factor), torch.ones_like(err))
        return torch.minimum(torch.clamp(grow, min=self.min_factor), upper)
