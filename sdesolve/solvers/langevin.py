"""Langevin correctors and annealed Langevin dynamics.

Langevin(snr, n_steps)     score_sde's corrector (Song et al. 2021, Alg. 4-5) with the step size
                           set from a target signal-to-noise ratio, x += eps s + sqrt(2 eps) z,
                           alpha = process.langevin_alpha (1 - beta_i for VP, 1 for VE). Default
                           (``expected_norms=True``): the norms take their values under the
                           Gaussian-noise approximation, E||z||^2 = D and E||s||^2 = D / sigma_t^2,
                           so eps = 2 alpha snr^2 sigma_t^2 does not depend on x (right in any
                           dimension). ``expected_norms=False``: the realized norms per sample,
                           eps_b = 2 alpha (snr ||z_b|| / ||s_b||)^2 (heavy-tailed in low dimension).
PredictorCorrector(p, c)   each step: the corrector at t0, then the predictor from t0 to t1
AnnealedLangevin           NCSN sampling (Song & Ermon 2019, Alg. 1, in the form of NCSNv2's
                           code): at each noise level sigma_i, n_steps updates
                           x += a_i s + sqrt(2 a_i) z with a_i = step_lr sigma_i^2 / sigma_L^2,
                           and the 2020 paper's techniques for choosing sigmas and step_lr

Each Langevin update is one fused call of :mod:`sdesolve.kernels`: the realized-norm rule is
``langevin_step`` (per-sample norms and update, the same z in both, drawn in-kernel on CUDA),
the expected-norm rule and annealed Langevin are ``affine_noise_step`` with per-sample
coefficients (a = 1, b = eps, c = sqrt(2 eps)).
"""
from __future__ import annotations

import math

import torch

from ..equations import DiffusionEquation
from ..kernels import affine_noise_step, langevin_step
from ..noise import Draw, kernel_noise
from .base import CONTROLLED, Solver, Step

__all__ = ["Langevin", "PredictorCorrector", "AnnealedLangevin"]


class Langevin:
    """A Langevin corrector with a per-sample SNR step size (not a solver by itself).

    Default, ``expected_norms=True``: the norms take their values under the Gaussian-noise
    approximation, E||z||^2 = D and E||s||^2 = D / sigma_t^2, so eps = 2 alpha snr^2 sigma_t^2
    does not depend on x and the corrector leaves p_t invariant up to its discretisation, in any
    dimension.

    ``expected_norms=False``: score_sde's realized-norm rule (Song et al. 2021, Alg. 4-5),
    eps_b = 2 alpha (snr ||z_b|| / ||s_b||)^2, computed per sample rather than per batch, so a
    sample's result does not depend on its batch. Caveat: in high dimension ||z_b|| and ||s_b||
    concentrate and the rule is effectively the expected one; in low dimension ||s_b|| -> 0 near
    a mode makes eps_b heavy-tailed (on a 2-D mixture: outliers at |x| of several hundred and
    mode proportions off by 0.1), and since eps depends on x the corrector no longer leaves p_t
    invariant. A sample whose score is exactly zero takes no step (eps_b = 0). The norms are
    summed in float32 for float32 and half-precision states, in float64 for float64 states.
    """

    def __init__(self, snr: float = 0.16, n_steps: int = 1, expected_norms: bool = True):
        if n_steps < 0:
            raise ValueError(f"n_steps must be >= 0, got {n_steps}")
        if snr <= 0:
            raise ValueError(f"snr must be positive, got {snr}")
        self.snr, self.n_steps, self.expected_norms = float(snr), int(n_steps), bool(expected_norms)

    def correct(self, eq, t, dt, x, noise):
        """``n_steps`` Langevin updates of x at times t (iteration j draws ``Draw.CORRECTOR + j``)."""
        for j in range(self.n_steps):
            s = eq.score_at(t, x)
            src = kernel_noise(noise, x, Draw.CORRECTOR + j)
            alpha = eq.process.langevin_alpha(t, dt)
            if self.expected_norms:
                eps = 2.0 * alpha * self.snr**2 * eq.process.sigma(t) ** 2
                x = affine_noise_step(x, 1.0, s, eps, torch.sqrt(2.0 * eps), **src)
            else:
                x = langevin_step(x, s, self.snr, alpha, **src)
        return x

    def __repr__(self):
        return f"Langevin(snr={self.snr}, n_steps={self.n_steps}, expected_norms={self.expected_norms})"


class PredictorCorrector(Solver):
    """Predictor-corrector sampling: ``corrector`` at t0, then one ``predictor`` step to t1.
    With a deterministic predictor it still integrates the reverse SDE's marginals (the corrector
    is stochastic)."""

    stochastic = True
    equation = DiffusionEquation

    def __init__(self, predictor: Solver, corrector: Langevin | None = None):
        if not isinstance(predictor, Solver):
            raise TypeError(f"PredictorCorrector: the predictor must be a solver object, got {type(predictor).__name__}")
        if corrector is not None and not isinstance(corrector, Langevin):
            raise TypeError(f"PredictorCorrector: the corrector must be a Langevin object, got {type(corrector).__name__}")
        self.predictor = predictor
        self.corrector = corrector if corrector is not None else Langevin()
        self.order = predictor.order
        self.nfe_per_step = predictor.nfe_per_step + self.corrector.n_steps
        self.default_schedule = predictor.default_schedule

    def init(self, eq, t0, y0):
        """(the predictor's equation, its state): a deterministic predictor integrates the
        probability-flow ODE of the same process and score (counted on ``eq``)."""
        peq = eq if (self.predictor.stochastic or not eq.is_sde) else eq.companion()
        return peq, self.predictor.init(peq, t0, y0)

    def step(self, eq, t0, t1, y0, state, noise, at=CONTROLLED):
        peq, inner = state if state is not None else self.init(eq, t0, y0)
        x = self.corrector.correct(eq, t0, t1 - t0, y0, noise)
        out = self.predictor.step(peq, t0, t1, x, inner, noise, at)
        return Step(out.y, out.error, (peq, out.state))


class AnnealedLangevin(Solver):
    """Annealed Langevin dynamics (NCSN). Step i of the grid (t_i -> t_{i+1}) runs ``n_steps``
    Langevin updates at the noise level sigma(t_{i+1}); sigma_L is the level at the grid's end.
    With ``denoise=True`` the last step ends with x + sigma_L^2 s(x, sigma_L) (NCSNv2's final
    denoising, one more evaluation). It runs on a fixed grid (sigma_L is the grid's last level)."""

    stochastic = True
    equation = DiffusionEquation

    def __init__(self, n_steps: int = 5, step_lr: float = 2e-5, denoise: bool = True):
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        self.n_steps, self.step_lr, self.denoise = int(n_steps), float(step_lr), bool(denoise)
        self.nfe_per_step = self.n_steps

    def level_step(self, eq, t1, at):
        """a_i = step_lr sigma_i^2 / sigma_L^2 (B,) at the level of t1, sigma_L the grid's last level."""
        if at.grid is None:
            raise ValueError(f"{type(self).__name__} scales its steps by the grid's last noise level: it runs on a "
                             "fixed grid (give steps or a schedule)")
        p = eq.process
        sig_L = p.sigma_edm(at.grid[-1:].to(t1.device))
        return self.step_lr * p.sigma_edm(t1) ** 2 / sig_L**2

    def anneal(self, eq, t1, x, at, noise, after=None):
        """The ``n_steps`` updates of one level, x += a alpha^2 s + sqrt(2 a) alpha z (update j
        draws normal j; ``after(x)`` applied after each update, e.g. a constraint)."""
        a = self.level_step(eq, t1, at)
        alpha = eq.process.alpha(t1)
        for j in range(self.n_steps):
            # the score of p_t in x is that of the VE-scaled variable divided by alpha
            x = affine_noise_step(x, 1.0, eq.score_at(t1, x), a * alpha**2, torch.sqrt(2.0 * a) * alpha,
                                  **kernel_noise(noise, x, j))
            if after is not None:
                x = after(x)
        return x

    def step(self, eq, t0, t1, y0, state, noise, at=CONTROLLED):
        x = self.anneal(eq, t1, y0, at, noise)
        if self.denoise and at.last:
            x = eq.denoised(t1, x)
        return Step(x)

    # --- Song & Ermon 2020, "Improved techniques for training score-based generative models" ---
    @staticmethod
    def initial_sigma(data: torch.Tensor) -> float:
        """Technique 1: sigma_1 = the largest pairwise Euclidean distance in the training data."""
        x = data.reshape(data.shape[0], -1).to(torch.float64)
        return float(torch.cdist(x, x).max())

    @staticmethod
    def sigma_ratio(dim: int) -> float:
        """Technique 2: the ratio gamma = sigma_{i-1}/sigma_i with
        Phi(sqrt(2D)(gamma - 1) + 3 gamma) - Phi(sqrt(2D)(gamma - 1) - 3 gamma) = 1/2.
        The left side falls from Phi(3) - Phi(-3) at gamma = 1 to 0 only when sqrt(2D) > 3, so
        the technique needs D >= 5 (it was made for images)."""
        if 2 * dim <= 9:
            raise ValueError(f"Technique 2 has no solution in {dim} dimensions (needs sqrt(2D) > 3, i.e. D >= 5); "
                             "choose the noise levels directly")
        Phi = lambda v: 0.5 * (1.0 + math.erf(v / math.sqrt(2.0)))
        r = lambda g: Phi(math.sqrt(2 * dim) * (g - 1) + 3 * g) - Phi(math.sqrt(2 * dim) * (g - 1) - 3 * g) - 0.5
        lo, hi = 1.0, 2.0
        while r(hi) > 0:
            hi = 1.0 + 2.0 * (hi - 1.0)
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if r(mid) > 0 else (lo, mid)
        return 0.5 * (lo + hi)

    @classmethod
    def noise_levels(cls, sigma_max: float, sigma_min: float, dim: int | None = None,
                     ratio: float | None = None) -> torch.Tensor:
        """Geometric sigmas from sigma_max down to sigma_min, with Technique 2's ratio for ``dim``
        dimensions (or a given ``ratio``)."""
        g = ratio if ratio is not None else cls.sigma_ratio(dim)
        L = max(2, int(math.ceil(math.log(sigma_max / sigma_min) / math.log(g))) + 1)
        s = torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), L, dtype=torch.float64))
        s[0], s[-1] = sigma_max, sigma_min
        return s

    @staticmethod
    def variance_ratio(step_lr: float, n_steps: int, gamma: float, sigma_min: float) -> float:
        """Technique 4's s_T^2 / sigma_i^2 for x += a s + sqrt(2a) z, a = eps sigma_i^2 / sigma_L^2:
        r = c^{2T} (gamma^2 - v) + v,  c = 1 - eps / sigma_L^2,  v = 2 eps / (sigma_L^2 (1 - c^2))."""
        c = 1.0 - step_lr / sigma_min**2
        v = 2.0 * step_lr / (sigma_min**2 * (1.0 - c * c))
        return c ** (2 * n_steps) * (gamma**2 - v) + v

    @classmethod
    def step_size(cls, n_steps: int, gamma: float, sigma_min: float) -> float:
        """Technique 4: the step_lr that makes the variance ratio closest to 1. The ratio is at
        least 1 (v >= 1 and gamma > 1): small steps leave the start variance gamma^2, large ones
        overshoot through v, so this is the minimiser over step_lr in (0, sigma_L^2)."""
        lo, hi = math.log(1e-12 * sigma_min**2), math.log(0.999 * sigma_min**2)
        grid = torch.linspace(lo, hi, 4001, dtype=torch.float64).exp()
        err = torch.tensor([abs(cls.variance_ratio(float(e), n_steps, gamma, sigma_min) - 1.0) for e in grid])
        return float(grid[int(err.argmin())])
