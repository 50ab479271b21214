"""Fused kernels against their PyTorch references, the noise contract, dispatch and autograd.

On a machine without CUDA the Triton kernels run on CPU tensors under the Triton interpreter,
which triton enables only when TRITON_INTERPRET=1 is set before triton is first imported: this
module sets it before importing anything that could import triton (sdesolve itself imports
triton only on the Triton path). If triton was already imported without it (another module
collected earlier, or a CUDA machine, where the compiled kernels are tested), the interpreter
tests run once more in a fresh process (``test_interpreter_suite_in_fresh_process``).

Tolerances: float32 results of the kernel and of ``*_ref`` differ by float32 rounding only: op
order and the transcendental functions of the Box-Muller transform. Under the interpreter
(numpy's float32 log/cos/sin against torch's) that is a few ulps of |z| <= 5.7, hence
rtol = atol = 1e-5. Compiled for CUDA, Triton 3.9 calls libdevice's logf/sinf/cosf and
sqrt.approx (an ulp or two); atol = 1e-4 there also covers builds that lower tl.sin/tl.cos/tl.log
to the hardware approximations (sin/cos.approx: absolute error 2^-20.5, about 7e-7, times
r <= 5.7; lg2.approx: absolute error about 2^-22 in -2 log u, which the square root amplifies
by 1/(2 r): an error above 1e-4 needs r < 1.1e-3, probability about 6e-7 per pair).
A float16/bfloat16 result is the same float32 value rounded once more, which can land one ulp of
the state dtype apart, hence the dtype's eps as rtol (torch.testing's default for these dtypes).
"""
import os
import subprocess
import sys

import torch

if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

from sdesolve.kernels import (  # noqa: E402
    affine_noise_step,
    affine_noise_step_ref,
    em_step,
    em_step_ref,
    langevin_step,
    langevin_step_ref,
    langevin_step_size,
    langevin_step_size_ref,
    rk_combine,
    rk_combine_ref,
)
from sdesolve.kernels import common, dispatch  # noqa: E402
from sdesolve.noise import PRIOR_STEP, Noise, philox4x32  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INTERPRETER = dispatch.triton_installed() and dispatch.interpreter_active()

DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(
        not INTERPRETER, reason="Triton interpreter inactive in this process: see test_interpreter_suite_in_fresh_process")),
    pytest.param("cuda", marks=pytest.mark.gpu),
]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# per-sample shapes, 1-D to 4-D, odd sizes (not multiples of the 4-element Philox quad)
SHAPES = [(37,), (3, 7), (2, 5, 3), (2, 3, 5, 7)]
BATCH = 3

# Dormand & Prince (1980), "A family of embedded Runge-Kutta formulae": 5th-order weights b and
# 4th-order b_hat; Bogacki & Shampine (1989), "A 3(2) pair of Runge-Kutta formulas".
DOPRI5_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
DOPRI5_BHAT = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
BOSH3_B = (2 / 9, 1 / 3, 4 / 9, 0.0)
BOSH3_BHAT = (7 / 24, 1 / 4, 1 / 3, 1 / 8)


def _err_weights(b, bhat):
    return tuple(x - y for x, y in zip(b, bhat))


@pytest.fixture
def forced(monkeypatch):
    """The Triton path for every call a kernel can serve."""
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")


def _atol(device):
    return 1e-4 if torch.device(device).type == "cuda" else 1e-5


def _close(actual, expected, dtype):
    atol = _atol(actual.device)
    if dtype == torch.float32:
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=atol)
    else:
        torch.testing.assert_close(actual.float(), expected.float(), rtol=torch.finfo(dtype).eps, atol=atol)


def _noise(batch, device, seed=11, step=5):
    noise = Noise.from_seed(seed, batch, device=device)
    return noise.at(torch.arange(step, step + batch, device=device))  # per-sample step counters


def _inputs(shape, dtype, device, seed=0, batch=BATCH):
    gen = torch.Generator().manual_seed(seed)
    full = (batch,) + shape

    def rnd():
        return torch.randn(full, generator=gen).to(device=device, dtype=dtype)

    dt = (torch.rand(batch, generator=gen, dtype=torch.float64) - 0.5).to(device)  # signed, float64 time
    coef = (torch.rand(batch, generator=gen) + 0.5).to(device)
    return rnd, dt, coef


def _spy(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


# --- noise ------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_in_kernel_noise_equals_noise_normal(device, forced):
    """em_step(0, 0, g=1, dt=1) is z itself; it must equal Noise.normal for every stream kind."""
    streams = torch.tensor([0, 1, 2**32 + 7, -3, 2**62 + 12345, -(2**40)], dtype=torch.int64)
    steps = torch.tensor([0, 1, 7, PRIOR_STEP, 2**31 + 5, 123456], dtype=torch.int64)
    noise = Noise(streams.to(device), steps.to(device))
    for shape in [(1,), (2,), (5,), (4, 9), (3, 1, 7)]:
        x = torch.zeros((6,) + shape, device=device)
        for draw in (0, 1, 6):
            z = em_step(x, x, 1.0, 1.0, noise, draw)
            torch.testing.assert_close(z, noise.normal(x, draw), rtol=1e-5, atol=_atol(device))
    # a sample's noise does not depend on the batch it is drawn in
    x = torch.zeros(6, 11, device=device)
    z_full = em_step(x, x, 1.0, 1.0, noise, 3)
    idx = torch.tensor([4, 1], device=device)
    z_sub = em_step(x[idx], x[idx], 1.0, 1.0, noise[idx], 3)
    torch.testing.assert_close(z_sub, z_full[idx], rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_in_kernel_noise_moments(device, forced, monkeypatch):
    """n = 1e5 in-kernel normals: mean, variance, fourth moment, each lane of the quad, and the
    correlation between draws and steps, within 5 standard errors of N(0, 1):
    SE(mean) = 1/sqrt(n), SE(var) = sqrt(2/n) (Var z^2 = 2), SE(E z^4) = sqrt(96/n)
    (Var z^4 = 105 - 9), SE(corr) = 1/sqrt(n); per lane n/4 draws."""
    monkeypatch.setattr(common, "BLOCK_QUADS", 4096)  # fewer, larger programs for the interpreter
    B, N = 20, 5000
    n = B * N
    noise = Noise.from_seed(2024, B, device=device).at(3)
    x = torch.zeros(B, N, device=device)
    z = em_step(x, x, 1.0, 1.0, noise, 0).double()
    se = n ** -0.5
    assert abs(z.mean().item()) < 5 * se
    assert abs(z.var().item() - 1) < 5 * (2 / n) ** 0.5
    assert abs(z.pow(4).mean().item() - 3) < 5 * (96 / n) ** 0.5
    lanes = z.reshape(B, N // 4, 4)
    for lane in range(4):
        v = lanes[..., lane]
        assert abs(v.mean().item()) < 5 * (4 / n) ** 0.5, lane
        assert abs(v.var().item() - 1) < 5 * (8 / n) ** 0.5, lane
    z_draw = em_step(x, x, 1.0, 1.0, noise, 1).double()
    z_step = em_step(x, x, 1.0, 1.0, noise.at(4), 0).double()
    for other in (z_draw, z_step):
        corr = torch.corrcoef(torch.stack((z.reshape(-1), other.reshape(-1))))[0, 1].item()
        assert abs(corr) < 5 * se


# --- Euler-Maruyama ---------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_em_step_matches_ref(device, dtype, shape, forced):
    rnd, dt, coef = _inputs(shape, dtype, device)
    x, drift = rnd(), rnd()
    noise = _noise(BATCH, device)
    z = torch.randn(x.shape).to(device)
    for g in (coef, rnd().float().abs(), 0.7):  # per sample, per element, a number
        got = em_step(x, drift, g, dt, noise, 2, return_mean=True)
        want = em_step_ref(x, drift, g, dt, noise, 2, return_mean=True)
        for a, b in zip(got, want):
            assert a.dtype == dtype and a.shape == x.shape
            _close(a, b, dtype)
        _close(em_step(x, drift, g, dt, z=z), em_step_ref(x, drift, g, dt, z=z), dtype)


def test_em_step_ref_formula():
    """The reference against the formula in float64 on the same draw."""
    x, drift, z = torch.randn(3, 4, 5, dtype=torch.float64).unbind(0)
    dt = torch.tensor([0.1, -0.2, 0.3, 0.05], dtype=torch.float64)
    g = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64)
    out, mean = em_step_ref(x, drift, g, dt, z=z, return_mean=True)
    torch.testing.assert_close(mean, x + drift * dt[:, None])
    torch.testing.assert_close(out, x + drift * dt[:, None] + g[:, None] * dt.abs().sqrt()[:, None] * z)


# --- affine + noise, reverse diffusion ----------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_affine_matches_ref(device, dtype, shape, forced):
    rnd, dt, coef = _inputs(shape, dtype, device, seed=1)
    x, s = rnd(), rnd()
    noise = _noise(BATCH, device)
    z = torch.randn(x.shape).to(device=device, dtype=dtype)
    a, b, c = coef, dt, coef.flip(0).double()
    for kw in (dict(noise=noise, draw=1), dict(z=z)):
        got = affine_noise_step(x, a, s, b, c, return_mean=True, **kw)
        want = affine_noise_step_ref(x, a, s, b, c, return_mean=True, **kw)
        for u, v in zip(got, want):
            _close(u, v, dtype)
    _close(affine_noise_step(x, 0.9, s, b), affine_noise_step_ref(x, 0.9, s, b), dtype)  # no noise term


def test_affine_refs_formulas():
    x, s, f, z = torch.randn(4, 3, 6, dtype=torch.float64).unbind(0)
    a, b, c = torch.rand(3, 3, dtype=torch.float64).unbind(0)
    out, mean = affine_noise_step_ref(x, a, s, b, c, z=z, return_mean=True)
    torch.testing.assert_close(mean, a[:, None] * x + b[:, None] * s)
    torch.testing.assert_close(out, mean + c[:, None] * z)


# --- Langevin corrector ---------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_langevin_step_matches_ref(device, dtype, shape, forced):
    rnd, _, coef = _inputs(shape, dtype, device, seed=2)
    x, s = rnd(), rnd()
    noise = _noise(BATCH, device)
    z = torch.randn(x.shape).to(device)
    for kw in (dict(noise=noise, draw=0), dict(z=z)):
        eps = langevin_step_size(s, 0.16, coef, **kw)
        eps_ref = langevin_step_size_ref(s, 0.16, coef, **kw)
        torch.testing.assert_close(eps, eps_ref, rtol=_atol(device), atol=0)
        got = langevin_step(x, s, 0.16, coef, return_mean=True, **kw)
        want = langevin_step_ref(x, s, 0.16, coef, return_mean=True, **kw)
        for u, v in zip(got, want):
            _close(u, v, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_langevin_formula_and_zero_score(device, forced):
    """Per-sample step size of score_sde's corrector (norms per sample); a zero score moves nothing."""
    x = torch.randn(4, 3, 5, device=device)
    s = torch.randn(4, 3, 5, device=device)
    s[2] = 0.0
    z = torch.randn(4, 3, 5, device=device)
    snr, alpha = 0.2, torch.tensor([1.0, 0.9, 0.8, 0.99], device=device)
    eps = 2 * alpha * (snr * z.flatten(1).norm(dim=1) / s.flatten(1).norm(dim=1)) ** 2
    eps[2] = 0.0
    e = eps[:, None, None]
    for step in (langevin_step, langevin_step_ref):
        out, mean = step(x, s, snr, alpha, z=z, return_mean=True)
        torch.testing.assert_close(mean, x + e * s, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out, x + e * s + (2 * e).sqrt() * z, rtol=1e-5, atol=1e-5)
        assert torch.equal(out[2], x[2])


# --- Runge-Kutta combination ------------------------------------------------------------------------

TABLEAUS = [
    pytest.param(DOPRI5_B, _err_weights(DOPRI5_B, DOPRI5_BHAT), id="dopri5"),
    pytest.param(BOSH3_B, _err_weights(BOSH3_B, BOSH3_BHAT), id="bosh3"),
    pytest.param((1.0,), None, id="euler"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("b, e", TABLEAUS)
def test_rk_combine_matches_ref(device, dtype, shape, b, e, forced):
    rnd, dt, _ = _inputs(shape, dtype, device, seed=3)
    y0 = rnd()
    ks = [rnd() for _ in b]
    rtol = torch.tensor([1e-3, 1e-2, 1e-4], device=device)
    y1, err = rk_combine(y0, ks, b, dt, e, rtol=rtol, atol=1e-4)
    y1_ref, err_ref = rk_combine_ref(y0, ks, b, dt, e, rtol=rtol, atol=1e-4)
    _close(y1, y1_ref, dtype)
    if e is None:
        assert err is None and err_ref is None
    else:
        assert err.shape == (BATCH,) and err.dtype == torch.float32
        torch.testing.assert_close(err, err_ref, rtol=_atol(device), atol=0)


def test_rk_combine_ref_formula():
    """The reference against y1 and Hairer's error norm computed in float64."""
    gen = torch.Generator().manual_seed(4)
    y0 = torch.randn(3, 2, 5, generator=gen, dtype=torch.float64)
    ks = [torch.randn(3, 2, 5, generator=gen, dtype=torch.float64) for _ in DOPRI5_B]
    dt = torch.tensor([0.1, -0.05, 0.2], dtype=torch.float64)
    e = _err_weights(DOPRI5_B, DOPRI5_BHAT)
    y1, err = rk_combine_ref(y0, ks, DOPRI5_B, dt, e, rtol=1e-3, atol=1e-6)
    d = dt[:, None, None]
    want = y0 + d * sum(w * k for w, k in zip(DOPRI5_B, ks))
    torch.testing.assert_close(y1, want)
    est = d * sum(w * k for w, k in zip(e, ks))
    scale = 1e-6 + 1e-3 * torch.maximum(y0.abs(), want.abs())
    torch.testing.assert_close(err, ((est / scale) ** 2).mean(dim=(1, 2)).sqrt())


@pytest.mark.parametrize("device", DEVICES)
def test_rk_combine_never_reads_zero_weight_stages(device, forced):
    y0 = torch.randn(2, 9, device=device)
    ks = [torch.randn(2, 9, device=device) for _ in DOPRI5_B]
    ks[1] = torch.full_like(y0, float("nan"))  # Dopri5's second stage has b = b_hat = 0
    for fn in (rk_combine, rk_combine_ref):
        y1, err = fn(y0, ks, DOPRI5_B, 0.1, _err_weights(DOPRI5_B, DOPRI5_BHAT), rtol=1e-3, atol=1e-6)
        assert torch.isfinite(y1).all() and torch.isfinite(err).all()


# --- tiles: several samples per program and several programs per sample --------------------------------

def test_tile_geometry_covers_every_element():
    for batch, numel in [(1, 1), (3, 37), (1000, 2), (2, 5000), (7, 516), (1, 2**28), (100, 3 * 64 * 64)]:
        for block in (16, 256):
            g = common.tile_geometry(batch, numel, block)
            assert g.rows * g.quads <= max(block, g.quads)
            assert g.chunks * g.quads * 4 >= numel > (g.chunks - 1) * g.quads * 4
            assert g.programs == -(-batch // g.rows) * g.chunks
            assert g.wide == ((batch + g.rows) * g.chunks * g.quads * 4 >= 2**31)


@pytest.mark.parametrize("device", DEVICES)
def test_multi_tile_reductions(device, forced, monkeypatch):
    """Tiles of 16 quads: a 210-element sample spans 4 programs, 8 samples of 5 share one."""
    monkeypatch.setattr(common, "BLOCK_QUADS", 16)
    batch = 9
    for shape, rows, chunks in [((5, 6, 7), 1, 4), ((5,), 8, 1)]:
        rnd, dt, coef = _inputs(shape, torch.float32, device, seed=5, batch=batch)
        x, s = rnd(), rnd()
        geom = common.tile_geometry(batch, x[0].numel())
        assert (geom.rows, geom.chunks) == (rows, chunks)
        noise = _noise(batch, device)
        _close(langevin_step_size(s, 0.1, coef, noise, 0), langevin_step_size_ref(s, 0.1, coef, noise, 0),
               torch.float32)
        _close(em_step(x, s, coef, dt, noise, 0), em_step_ref(x, s, coef, dt, noise, 0), torch.float32)
        e = _err_weights(BOSH3_B, BOSH3_BHAT)
        ks = [rnd() for _ in BOSH3_B]
        for u, v in zip(rk_combine(x, ks, BOSH3_B, dt, e, rtol=1e-3, atol=1e-3),
                        rk_combine_ref(x, ks, BOSH3_B, dt, e, rtol=1e-3, atol=1e-3)):
            _close(u, v, torch.float32)


# --- dispatch, autograd, errors -------------------------------------------------------------------------

def test_dispatch_modes(monkeypatch):
    from sdesolve.kernels import em

    calls = _spy(monkeypatch, em, "_em_step_triton")
    x = torch.randn(2, 5)
    noise = Noise.from_seed(0, 2)
    for mode, expect in (("torch", 0), ("auto", 0), ("", 0)):  # auto: CPU tensors take *_ref
        monkeypatch.setenv(dispatch.ENV_VAR, mode)
        em_step(x, x, 1.0, 0.1, noise)
        assert len(calls) == expect, mode
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    em_step(x.double(), x.double(), 1.0, 0.1, noise)  # float64 has no kernel
    assert len(calls) == 0
    monkeypatch.setenv(dispatch.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="SDESOLVE_KERNELS"):
        em_step(x, x, 1.0, 0.1, noise)
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    monkeypatch.setattr(dispatch, "interpreter_active", lambda: False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        em_step(x, x, 1.0, 0.1, noise)


@pytest.mark.skipif(not INTERPRETER, reason="needs the Triton interpreter in this process")
def test_forced_triton_runs_the_kernel_unless_grad_is_needed(forced, monkeypatch):
    from sdesolve.kernels import em, rk

    em_calls = _spy(monkeypatch, em, "_em_step_triton")
    rk_calls = _spy(monkeypatch, rk, "_rk_combine_triton")
    x = torch.randn(2, 5)
    drift = torch.randn(2, 5, requires_grad=True)
    dt = torch.tensor([0.1, -0.3])
    noise = Noise.from_seed(0, 2)
    with torch.no_grad():
        em_step(x, drift, 1.0, dt, noise)
    assert len(em_calls) == 1
    out = em_step(x, drift, 1.0, dt, noise)  # needs a gradient: *_ref, differentiable
    assert len(em_calls) == 1
    out.sum().backward()
    torch.testing.assert_close(drift.grad, dt[:, None].expand(2, 5))
    k = torch.randn(2, 5, requires_grad=True)
    y1, _ = rk_combine(x, [k], (1.0,), dt)
    assert len(rk_calls) == 0
    y1.sum().backward()
    torch.testing.assert_close(k.grad, dt[:, None].expand(2, 5))


def test_refs_are_differentiable():
    """gradcheck (float64, always *_ref) through the nonlinear Langevin step size and error norm."""
    x, s, z = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True).unbind(0)
    alpha = torch.tensor([1.0, 0.5], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x, s: langevin_step(x, s, 0.16, alpha, z=z.detach()), (x, s))
    ks = [torch.randn(2, 4, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    e = _err_weights(BOSH3_B, BOSH3_BHAT)
    assert torch.autograd.gradcheck(
        lambda y, *k: rk_combine(y, k, BOSH3_B, 0.1, e, rtol=1e-2, atol=1e-2)[1], (x, *ks))


def test_argument_errors():
    x = torch.randn(3, 4)
    noise = Noise.from_seed(0, 3)
    with pytest.raises(ValueError, match="drift has shape"):
        em_step(x, x[:2], 1.0, 0.1, noise)
    with pytest.raises(ValueError, match="exactly one of noise"):
        em_step(x, x, 1.0, 0.1, noise, z=x)
    with pytest.raises(ValueError, match="exactly one of noise"):
        em_step(x, x, 1.0, 0.1)
    with pytest.raises(ValueError, match="dt must be a number or a tensor of shape"):
        em_step(x, x, 1.0, torch.ones(2), noise)
    with pytest.raises(ValueError, match="g must be a number"):
        em_step(x, x, torch.ones(3, 1), 0.1, noise)
    with pytest.raises(ValueError, match="noise holds 2 samples"):
        em_step(x, x, 1.0, 0.1, Noise.from_seed(0, 2))
    with pytest.raises(ValueError, match="draw must be an int"):
        em_step(x, x, 1.0, 0.1, noise, -1)
    with pytest.raises(ValueError, match="without a noise term"):
        affine_noise_step(x, 1.0, x, 1.0, None, noise)
    with pytest.raises(ValueError, match="b_err has 1 weights for 2 stages"):
        rk_combine(x, [x, x], (0.5, 0.5), 0.1, (1.0,), rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="needs rtol and atol"):
        rk_combine(x, [x, x], (0.5, 0.5), 0.1, (1.0, -1.0))
    with pytest.raises(TypeError, match="states must be"):
        em_step(x.long(), x.long(), 1.0, 0.1, noise)


def _run(code, env):
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_import_is_lazy_and_forced_cpu_without_interpreter_is_a_clear_error():
    """A fresh process: importing sdesolve.kernels does not import triton; forcing the Triton
    path on CPU tensors without the interpreter names the fix."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", dispatch.ENV_VAR)}
    code = (
        "import sys, os, torch\n"
        "import sdesolve.kernels as K\n"
        "from sdesolve.noise import Noise\n"
        "assert 'triton' not in sys.modules, 'triton imported eagerly'\n"
        "x = torch.zeros(2, 3)\n"
        "K.em_step(x, x, 1.0, 0.1, Noise.from_seed(0, 2))\n"
        "assert 'triton' not in sys.modules, 'triton imported on the torch path'\n"
        "os.environ['SDESOLVE_KERNELS'] = 'triton'\n"
        "try:\n"
        "    K.em_step(x, x, 1.0, 0.1, Noise.from_seed(0, 2))\n"
        "except RuntimeError as e:\n"
        "    assert 'TRITON_INTERPRET=1' in str(e), e\n"
        "    print('clear error')\n"
    )
    if dispatch.triton_installed() and torch.cuda.is_available():
        pytest.skip("on a CUDA machine the forced path runs the compiled kernels")
    res = _run(code, env)
    assert res.returncode == 0, res.stderr
    if dispatch.triton_installed():
        assert "clear error" in res.stdout


@pytest.mark.skipif(INTERPRETER or not dispatch.triton_installed(),
                    reason="the interpreter tests ran in this process")
def test_interpreter_suite_in_fresh_process():
    """Runs this module's interpreter tests where TRITON_INTERPRET=1 precedes the triton import."""
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    env.pop(dispatch.ENV_VAR, None)
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", os.path.abspath(__file__)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]


_COMPILE_FOR_SM90 = r"""
import itertools
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from sdesolve.kernels import triton_kernels as tk

assert not tk.interpreted()
TILES = [dict(ROWS=1, QUADS=256, WIDE=False), dict(ROWS=256, QUADS=1, WIDE=True)]
DOPRI5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


def compile_(kernel, types, consts):
    sig = {n: ("constexpr" if n in consts else types[n]) for n in kernel.arg_names}
    aligned = [n for n in kernel.arg_names if n.endswith("_ptr") and n in types] + ["N"]
    attrs = {(kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    src = ASTSource(fn=kernel, signature=sig, constexprs=consts, attrs=attrs)
    out = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "enable_fp_fusion": False})
    assert out.asm["cubin"]


count = 0
for st, tile in itertools.product(["*fp32", "*bf16"], TILES):
    common = dict(stream_ptr="*i64", step_ptr="*i64", draw="i32", B="i32", N="i32", chunks="i32")
    em = dict(out_ptr=st, mean_ptr=st, x_ptr=st, drift_ptr=st, g_ptr="*fp32", g_stride="i32", dt_ptr="*fp64",
              dt_stride="i32", z_ptr=st, **common)
    for noise, g_full in [(1, False), (2, True)]:
        compile_(tk.em_kernel, em, dict(G_FULL=g_full, NOISE=noise, STORE_MEAN=True, ROUND_BF16=False, **tile))
    aff = dict(out_ptr=st, mean_ptr=st, x_ptr=st, s_ptr=st, f_ptr=st, z_ptr=st, a_ptr="*fp64", a_stride="i32",
               b_ptr="*fp32", b_stride="i32", c_ptr="*fp32", c_stride="i32", **common)
    for noise in (0, 1, 2):
        compile_(tk.affine_kernel, aff, dict(HAS_F=noise == 1, NOISE=noise, STORE_MEAN=True, ROUND_BF16=False, **tile))
    compile_(tk.sumsq_kernel, dict(part_ptr="*fp32", s_ptr=st, z_ptr=st, **common), dict(NOISE=1, **tile))
    rk = dict(y1_ptr=st, part_ptr="*fp32", y0_ptr=st, **{f"k{i}_ptr": st for i in range(7)}, dt_ptr="*fp64",
              dt_stride="i32", rtol_ptr="*fp64", rtol_stride="i32", atol_ptr="*fp64", atol_stride="i32",
              B="i32", N="i32", chunks="i32")
    for err in (True, False):
        consts = {f"B{i}": DOPRI5[i] for i in range(7)}
        consts.update({f"E{i}": (E[i] if err else 0.0) for i in range(7)})
        compile_(tk.rk_kernel, rk, dict(ERR=err, ROUND_BF16=False, **consts, **tile))
    count += 8
print("compiled", count)
"""


def test_kernels_compile_for_cuda():
    """The interpreter is not the compiler: every kernel variant must also compile to a cubin for
    sm_90 (in a fresh process without TRITON_INTERPRET; no GPU needed)."""
    if not dispatch.triton_installed():
        pytest.skip("triton is not installed")
    try:
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError:
        pytest.skip("this triton has no ASTSource")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = _run(_COMPILE_FOR_SM90, env)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "compiled 32" in res.stdout


@pytest.mark.gpu
@pytest.mark.slow
def test_wide_offsets_beyond_2_31_elements():
    """A sample of 2^31 + 6 float16 elements (12 GiB of tensors) takes 64-bit offsets; its last
    quads and a few others must hold the counter-based normals of their element indices."""
    n = 2**31 + 6
    x = torch.zeros(1, n, dtype=torch.float16, device="cuda")
    noise = Noise(torch.tensor([2**33 + 5], device="cuda"), torch.tensor([9], device="cuda"))
    assert common.tile_geometry(1, n).wide
    z = em_step(x, x, 1.0, 1.0, noise, 1)
    idx = torch.tensor([0, 5, 2**31 - 3, 2**31 + 1, n - 2, n - 1], dtype=torch.int64)
    r = philox4x32(idx // 4, torch.full_like(idx, 9), torch.full_like(idx, 1), torch.zeros_like(idx),
                   (2**33 + 5) & 0xFFFFFFFF, (2**33 + 5) >> 32)
    lane = idx % 4

    def u(v):
        v = torch.where(v >= 2**31, v - 2**32, v)
        return torch.where(v < 0, -v - 1, v).to(torch.float32) * 4.6566127342e-10

    ua = torch.where(lane < 2, r[0], r[2])
    ub = torch.where(lane < 2, r[1], r[3])
    rad = torch.sqrt(-2.0 * torch.log(torch.clamp_min(u(ua), 1e-7)))
    theta = 6.283185307179586 * u(ub)
    want = torch.where(lane % 2 == 0, rad * torch.cos(theta), rad * torch.sin(theta))
    torch.testing.assert_close(z[0, idx.cuda()].float().cpu(), want.half().float(), rtol=1e-3, atol=1e-3)
