"""Euler-Maruyama step, fused: x1 = x + drift dt + g sqrt|dt| z.

For an Ito SDE dx = f(t, x) dt + g(t, x) dW with diagonal noise, one Euler-Maruyama step of
(per-sample, signed) length dt is x + f dt + g dW with dW = sqrt|dt| z, z ~ N(0, I) (Kloeden &
Platen 1992, Sec. 10.2). ``x + drift dt`` is the step's mean, score_sde's ``x_mean``, which
samplers return at the last step instead of the noisy state.
"""
from __future__ import annotations

import torch

from .common import (as_dtype, check_draw, check_like, check_noise, column, compute_dtype, noise_arguments, noise_ref, coefficient,
                     tile_geometry)
from .dispatch import load_kernels, use_triton

__all__ = ["em_step", "em_step_ref"]

_WHERE = "em_step"


def _g_is_full(g, x: torch.Tensor) -> bool:
    return isinstance(g, torch.Tensor) and g.dim() == x.dim() and g.shape == x.shape and x.dim() > 1


def _check(x, drift, g, noise, z, draw):
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError(f"{_WHERE}: x must be a tensor of shape (B, ...)")
    compute_dtype(x.dtype, _WHERE)
    check_like(drift, x, "drift", _WHERE)
    if _g_is_full(g, x):
        check_like(g, x, "g", _WHERE)
    elif isinstance(g, torch.Tensor) and g.numel() != 1 and tuple(g.shape) != (x.shape[0],):
        raise ValueError(f"{_WHERE}: g must be a number, a (B,) tensor or shaped like x {tuple(x.shape)}, "
                         f"got shape {tuple(g.shape)}")
    check_noise(noise, z, x, _WHERE)
    return check_draw(draw, _WHERE)


def em_step_ref(x, drift, g, dt, noise=None, draw=0, *, z=None, return_mean=False):
    """PyTorch reference of :func:`em_step` (same arguments, same semantics, differentiable)."""
    return _ref(x, drift, g, dt, noise, _check(x, drift, g, noise, z, draw), z, return_mean)


def _ref(x, drift, g, dt, noise, draw, z, return_mean):
    ct = compute_dtype(x.dtype, _WHERE)
    dt_c = column(dt, x, ct, "dt", _WHERE)
    g_c = as_dtype(g, ct) if _g_is_full(g, x) else column(g, x, ct, "g", _WHERE)
    mean = as_dtype(x, ct) + as_dtype(drift, ct) * dt_c
    out = as_dtype(mean + g_c * dt_c.abs().sqrt() * noise_ref(noise, draw, z, x, ct), x.dtype)
    return (out, as_dtype(mean, x.dtype)) if return_mean else out


def _em_step_triton(x, drift, g, dt, noise, draw, z, return_mean):
    tk = load_kernels()
    B, N = x.shape[0], x[0].numel()
    x_c, drift_c = x.contiguous(), drift.contiguous()
    out = torch.empty_like(x_c)
    mean = torch.empty_like(x_c) if return_mean else out
    g_full = _g_is_full(g, x)
    if g_full:
        g_t, g_stride = g.contiguous(), 0
    else:
        g_t, g_stride = coefficient(g, B, x.device, "g", _WHERE)
    dt_t, dt_stride = coefficient(dt, B, x.device, "dt", _WHERE)
    kind, z_t, stream, step = noise_arguments(tk, noise, z, x_c)
    geom = tile_geometry(B, N)
    tk.launch(tk.em_kernel, geom, out, mean, x_c, drift_c, g_t, g_stride, dt_t, dt_stride,
              z_t, stream, step, draw, B, N, geom.chunks,
              G_FULL=g_full, NOISE=kind, STORE_MEAN=return_mean, ROUND_BF16=tk.round_bf16(x.dtype))
    return (out, mean) if return_mean else out


def em_step(x, drift, g, dt, noise=None, draw=0, *, z=None, return_mean=False):
    """One Euler-Maruyama step ``x + drift * dt + g * sqrt(|dt|) * z``, fused.

    Args:
        x: state ``(B, ...)``, float16/bfloat16/float32 (float32 math) or float64.
        drift: the drift f(t, x) evaluated at the step's start, shaped like ``x``.
        g: diffusion, per sample (number or ``(B,)``) or per element (shaped like ``x``).
        dt: step, per sample (number or ``(B,)``; float64 time is rounded to the compute dtype);
            negative for a reverse-time step, the noise scale is ``sqrt(|dt|)``.
        noise, draw: a :class:`~sdesolve.noise.Noise` for the batch and the draw index; z is
            ``noise.normal(x, draw)`` (generated in-kernel on the Triton path, in float32).
        z: an explicit standard normal draw shaped like ``x`` instead of ``noise``.
        return_mean: also return the mean ``x + drift * dt``.

    Returns:
        the new state in x's dtype, or ``(state, mean)`` with ``return_mean=True``.
    """
    draw = _check(x, drift, g, noise, z, draw)
    if use_triton(_WHERE, x, (x, drift, g, dt, z)):
        return _em_step_triton(x, drift, g, dt, noise, draw, z, return_mean)
    return _ref(x, drift, g, dt, noise, draw, z, return_mean)
