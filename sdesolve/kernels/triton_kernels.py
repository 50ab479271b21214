"""The Triton kernels of the fused updates (imported lazily, only on the Triton path).

Tiling: program ``p`` covers a ``(ROWS, QUADS, 4)`` tile, ``ROWS`` samples by ``QUADS`` Philox
quads of 4 consecutive elements of a sample (:class:`sdesolve.kernels.common.TileGeometry`).
Per-sample coefficients are loaded once per row and broadcast; states are loaded in their
dtype and all arithmetic is float32.

Noise (``NOISE`` = 1): one Philox4x32-10 call per quad, ``tl.philox`` with key the sample's
64-bit stream and counter ``(quad, lo32(step), draw, 0)``; Box-Muller on both pairs gives the
quad's four normals, lanes 0..3 = (r_a cos, r_a sin, r_b cos, r_b sin), exactly the contract of
:mod:`sdesolve.noise`. ``NOISE`` = 2 loads an explicit draw ``z``; 0 means no noise term.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

NO_NOISE = 0
COUNTER_NOISE = 1
EXPLICIT_NOISE = 2


@triton.jit
def _tile(B, N, chunks, ROWS: tl.constexpr, QUADS: tl.constexpr, WIDE: tl.constexpr):
    pid = tl.program_id(0)
    block = pid // chunks
    chunk = pid - block * chunks
    rows = block * ROWS + tl.arange(0, ROWS)
    if WIDE:
        rows = rows.to(tl.int64)
    smp = rows[:, None, None]
    quad = (chunk * QUADS + tl.arange(0, QUADS))[None, :, None]
    lane = tl.arange(0, 4)[None, None, :]
    elem = quad * 4 + lane
    row_ok = smp < B
    mask = row_ok & (elem < N)
    offs = smp * N + elem
    return rows, chunk, smp, quad, lane, row_ok, mask, offs


@triton.jit
def _to_state(v, ptr, ROUND_BF16: tl.constexpr):
    """float32 -> the state dtype of ``ptr``. The interpreter truncates float32 -> bfloat16;
    ROUND_BF16 (set only there) rounds to nearest even on the bits, as the GPU conversion does."""
    if ROUND_BF16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return v.to(ptr.dtype.element_ty)


@triton.jit
def _coef(ptr, stride, smp, row_ok):
    """A per-sample coefficient, (ROWS, 1, 1) in float32."""
    return tl.load(ptr + smp * stride, mask=row_ok, other=0.0).to(tl.float32)


@triton.jit
def _counter_normal(stream_ptr, step_ptr, draw, smp, row_ok, quad, lane):
    seed = tl.load(stream_ptr + smp, mask=row_ok, other=0)
    step = tl.load(step_ptr + smp, mask=row_ok, other=0).to(tl.uint32)
    r0, r1, r2, r3 = tl.philox(seed, quad, step, draw, 0)
    rad_a = tl.sqrt(-2.0 * tl.log(tl.maximum(tl.uint_to_uniform_float(r0), 1.0e-7)))
    rad_b = tl.sqrt(-2.0 * tl.log(tl.maximum(tl.uint_to_uniform_float(r2), 1.0e-7)))
    th_a = 6.283185307179586 * tl.uint_to_uniform_float(r1)
    th_b = 6.283185307179586 * tl.uint_to_uniform_float(r3)
    z0 = rad_a * tl.cos(th_a)
    z1 = rad_a * tl.sin(th_a)
    z2 = rad_b * tl.cos(th_b)
    z3 = rad_b * tl.sin(th_b)
    return tl.where(lane == 0, z0, tl.where(lane == 1, z1, tl.where(lane == 2, z2, z3)))


@triton.jit
def _normal(NOISE: tl.constexpr, z_ptr, offs, mask, stream_ptr, step_ptr, draw, smp, row_ok, quad, lane):
    if NOISE == 2:
        z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        z = _counter_normal(stream_ptr, step_ptr, draw, smp, row_ok, quad, lane)
    return z


@triton.jit
def em_kernel(out_ptr, mean_ptr, x_ptr, drift_ptr, g_ptr, g_stride, dt_ptr, dt_stride,
              z_ptr, stream_ptr, step_ptr, draw, B, N, chunks,
              G_FULL: tl.constexpr, NOISE: tl.constexpr, STORE_MEAN: tl.constexpr, ROUND_BF16: tl.constexpr,
              ROWS: tl.constexpr, QUADS: tl.constexpr, WIDE: tl.constexpr):
    """mean = x + drift dt ; out = mean + g sqrt|dt| z."""
    rows, chunk, smp, quad, lane, row_ok, mask, offs = _tile(B, N, chunks, ROWS, QUADS, WIDE)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    drift = tl.load(drift_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dt = _coef(dt_ptr, dt_stride, smp, row_ok)
    mean = x + drift * dt
    if G_FULL:
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        g = _coef(g_ptr, g_stride, smp, row_ok)
    z = _normal(NOISE, z_ptr, offs, mask, stream_ptr, step_ptr, draw, smp, row_ok, quad, lane)
    out = mean + g * tl.sqrt(tl.abs(dt)) * z
    tl.store(out_ptr + offs, _to_state(out, out_ptr, ROUND_BF16), mask=mask)
    if STORE_MEAN:
        tl.store(mean_ptr + offs, _to_state(mean, mean_ptr, ROUND_BF16), mask=mask)


@triton.jit
def affine_kernel(out_ptr, mean_ptr, x_ptr, s_ptr, f_ptr, z_ptr,
                  a_ptr, a_stride, b_ptr, b_stride, c_ptr, c_stride,
                  stream_ptr, step_ptr, draw, B, N, chunks,
                  HAS_F: tl.constexpr, NOISE: tl.constexpr, STORE_MEAN: tl.constexpr, ROUND_BF16: tl.constexpr,
                  ROWS: tl.constexpr, QUADS: tl.constexpr, WIDE: tl.constexpr):
    """mean = a x + b s (- f) ; out = mean + c z (no noise term when NOISE == 0)."""
    rows, chunk, smp, quad, lane, row_ok, mask, offs = _tile(B, N, chunks, ROWS, QUADS, WIDE)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(s_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    a = _coef(a_ptr, a_stride, smp, row_ok)
    b = _coef(b_ptr, b_stride, smp, row_ok)
    mean = a * x + b * s
    if HAS_F:
        mean = mean - tl.load(f_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if NOISE == 0:
        tl.store(out_ptr + offs, _to_state(mean, out_ptr, ROUND_BF16), mask=mask)
    else:
        c = _coef(c_ptr, c_stride, smp, row_ok)
        z = _normal(NOISE, z_ptr, offs, mask, stream_ptr, step_ptr, draw, smp, row_ok, quad, lane)
        out = mean + c * z
        tl.store(out_ptr + offs, _to_state(out, out_ptr, ROUND_BF16), mask=mask)
        if STORE_MEAN:
            tl.store(mean_ptr + offs, _to_state(mean, mean_ptr, ROUND_BF16), mask=mask)


@triton.jit
def sumsq_kernel(part_ptr, s_ptr, z_ptr, stream_ptr, step_ptr, draw, B, N, chunks,
                 NOISE: tl.constexpr, ROWS: tl.constexpr, QUADS: tl.constexpr, WIDE: tl.constexpr):
    """Per tile and sample: (sum s^2, sum z^2) into part[b, chunk, 0:2]; z is not stored."""
    rows, chunk, smp, quad, lane, row_ok, mask, offs = _tile(B, N, chunks, ROWS, QUADS, WIDE)
    s = tl.load(s_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    z = _normal(NOISE, z_ptr, offs, mask, stream_ptr, step_ptr, draw, smp, row_ok, quad, lane)
    z = tl.where(mask, z, 0.0)
    ss = tl.sum(tl.sum(s * s, axis=2), axis=1)
    zz = tl.sum(tl.sum(z * z, axis=2), axis=1)
    dst = part_ptr + (rows * chunks + chunk) * 2
    tl.store(dst, ss, mask=rows < B)
    tl.store(dst + 1, zz, mask=rows < B)


@triton.jit
def _stage(acc, err, k_ptr, offs, mask, BW: tl.constexpr, EW: tl.constexpr):
    """Adds BW k to acc and EW k to err; a stage with both weights zero is never read."""
    if BW != 0.0:
        k = tl.load(k_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        acc = acc + BW * k
        if EW != 0.0:
            err = err + EW * k
    else:
        if EW != 0.0:
            k = tl.load(k_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            err = err + EW * k
    return acc, err


@triton.jit
def rk_kernel(y1_ptr, part_ptr, y0_ptr, k0_ptr, k1_ptr, k2_ptr, k3_ptr, k4_ptr, k5_ptr, k6_ptr,
              dt_ptr, dt_stride, rtol_ptr, rtol_stride, atol_ptr, atol_stride, B, N, chunks,
              B0: tl.constexpr, B1: tl.constexpr, B2: tl.constexpr, B3: tl.constexpr,
              B4: tl.constexpr, B5: tl.constexpr, B6: tl.constexpr,
              E0: tl.constexpr, E1: tl.constexpr, E2: tl.constexpr, E3: tl.constexpr,
              E4: tl.constexpr, E5: tl.constexpr, E6: tl.constexpr,
              ERR: tl.constexpr, ROUND_BF16: tl.constexpr, ROWS: tl.constexpr, QUADS: tl.constexpr, WIDE: tl.constexpr):
    """y1 = y0 + dt sum_i B_i k_i ; part[b, chunk] = sum over the tile of
    (dt sum_i E_i k_i / (atol + rtol max(|y0|, |y1|)))^2. Weights are compile-time constants."""
    rows, chunk, smp, quad, lane, row_ok, mask, offs = _tile(B, N, chunks, ROWS, QUADS, WIDE)
    y0 = tl.load(y0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    acc = tl.zeros((ROWS, QUADS, 4), dtype=tl.float32)
    err = tl.zeros((ROWS, QUADS, 4), dtype=tl.float32)
    acc, err = _stage(acc, err, k0_ptr, offs, mask, B0, E0)
    acc, err = _stage(acc, err, k1_ptr, offs, mask, B1, E1)
    acc, err = _stage(acc, err, k2_ptr, offs, mask, B2, E2)
    acc, err = _stage(acc, err, k3_ptr, offs, mask, B3, E3)
    acc, err = _stage(acc, err, k4_ptr, offs, mask, B4, E4)
    acc, err = _stage(acc, err, k5_ptr, offs, mask, B5, E5)
    acc, err = _stage(acc, err, k6_ptr, offs, mask, B6, E6)
    dt = _coef(dt_ptr, dt_stride, smp, row_ok)
    y1 = y0 + dt * acc
    tl.store(y1_ptr + offs, _to_state(y1, y1_ptr, ROUND_BF16), mask=mask)
    if ERR:
        rtol = _coef(rtol_ptr, rtol_stride, smp, row_ok)
        atol = _coef(atol_ptr, atol_stride, smp, row_ok)
        scale = tl.where(mask, atol + rtol * tl.maximum(tl.abs(y0), tl.abs(y1)), 1.0)
        ratio = tl.where(mask, (dt * err) / scale, 0.0)
        tl.store(part_ptr + rows * chunks + chunk, tl.sum(tl.sum(ratio * ratio, axis=2), axis=1), mask=rows < B)


_KERNELS = (em_kernel, affine_kernel, sumsq_kernel, rk_kernel)


def interpreted() -> bool:
    """Whether these kernels, and the triton.language functions they call, run under the
    interpreter (both were decorated while TRITON_INTERPRET=1 was set)."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - a triton without the interpreter
        return False
    ours = all(isinstance(k, InterpretedFunction) for k in _KERNELS)
    theirs = isinstance(tl.standard.sum, InterpretedFunction) and isinstance(tl.random.philox, InterpretedFunction)
    return ours and theirs


@functools.lru_cache(maxsize=None)
def _interpreted() -> bool:
    return interpreted()


def round_bf16(dtype) -> bool:
    """The ROUND_BF16 constant for a state of ``dtype`` (see ``_to_state``)."""
    return dtype == torch.bfloat16 and _interpreted()


def launch(kernel, geometry, *args, **constexprs):
    """Runs ``kernel`` over ``geometry``'s grid with its tile constants, on the device of its
    first tensor argument (not necessarily the current CUDA device)."""
    device = next(a.device for a in args if isinstance(a, torch.Tensor))
    grid = (geometry.programs,)
    # no fused multiply-adds: each operation rounds as in the PyTorch reference
    consts = dict(ROWS=geometry.rows, QUADS=geometry.quads, WIDE=geometry.wide, num_warps=4,
                  enable_fp_fusion=False, **constexprs)
    if device.type == "cuda":
        with torch.cuda.device(device):
            kernel[grid](*args, **consts)
    else:
        kernel[grid](*args, **consts)
