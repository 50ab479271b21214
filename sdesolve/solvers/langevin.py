"""Langevin correctors and annealed Langevin dynamics.

Langevin(snr, n_steps)     score_sde's corrector (Song et al. 2021, Alg. 4-5) with the step size
                           set per sample from a target signal-to-noise ratio:
                           eps_b = 2 alpha (snr ||z_b|| / ||s_b||)^2,  x += eps s + sqrt(2 eps) z,
                           alpha = process.langevin_alpha (1 - beta_i for VP, 1 for VE).
                           With ``expected_norms=True`` the norms take their values under the
                           Gaussian-noise approximation, E||z||^2 = D and E||s||^2 = D / sigma_t^2,
                           so eps = 2 alpha snr^2 sigma_t^2 does not depend on x.
PredictorCorrector(p, c)   each step: the corrector at t0, then the predictor from t0 to t1
AnnealedLangevin           NCSN sampling (Song & Ermon 2019, Alg. 1, in the form of NCSNv2's
                           code): at each noise level sigma_i, n_steps updates
                           x += a_i s + sqrt(2 a_i) z with a_i = step_lr sigma_i^2 / sigma_L^2,
                           and the 2020 paper's techniques for choosing sigmas and step_lr
"""
from __future__ import annotations

import math

import torch

from .base import Solver, Step, per_sample

__all__ = ["Langevin", "PredictorCorrector", "AnnealedLangevin"]

#: predictors use noise draws below this; corrector iteration j uses draw CORRECTOR_DRAW + j
CORRECTOR_DRAW = 16


def _norms(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape[0], -1).to(torch.float64).norm(dim=1)


class Langevin:
    """A Langevin corrector with a per-sample SNR step size (not a solver by itself).

    The realized-norm rule (default) is score_sde's, computed per sample rather than per batch,
    so a sample's result does not depend on its batch. In high dimension ||z_b|| and ||s_b||
    concentrate and the rule is effectively deterministic; in low dimension ||s_b|| -> 0 near a
    mode makes eps_b heavy-tailed and, since it depends on x, the corrector no longer leaves p_t
    invariant: use ``expected_norms=True`` there (eps = 2 alpha snr^2 sigma_t^2).
    """

    def __init__(self, snr: float = 0.16, n_steps: int = 1, expected_norms: bool = False):
        if n_steps < 0:
            raise ValueError(f"n_steps must be >= 0, got {n_steps}")
        if snr <= 0:
            raise ValueError(f"snr must be positive, got {snr}")
        self.snr, self.n_steps, self.expected_norms = float(snr), int(n_steps), bool(expected_norms)

    def step_size(self, eq, t, dt, s, z):
        alpha = eq.process.langevin_alpha(t, dt)
        if self.expected_norms:
            return 2.0 * alpha * self.snr**2 * eq.process.sigma(t) ** 2
        ratio = self.snr * _norms(z) / _norms(s).clamp_min(1e-30)
        return 2.0 * alpha * ratio**2

    def correct(self, eq, t, dt, x, noise):
        for j in range(self.n_steps):
            s = eq.score_at(t, x)
            z = noise.normal(x, CORRECTOR_DRAW + j)
            eps = self.step_size(eq, t, dt, s, z)
            x = x + per_sample(eps, x) * s + per_sample(torch.sqrt(2.0 * eps), x) * z
        return x

    def __repr__(self):
        return f"Langevin(snr={self.snr}, n_steps={self.n_steps}, expected_norms={self.expected_norms})"


class PredictorCorrector(Solver):
    """Predictor-corrector sampling: ``corrector`` at t0, then one ``predictor`` step to t1.
    With a deterministic predictor it still integrates the reverse SDE's marginals (the corrector
    is stochastic)."""

    stochastic = True
    needs_process = True

    def __init__(self, predictor: Solver, corrector: Langevin | None = None):
        self.predictor = predictor
        self.corrector = corrector if corrector is not None else Langevin()
        self.order = predictor.order
        self.nfe_per_step = predictor.nfe_per_step + self.corrector.n_steps
        self.default_schedule = predictor.default_schedule

    def init(self, eq, t0, y0, t_end=None):
        return self.predictor.init(self._pred_eq(eq), t0, y0, t_end)

    def _pred_eq(self, eq):
        if self.predictor.stochastic or not eq.is_sde:
            return eq
        pf = getattr(eq, "_pf", None)
        if pf is None:
            pf = eq._pf = eq.process.probability_flow(eq.score)
        return pf

    def step(self, eq, t0, t1, y0, state, noise):
        x = self.corrector.correct(eq, t0, t1 - t0, y0, noise)
        peq = self._pred_eq(eq)
        out = self.predictor.step(peq, t0, t1, x, state, noise)
        if peq is not eq:
            eq.nfe += peq.nfe
            eq.sample_nfe += peq.sample_nfe
            peq.reset_counts()
        return out


class AnnealedLangevin(Solver):
    """Annealed Langevin dynamics (NCSN). Step i of the grid (t_i -> t_{i+1}) runs ``n_steps``
    Langevin updates at the noise level sigma(t_{i+1}); sigma_L is the level at the grid's end.
    With ``denoise=True`` the last step ends with x + sigma_L^2 s(x, sigma_L) (NCSNv2's final
    denoising, one more evaluation)."""

    stochastic = True
    needs_process = True

    def __init__(self, n_steps: int = 5, step_lr: float = 2e-5, denoise: bool = True):
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        self.n_steps, self.step_lr, self.denoise = int(n_steps), float(step_lr), bool(denoise)
        self.nfe_per_step = self.n_steps

    def init(self, eq, t0, y0, t_end=None):
        return t_end

    def step(self, eq, t0, t1, y0, state, noise):
        p = eq.process
        t_end = state if state is not None else t1
        sig = p.sigma_edm(t1)
        a = self.step_lr * sig**2 / p.sigma_edm(t_end) ** 2
        x = y0
        for j in range(self.n_steps):
            s = eq.score_at(t1, x)
            alpha = p.alpha(t1)
            # the score of p_t in x is that of the VE-scaled variable divided by alpha
            x = x + per_sample(a * alpha**2, x) * s + per_sample(torch.sqrt(2.0 * a) * alpha, x) * noise.normal(x, j)
        if self.denoise and bool((t1 == t_end).all()):
            x = eq.denoised(t1, x)
        return Step(x, state=state)

    # --- Song & Ermon 2020, "Improved techniques for training score-based generative models" ---
    @staticmethod
    def initial_sigma(data: torch.Tensor) -> float:
        """Technique 1: sigma_1 = the largest pairwise Euclidean distance in the training data."""
        x = data.reshape(data.shape[0], -1).to(torch.float64)
        return float(torch.cdist(x, x).max())

    @staticmethod
    def sigma_ratio(dim: int) -> float:
        """Technique 2: the ratio gamma = sigma_{i-1}/sigma_i with
        Phi(sqrt(2D)(gamma - 1) + 3 gamma) - Phi(sqrt(2D)(gamma - 1) - 3 gamma) = 1/2."""
        Phi = lambda v: 0.5 * (1.0 + math.erf(v / math.sqrt(2.0)))
        r = lambda g: Phi(math.sqrt(2 * dim) * (g - 1) + 3 * g) - Phi(math.sqrt(2 * dim) * (g - 1) - 3 * g) - 0.5
        lo, hi = 1.0 + 1e-12, 100.0
        for _ in range(200):  # r decreases from ~+0.5 at gamma -> 1 to -0.5
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if r(mid) > 0 else (lo, mid)
        return 0.5 * (lo + hi)

    @classmethod
    def noise_levels(cls, sigma_max: float, sigma_min: float, dim: int) -> torch.Tensor:
        """Geometric sigmas from sigma_max down to sigma_min with Technique 2's ratio."""
        g = cls.sigma_ratio(dim)
        L = max(2, int(math.ceil(math.log(sigma_max / sigma_min) / math.log(g))) + 1)
        return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), L, dtype=torch.float64))

    @staticmethod
    def variance_ratio(step_lr: float, n_steps: int, gamma: float, sigma_min: float) -> float:
        """Technique 4's s_T^2 / sigma_i^2 for x += a s + sqrt(2a) z, a = eps sigma_i^2 / sigma_L^2:
        r = c^{2T} (gamma^2 - v) + v,  c = 1 - eps / sigma_L^2,  v = 2 eps / (sigma_L^2 (1 - c^2))."""
        c = 1.0 - step_lr / sigma_min**2
        v = 2.0 * step_lr / (sigma_min**2 * (1.0 - c * c))
        return c ** (2 * n_steps) * (gamma**2 - v) + v

    @classmethod
    def step_size(cls, n_steps: int, gamma: float, sigma_min: float) -> float:
        """Technique 4: the step_lr that makes the variance ratio closest to 1."""
        lo, hi = math.log(1e-12 * sigma_min**2), math.log(0.999 * sigma_min**2)
        grid = torch.linspace(lo, hi, 4001, dtype=torch.float64).exp()
        err = torch.tensor([abs(cls.variance_ratio(float(e), n_steps, gamma, sigma_min) - 1.0) for e in grid])
        return float(grid[int(err.argmin())])
