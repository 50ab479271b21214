"""Langevin corrector step with a per-sample signal-to-noise step size, fused.

The corrector of predictor-corrector sampling (Song et al. 2021, "Score-Based Generative
Modeling through SDEs", Algorithm 5) takes, for sample b with score s_b and noise z_b,

    eps_b  = 2 alpha_b (snr ||z_b|| / ||s_b||)^2        norms over all elements of the sample
    x_mean = x + eps_b s
    x1     = x_mean + sqrt(2 eps_b) z

(alpha_b = 1 for VE, the discrete alpha_i = 1 - beta_i for VP). score_sde averages the two norms
over the batch; here they are per sample, so a sample's trajectory does not depend on the batch.

A sample whose score is exactly zero (||s_b|| = 0) takes no step: eps_b = 0 and x1 = x (the
formula would give an infinite step).

Fused as two passes over the data: a reduction kernel for the per-sample ||s||^2 and ||z||^2
(z generated from the counters and not stored), then :func:`affine_noise_step` with a = 1,
b = eps, c = sqrt(2 eps), which regenerates the same z.
"""
from __future__ import annotations

import torch

from .affine import affine_noise_step, affine_noise_step_ref
from .common import check_draw, check_like, check_noise, column, compute_dtype, noise_arguments, noise_ref, tile_geometry
from .dispatch import load_kernels, use_triton

__all__ = ["langevin_step", "langevin_step_ref", "langevin_step_size", "langevin_step_size_ref"]

_WHERE = "langevin_step"


def _check(score, noise, z, draw):
    if not isinstance(score, torch.Tensor) or score.dim() < 1:
        raise ValueError(f"{_WHERE}: score must be a tensor of shape (B, ...)")
    compute_dtype(score.dtype, _WHERE)
    check_noise(noise, z, score, _WHERE)
    return check_draw(draw, _WHERE)


def _step_size(s2, z2, snr, alpha, score):
    """eps = 2 alpha (snr ||z|| / ||s||)^2 from the squared norms, 0 where ||s|| = 0."""
    ct = s2.dtype
    flat = score.reshape(score.shape[0], -1)
    snr_c = column(snr, flat, ct, "snr", _WHERE).reshape(-1)
    alpha_c = column(alpha, flat, ct, "alpha", _WHERE).reshape(-1)
    nonzero = s2 > 0
    s_norm = torch.where(nonzero, s2, torch.ones_like(s2)).sqrt()
    eps = (snr_c * z2.sqrt() / s_norm) ** 2 * 2 * alpha_c
    return torch.where(nonzero, eps, torch.zeros_like(eps))


def langevin_step_size_ref(score, snr, alpha, noise=None, draw=0, *, z=None):
    """PyTorch reference of :func:`langevin_step_size`."""
    draw = _check(score, noise, z, draw)
    ct = compute_dtype(score.dtype, _WHERE)
    B = score.shape[0]
    s = score.to(ct).reshape(B, -1)
    zz = noise_ref(noise, draw, z, score, ct).reshape(B, -1)
    return _step_size(s.pow(2).sum(1), zz.pow(2).sum(1), snr, alpha, score)


def _sums_triton(score, noise, draw, z):
    tk = load_kernels()
    B, N = score.shape[0], score[0].numel()
    s_c = score.contiguous()
    kind, z_t, stream, step = noise_arguments(tk, noise, z, s_c)
    geom = tile_geometry(B, N)
    part = torch.empty((B, geom.chunks, 2), dtype=torch.float32, device=score.device)
    tk.launch(tk.sumsq_kernel, geom, part, s_c, z_t, stream, step, draw, B, N, geom.chunks, NOISE=kind)
    sums = part.sum(1)
    return sums[:, 0], sums[:, 1]


def langevin_step_size(score, snr, alpha, noise=None, draw=0, *, z=None):
    """Per-sample Langevin step size ``eps = 2 * alpha * (snr * ||z|| / ||score||)^2``, ``(B,)``.

    The squared norms are one fused reduction over the score and the regenerated noise
    (``z = noise.normal(score, draw)``, or the explicit ``z``); ``eps = 0`` where the score is
    zero. float32 (float64 for float64 scores).
    """
    draw = _check(score, noise, z, draw)
    if use_triton(_WHERE, score, (score, snr, alpha, z)):
        s2, z2 = _sums_triton(score, noise, draw, z)
        return _step_size(s2, z2, snr, alpha, score)
    return langevin_step_size_ref(score, snr, alpha, noise, draw, z=z)


def langevin_step_ref(x, score, snr, alpha, noise=None, draw=0, *, z=None, return_mean=False):
    """PyTorch reference of :func:`langevin_step`."""
    check_like(score, x, "score", _WHERE)
    eps = langevin_step_size_ref(score, snr, alpha, noise, draw, z=z)
    return affine_noise_step_ref(x, 1.0, score, eps, (2 * eps).sqrt(), noise, draw, z=z, return_mean=return_mean)


def langevin_step(x, score, snr, alpha, noise=None, draw=0, *, z=None, return_mean=False):
    """One Langevin corrector step with per-sample SNR step size, fused (see the module doc).

    Args:
        x: state ``(B, ...)``, float16/bfloat16/float32 (float32 math) or float64.
        score: the score at x, shaped like ``x``.
        snr: target signal-to-noise ratio (score_sde's ``snr``), number or ``(B,)``.
        alpha: per-sample alpha (1 for VE; alpha_i = 1 - beta_i for VP), number or ``(B,)``.
        noise, draw: a :class:`~sdesolve.noise.Noise` for the batch and the draw index; the same
            z enters the step size and the update.
        z: an explicit standard normal draw shaped like ``x`` instead of ``noise``.
        return_mean: also return ``x_mean = x + eps * score``.
    """
    check_like(score, x, "score", _WHERE)
    eps = langevin_step_size(score, snr, alpha, noise, draw, z=z)
    return affine_noise_step(x, 1.0, score, eps, (2 * eps).sqrt(), noise, draw, z=z, return_mean=return_mean)
