"""Runge-Kutta stage combination with the embedded error norm, fused.

For stages k_1..k_s of an explicit Runge-Kutta step of per-sample size dt (Hairer, Norsett &
Wanner, "Solving ODEs I", Sec. II.4):

    y1  = y0 + dt sum_i b_i k_i
    err = sqrt( mean_j ( (dt sum_i e_i k_ij) / (atol + rtol max(|y0_j|, |y1_j|)) )^2 )

per sample, the mean over all elements of the sample, with e = b - b_hat the difference of the
weights of the embedded pair (Hairer's ``err`` of eq. (4.11), the norm his step-size control
compares with 1). y1 in the error scale is the float32 value before rounding to the state dtype.
Stages with b_i = e_i = 0 are never read (Dopri5's second stage, for one). The kernel reads
y0 and each used stage once and writes y1 once: no temporaries.
"""
from __future__ import annotations

import numbers

import torch

from .common import check_like, column, compute_dtype, coefficient, tile_geometry
from .dispatch import load_kernels, use_triton

__all__ = ["rk_combine", "rk_combine_ref", "MAX_FUSED_STAGES"]

#: the most stages one kernel launch combines; longer tableaus take the *_ref path
MAX_FUSED_STAGES = 7

_WHERE = "rk_combine"


def _weights(w, stages: int, name: str) -> tuple[float, ...]:
    if isinstance(w, torch.Tensor) or not hasattr(w, "__len__"):
        raise TypeError(f"{_WHERE}: {name} must be a sequence of numbers (the tableau's weights)")
    if len(w) != stages:
        raise ValueError(f"{_WHERE}: {name} has {len(w)} weights for {stages} stages")
    for v in w:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{_WHERE}: {name} must hold numbers, got {type(v).__name__}")
    return tuple(float(v) for v in w)


def _check(y0, ks, b, b_err, rtol, atol):
    if not isinstance(y0, torch.Tensor) or y0.dim() < 1:
        raise ValueError(f"{_WHERE}: y0 must be a tensor of shape (B, ...)")
    compute_dtype(y0.dtype, _WHERE)
    ks = tuple(ks)
    if not ks:
        raise ValueError(f"{_WHERE}: no stages given")
    for i, k in enumerate(ks):
        check_like(k, y0, f"ks[{i}]", _WHERE)
    b = _weights(b, len(ks), "b")
    if b_err is not None:
        b_err = _weights(b_err, len(ks), "b_err")
        if rtol is None or atol is None:
            raise ValueError(f"{_WHERE}: an error estimate (b_err) needs rtol and atol")
    return ks, b, b_err


def rk_combine_ref(y0, ks, b, dt, b_err=None, *, rtol=None, atol=None):
    """PyTorch reference of :func:`rk_combine` (same arguments and semantics, differentiable)."""
    ks, b, b_err = _check(y0, ks, b, b_err, rtol, atol)
    ct = compute_dtype(y0.dtype, _WHERE)
    acc = err = None
    for i, k in enumerate(ks):
        if b[i] == 0.0 and (b_err is None or b_err[i] == 0.0):
            continue
        k = k.to(ct)
        if b[i] != 0.0:
            acc = b[i] * k if acc is None else acc + b[i] * k
        if b_err is not None and b_err[i] != 0.0:
            err = b_err[i] * k if err is None else err + b_err[i] * k
    y = y0.to(ct)
    dt_c = column(dt, y0, ct, "dt", _WHERE)
    y1 = y + dt_c * (acc if acc is not None else torch.zeros_like(y))
    if b_err is None:
        return y1.to(y0.dtype), None
    err = err if err is not None else torch.zeros_like(y)
    scale = column(atol, y0, ct, "atol", _WHERE) + column(rtol, y0, ct, "rtol", _WHERE) * torch.maximum(y.abs(), y1.abs())
    ratio = (dt_c * err) / scale
    n = y0[0].numel()
    norm = (ratio.reshape(y0.shape[0], -1).pow(2).sum(1) / n).sqrt()
    return y1.to(y0.dtype), norm


def _rk_combine_triton(y0, ks, b, dt, b_err, rtol, atol):
    tk = load_kernels()
    B, N = y0.shape[0], y0[0].numel()
    y0_c = y0.contiguous()
    stages = [k.contiguous() for k in ks] + [y0_c] * (MAX_FUSED_STAGES - len(ks))
    bw = list(b) + [0.0] * (MAX_FUSED_STAGES - len(ks))
    has_err = b_err is not None
    ew = list(b_err) if has_err else []
    ew += [0.0] * (MAX_FUSED_STAGES - len(ew))
    y1 = torch.empty_like(y0_c)
    dt_t, dt_stride = coefficient(dt, B, y0.device, "dt", _WHERE)
    if has_err:
        rtol_t, rtol_stride = coefficient(rtol, B, y0.device, "rtol", _WHERE)
        atol_t, atol_stride = coefficient(atol, B, y0.device, "atol", _WHERE)
    else:
        rtol_t, rtol_stride, atol_t, atol_stride = dt_t, 0, dt_t, 0
    geom = tile_geometry(B, N)
    part = torch.empty((B, geom.chunks), dtype=torch.float32, device=y0.device) if has_err else y1
    consts = {f"B{i}": bw[i] for i in range(MAX_FUSED_STAGES)}
    consts.update({f"E{i}": ew[i] for i in range(MAX_FUSED_STAGES)})
    tk.launch(tk.rk_kernel, geom, y1, part, y0_c, *stages, dt_t, dt_stride, rtol_t, rtol_stride,
              atol_t, atol_stride, B, N, geom.chunks, ERR=has_err, ROUND_BF16=tk.round_bf16(y0.dtype), **consts)
    if not has_err:
        return y1, None
    return y1, (part.sum(1) / N).sqrt()


def rk_combine(y0, ks, b, dt, b_err=None, *, rtol=None, atol=None):
    """``y1 = y0 + dt * sum_i b_i k_i`` and the embedded error norm, fused (see the module doc).

    Args:
        y0: state ``(B, ...)``, float16/bfloat16/float32 (float32 math) or float64.
        ks: the stages, a sequence of tensors shaped like ``y0`` (at most
            :data:`MAX_FUSED_STAGES` fuse into one kernel; more take the ``*_ref`` path).
        b: the tableau's weights, numbers, one per stage.
        dt: step, per sample (number or ``(B,)``).
        b_err: the error weights ``b - b_hat`` of the embedded pair, numbers, or None.
        rtol, atol: tolerances (numbers or ``(B,)``), needed with ``b_err``.

    Returns:
        ``(y1, err)``: y1 in y0's dtype; err ``(B,)`` float32 (float64 for float64 states) or
        None without ``b_err``.
    """
    ks, b, b_err = _check(y0, ks, b, b_err, rtol, atol)
    if len(ks) <= MAX_FUSED_STAGES and use_triton(_WHERE, y0, (y0, dt, rtol, atol) + ks):
        return _rk_combine_triton(y0, ks, b, dt, b_err, rtol, atol)
    return rk_combine_ref(y0, ks, b, dt, b_err, rtol=rtol, atol=atol)
