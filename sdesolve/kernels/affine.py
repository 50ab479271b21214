"""Affine-plus-noise updates, fused: mean = a x + b s (- f), x1 = mean + c z.

Per-sample coefficients a, b, c turn one kernel into the stochastic predictors of score-based
samplers (Song et al. 2021, "Score-Based Generative Modeling through SDEs", Sec. 4 and App. E):

* Ancestral sampling of DDPM (VP, beta_i the discrete noise schedule):
  ``x_mean = (x + beta_i s) / sqrt(1 - beta_i)``, ``x = x_mean + sqrt(beta_i) z``, i.e.
  ``a = 1 / sqrt(1 - beta_i)``, ``b = beta_i / sqrt(1 - beta_i)``, ``c = sqrt(beta_i)``.
* Ancestral sampling of NCSN (VE, noise levels sigma_i > sigma_{i-1}):
  ``x_mean = x + (sigma_i^2 - sigma_{i-1}^2) s``, ``c = sqrt(sigma_{i-1}^2 (sigma_i^2 -
  sigma_{i-1}^2) / sigma_i^2)``, i.e. ``a = 1``.
* Reverse diffusion with a drift linear in x, f(x) = f_i x: ``a = 1 - f_i``, ``b = g_i^2``, ``c = g_i``.
* The Langevin corrector (:mod:`sdesolve.kernels.langevin`): ``a = 1``, ``b = eps``, ``c = sqrt(2 eps)``.
* Deterministic updates (DDIM, the probability-flow step of any of these): ``c = None``.
"""
from __future__ import annotations

import torch

from .common import (as_dtype, check_draw, check_like, check_noise, column, compute_dtype, noise_arguments, noise_ref, coefficient,
                     tile_geometry)
from .dispatch import load_kernels, use_triton

__all__ = ["affine_noise_step", "affine_noise_step_ref", "held_affine_step"]


def _check(where, x, s, f, c, noise, z, draw):
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError(f"{where}: x must be a tensor of shape (B, ...)")
    compute_dtype(x.dtype, where)
    check_like(s, x, "score", where)
    if f is not None:
        check_like(f, x, "f", where)
    check_noise(noise, z, x, where, required=c is not None)
    return check_draw(draw, where)


def _ref(where, x, a, s, b, f, c, noise, draw, z, return_mean):
    """mean = a x + b s (- f) ; out = mean + c z, in the compute dtype."""
    ct = compute_dtype(x.dtype, where)
    if _held(a, ct) and _held(b, ct):
        mean = held_affine_step(as_dtype(x, ct), a, as_dtype(s, ct), b)
    else:
        mean = column(a, x, ct, "a", where) * as_dtype(x, ct) + column(b, x, ct, "b", where) * as_dtype(s, ct)
    if f is not None:
        mean = mean - as_dtype(f, ct)
    if c is None:
        out = as_dtype(mean, x.dtype)
        return (out, out) if return_mean else out
    zc = noise_ref(noise, draw, z, x, ct)
    if _held(c, ct):
        out = torch.addcmul(mean, zc, c) if return_mean else mean.addcmul_(zc, c)
    else:
        out = mean + column(c, x, ct, "c", where) * zc
    out = as_dtype(out, x.dtype)
    return (out, as_dtype(mean, x.dtype)) if return_mean else out


def held_affine_step(x, a, s, b, c=None, z=None):
    """``a x + b s (+ c z)`` for one-element coefficients a, b (, c) of x's dtype (float32 or
    float64) on the CPU and s, z shaped like x: the arithmetic of :func:`affine_noise_step_ref` in
    that case (b s and c z added in one pass each, ``addcmul``), without its checks and dispatch.
    For a loop that made its coefficients for its state once, before its steps
    (:class:`sdesolve.solvers.base.AffineSteps`); everyone else calls :func:`affine_noise_step`."""
    out = torch.addcmul(x * a, s, b)
    return out if c is None else out.addcmul_(z, c)


def _held(v, dtype) -> bool:
    """A 0-d CPU tensor of ``dtype`` (a fixed grid's coefficient, :class:`sdesolve.solvers.base.AffineSteps`)."""
    return isinstance(v, torch.Tensor) and v.dim() == 0 and v.dtype == dtype and v.device.type == "cpu"


def _triton(where, x, a, s, b, f, c, noise, draw, z, return_mean):
    tk = load_kernels()
    B, N = x.shape[0], x[0].numel()
    x_c, s_c = x.contiguous(), s.contiguous()
    f_c = f.contiguous() if f is not None else x_c
    out = torch.empty_like(x_c)
    store_mean = return_mean and c is not None
    mean = torch.empty_like(x_c) if store_mean else out
    a_t, a_stride = coefficient(a, B, x.device, "a", where)
    b_t, b_stride = coefficient(b, B, x.device, "b", where)
    if c is None:
        kind, c_t, c_stride, z_t, stream, step = tk.NO_NOISE, a_t, 0, x_c, x_c, x_c
    else:
        c_t, c_stride = coefficient(c, B, x.device, "c", where)
        kind, z_t, stream, step = noise_arguments(tk, noise, z, x_c)
    geom = tile_geometry(B, N)
    tk.launch(tk.affine_kernel, geom, out, mean, x_c, s_c, f_c, z_t, a_t, a_stride, b_t, b_stride,
              c_t, c_stride, stream, step, draw, B, N, geom.chunks,
              HAS_F=f is not None, NOISE=kind, STORE_MEAN=store_mean,
              ROUND_BF16=tk.round_bf16(x.dtype))
    if return_mean:
        return (out, mean) if store_mean else (out, out)
    return out


def affine_noise_step_ref(x, a, s, b, c=None, noise=None, draw=0, *, z=None, return_mean=False):
    """PyTorch reference of :func:`affine_noise_step` (same arguments and semantics, differentiable)."""
    where = "affine_noise_step"
    draw = _check(where, x, s, None, c, noise, z, draw)
    return _ref(where, x, a, s, b, None, c, noise, draw, z, return_mean)


def affine_noise_step(x, a, s, b, c=None, noise=None, draw=0, *, z=None, return_mean=False):
    """``mean = a * x + b * s`` and ``x1 = mean + c * z``, fused, with per-sample a, b, c.

    Args:
        x: state ``(B, ...)``, float16/bfloat16/float32 (float32 math) or float64.
        a, b, c: per-sample coefficients (numbers or ``(B,)`` tensors); ``c=None`` drops the
            noise term (then neither ``noise`` nor ``z`` may be given).
        s: the tensor scaled by b (a score, a denoised estimate, ...), shaped like ``x``.
        noise, draw: a :class:`~sdesolve.noise.Noise` for the batch and the draw index.
        z: an explicit standard normal draw shaped like ``x`` instead of ``noise``.
        return_mean: also return ``mean`` (score_sde's ``x_mean``).

    Returns:
        ``x1`` in x's dtype, or ``(x1, mean)``.
    """
    where = "affine_noise_step"
    draw = _check(where, x, s, None, c, noise, z, draw)
    if use_triton(where, x, (x, a, s, b, c, z)):
        return _triton(where, x, a, s, b, None, c, noise, draw, z, return_mean)
    return _ref(where, x, a, s, b, None, c, noise, draw, z, return_mean)
