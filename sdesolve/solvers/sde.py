"""Fixed-step SDE solvers.

EulerMaruyama      x1 = x0 + f(t0, x0) h + g(t0, x0) dW,  dW = sqrt(|h|) z
                   strong order 1/2 (1 for additive noise), weak order 1 (Kloeden & Platen 1992);
                   scalar noise draws one z per sample, shared by its elements (as Milstein)
ReverseDiffusion   score_sde's reverse-diffusion predictor (Song et al. 2021, Eq. 46), written
                   for any process through its exact transition x_t = a x_s + s_ts z over the
                   step s < t:  x_s = (2 - a) x_t + s_ts^2 score(x_t, t) + s_ts z
Ancestral          ancestral sampling: x_s drawn from the Gaussian posterior q(x_s | x_t, x_0 =
                   D(x_t)) of the forward process with the model's denoised prediction D (DDPM,
                   Ho et al. 2020, Eq. 7, for VP; Song et al. 2021, Eq. 47, for VE):
                   mean = (a sigma_s^2 / sigma_t^2) x_t + (alpha_s s_ts^2 / sigma_t^2) D,
                   var  = s_ts^2 sigma_s^2 / sigma_t^2,   a = alpha_t / alpha_s,
                   s_ts^2 = sigma_t^2 - a^2 sigma_s^2
The last two are diffusion-specific: they need ``eq.process``.

Each update is one fused call of :mod:`sdesolve.kernels` (a Triton kernel on CUDA that draws the
step's normals in-kernel from the same counters as ``noise.normal``, its ``*_ref`` elsewhere):
EulerMaruyama is ``em_step``; ReverseDiffusion and Ancestral are ``affine_noise_step``
(x1 = a x + b s + c z with per-sample a, b, c). Ancestral is written as
    x_s = (c_eps / sigma_t) x_t + (alpha_s - c_eps alpha_t / sigma_t) D + std z,
the same update as alpha_s D + c_eps eps_hat + std z with eps_hat = (x_t - alpha_t D) / sigma_t.
"""
from __future__ import annotations

import torch

from ..kernels import affine_noise_step, em_step, noise_source
from .base import Solver, Step

__all__ = ["EulerMaruyama", "ReverseDiffusion", "Ancestral"]


def _diffusion_arg(g, y: torch.Tensor):
    """The diffusion as ``em_step`` takes it: a number, a one-element or (B,) tensor, or a tensor
    shaped like y (a per-sample column (B, 1, ..., 1) becomes (B,); other broadcasts expand)."""
    if not isinstance(g, torch.Tensor) or g.numel() == 1 or g.shape == y.shape:
        return g
    B = y.shape[0]
    if g.dim() == y.dim() and g.shape[0] == B and g.numel() == B:
        return g.reshape(B)
    return g.expand_as(y)


def _scalar_normal(noise, y: torch.Tensor, draw: int) -> torch.Tensor:
    """Scalar noise: one normal per sample (element 0 of its draw), shared by all its elements."""
    B = y.shape[0]
    z = noise.normal(y.reshape(B, -1)[:, :1], draw)
    return z.reshape((B,) + (1,) * (y.dim() - 1)).expand_as(y)


def _transition(process, t_from, t_to):
    """(a, s2) of x_t = a x_s + sqrt(s2) z for t = max(t_from, t_to), s = min(...): float64 (B,)."""
    t = torch.maximum(t_from, t_to)
    s = torch.minimum(t_from, t_to)
    la_t, la_s = process.log_alpha(t), process.log_alpha(s)
    a = torch.exp(la_t - la_s)
    s2 = process.sigma(t) ** 2 - a**2 * process.sigma(s) ** 2
    return a, s2.clamp_min(0.0)


class EulerMaruyama(Solver):
    order = 0.5
    weak_order = 1.0
    stochastic = True

    def step(self, eq, t0, t1, y0, state, noise):
        f = eq.drift(t0, y0)
        g = _diffusion_arg(eq.diffusion(t0, y0), y0)
        if eq.noise_type == "scalar":
            return Step(em_step(y0, f, g, t1 - t0, z=_scalar_normal(noise, y0, 0)))
        return Step(em_step(y0, f, g, t1 - t0, **noise_source(noise, y0, 0)))


class ReverseDiffusion(Solver):
    """score_sde's reverse-diffusion predictor, for any process (see module docstring)."""

    order = 0.5
    weak_order = 1.0
    stochastic = True
    needs_process = True

    def step(self, eq, t0, t1, y0, state, noise):
        a, s2 = _transition(eq.process, t0, t1)
        s = eq.score_at(t0, y0)
        return Step(affine_noise_step(y0, 2.0 - a, s, s2, s2.sqrt(), **noise_source(noise, y0, 0)))


class Ancestral(Solver):
    """Ancestral sampling from the forward process's Gaussian posterior (see module docstring).
    ``eta`` scales the posterior standard deviation, keeping the marginal variance (eta = 1:
    DDPM; eta = 0: DDIM's deterministic update)."""

    order = 0.5
    weak_order = 1.0
    stochastic = True
    needs_process = True

    def __init__(self, eta: float = 1.0):
        self.eta = float(eta)

    def step(self, eq, t0, t1, y0, state, noise):
        p = eq.process
        x0 = eq.denoised(t0, y0)
        la_t, la_s = p.log_alpha(t0), p.log_alpha(t1)
        sig_t, sig_s = p.sigma(t0), p.sigma(t1)
        a = torch.exp(la_t - la_s)
        s_ts2 = (sig_t**2 - a**2 * sig_s**2).clamp_min(0.0)
        std = self.eta * torch.sqrt(s_ts2 * sig_s**2 / sig_t**2)
        # keep the marginal: the rest of sigma_s^2 goes through the predicted noise direction
        c_eps = torch.sqrt((sig_s**2 - std**2).clamp_min(0.0))
        # alpha_s D + c_eps (x_t - alpha_t D) / sigma_t, with float64 coefficients
        cx = c_eps / sig_t
        cd = torch.exp(la_s) - cx * torch.exp(la_t)
        return Step(affine_noise_step(y0, cx, x0, cd, std, **noise_source(noise, y0, 0)))
