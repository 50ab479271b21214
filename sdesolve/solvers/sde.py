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

import functools

import torch

from ..equations import DiffusionEquation
from ..kernels import affine_noise_step, em_step
from ..noise import kernel_noise
from ..tensors import shared_time
from .base import CONTROLLED, AffineSteps, Solver, Step, linear_step_table
from .exponential import ancestral, point

__all__ = ["EulerMaruyama", "ReverseDiffusion", "Ancestral", "normal_for", "diffusion_argument"]


def diffusion_argument(g, y: torch.Tensor):
    """An equation's diffusion as :func:`sdesolve.kernels.em_step` takes it: a number, a
    one-element or (B,) tensor, or a tensor shaped like y. A per-sample column (B, 1, ..., 1), as
    diffusion equations return it, becomes (B,); any other broadcast against y is expanded."""
    B = y.shape[0]
    if not isinstance(g, torch.Tensor) or g.numel() == 1 or g.shape == y.shape or tuple(g.shape) == (B,):
        return g
    if g.dim() == y.dim() and g.shape[0] == B and g.numel() == B:
        return g.reshape(B)
    return g.expand_as(y)


def normal_for(eq, noise, y: torch.Tensor, draw: int = 0) -> torch.Tensor:
    """The normals of draw ``draw`` shaped like y for the noise structure of ``eq``: one per
    element, or for scalar noise one per sample (element 0 of its draw), shared by its elements."""
    if eq.noise_type != "scalar":
        return noise.normal(y, draw)
    B = y.shape[0]
    z = noise.normal(y.reshape(B, -1)[:, :1], draw)
    return z.reshape((B,) + (1,) * (y.dim() - 1)).expand_as(y)


def _transition(process, t_from, t_to):
    """(a, s2) of x_t = a x_s + sqrt(s2) z for t = max(t_from, t_to), s = min(...): float64, (B,) or 0-d
    for a time the batch shares."""
    t_from, t_to = shared_time(t_from), shared_time(t_to)
    t = torch.maximum(t_from, t_to)
    s = torch.minimum(t_from, t_to)
    la_t, la_s = process.log_alpha(t), process.log_alpha(s)
    a = torch.exp(la_t - la_s)
    s2 = process.sigma(t) ** 2 - a**2 * process.sigma(s) ** 2
    return a, s2.clamp_min(0.0)


class EulerMaruyama(Solver):
    """Euler-Maruyama: x1 = x0 + f(t0, x0) h + g(t0, x0) sqrt(|h|) z (Kloeden & Platen 1992, Sec.
    9.1), strong order 1/2 (1 for additive noise), weak order 1; for any SDE, scalar noise drawing
    one normal per sample. One fused update (:func:`sdesolve.kernels.em_step`); on a fixed host
    grid, for an equation linear in the score (:meth:`~sdesolve.Equation.score_linear`: the reverse
    SDE of a diffusion), the update x1 = (1 + f h) x + c h s + g sqrt|h| z with the coefficients of
    every step computed at once (one affine update, :class:`~sdesolve.solvers.base.AffineSteps`)."""

    order = 0.5
    weak_order = 1.0
    stochastic = True

    def init(self, eq, t0, y0):
        return linear_step_table(eq, noise=True)

    def step(self, eq, t0, t1, y0, state, noise, at=CONTROLLED):
        row = None if state is None else state.row(at, t0, y0)
        if row is not None:  # dx = (f x + c s) dt + g dW: x1 = (1 + f h) x + c h s + g sqrt|h| z
            return Step(state.update(y0, row, eq.score_at(t0, y0), noise), state=state)
        f = eq.drift(t0, y0)
        g = diffusion_argument(eq.diffusion(t0, y0), y0)
        # the plan's step on a CPU state (a CUDA kernel reads its coefficients from the device)
        use_h = at.h is not None and not y0.is_cuda and not t0.requires_grad
        dt = at.h if use_h else shared_time(t1) - shared_time(t0)
        if eq.noise_type == "scalar":
            return Step(em_step(y0, f, g, dt, z=normal_for(eq, noise, y0)), state=state)
        return Step(em_step(y0, f, g, dt, **kernel_noise(noise, y0, 0)), state=state)


class ReverseDiffusion(Solver):
    """score_sde's reverse-diffusion predictor, for any process (see module docstring). On a fixed
    grid the coefficients of every step are computed at once, at the first step
    (:class:`~sdesolve.solvers.base.AffineSteps`, the state)."""

    order = 0.5
    weak_order = 1.0
    stochastic = True
    equation = DiffusionEquation

    def init(self, eq, t0, y0):
        return AffineSteps(functools.partial(_update, eq.process))

    def step(self, eq, t0, t1, y0, state, noise, at=CONTROLLED):
        row = None if state is None else state.row(at, t0, y0)
        if row is not None:
            return Step(state.update(y0, row, eq.score_at(t0, y0), noise), state=state)
        cx, cs, std = _update(eq.process, t0, t1)
        s = eq.score_at(t0, y0)
        return Step(affine_noise_step(y0, cx, s, cs, std, **kernel_noise(noise, y0, 0)), state=state)


def _update(process, t_from, t_to):
    """(2 - a, s2, sqrt(s2)): x_s = (2 - a) x_t + s2 score + sqrt(s2) z, of :func:`_transition`."""
    a, s2 = _transition(process, t_from, t_to)
    return 2.0 - a, s2, s2.sqrt()


class Ancestral(Solver):
    """Ancestral sampling from the forward process's Gaussian posterior (see module docstring).
    ``eta`` scales the posterior standard deviation, keeping the marginal variance (eta = 1:
    DDPM; eta = 0: DDIM's deterministic update); the update is
    :func:`sdesolve.solvers.exponential.ancestral`."""

    order = 0.5
    weak_order = 1.0
    stochastic = True
    equation = DiffusionEquation

    def __init__(self, eta: float = 1.0):
        self.eta = float(eta)

    def step(self, eq, t0, t1, y0, state, noise, at=CONTROLLED):
        p = eq.process
        x0 = eq.denoised(t0, y0)
        cx, cd, std = ancestral(point(p, t0), point(p, t1), self.eta)
        return Step(affine_noise_step(y0, cx, x0, cd, std, **kernel_noise(noise, y0, 0)))
