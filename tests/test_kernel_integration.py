"""The solvers on the fused kernels, and fixed-step loops fit for CUDA-graph capture.

* Wiring: EulerMaruyama, ReverseDiffusion, Ancestral, DDIM(eta > 0), the Langevin corrector
  (both step-size rules), annealed Langevin and the embedded Runge-Kutta step call the fused
  updates of :mod:`sdesolve.kernels`, handing them the counter-based Noise itself (so that the
  kernels draw the same numbers in-kernel) and an explicit z for any other noise.
* Same draws: in a fresh process with the Triton interpreter, ``SDESOLVE_KERNELS=triton`` (every
  update a Triton kernel, normals generated in-kernel) and ``SDESOLVE_KERNELS=torch`` (the
  ``*_ref`` updates, normals from ``Noise.normal``) give the same samples to float32 rounding.
* No host synchronisation inside fixed-step loops, checked on the CPU by running ``solve``'s loop
  under a dispatch mode that fails on every operation that reads a device value on the host.
* ``cuda_graph=True``: a clear error on the CPU; on CUDA (``gpu`` marker) replays equal eager runs.
"""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import sdesolve as sds
from sdesolve.timeplan import plan_times
from sdesolve.kernels import dispatch
from sdesolve.noise import Noise, streams

solve_module = sys.modules["sdesolve.integrate"]
sde_module = sys.modules["sdesolve.solvers.sde"]
langevin_module = sys.modules["sdesolve.solvers.langevin"]
diffusion_module = sys.modules["sdesolve.solvers.diffusion"]
adaptive_module = sys.modules["sdesolve.solvers.adaptive"]
base_module = sys.modules["sdesolve.solvers.base"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GM = sds.GaussianMixture([0.2, 0.5, 0.3], [[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]], [0.1, 0.3, 0.2])


# --- wiring ---------------------------------------------------------------------------------------

def _spy(monkeypatch, module, name, calls):
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append((name, "noise" in kwargs and kwargs["noise"] is not None, "z" in kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


WIRING = [
    (sds.EulerMaruyama(), [(base_module, "affine_noise_step")]),  # linear in the score: one affine update
    (sds.ReverseDiffusion(), [(base_module, "affine_noise_step")]),
    (sds.Ancestral(0.7), [(sde_module, "affine_noise_step")]),
    (sds.DDIM(0.5), [(diffusion_module, "affine_noise_step")]),
    (sds.PredictorCorrector(sds.ReverseDiffusion(), sds.Langevin(0.16, 2, expected_norms=False)),
     [(langevin_module, "langevin_step"), (base_module, "affine_noise_step")]),
    (sds.PredictorCorrector(sds.EulerMaruyama(), sds.Langevin(0.16, 1, expected_norms=True)),
     [(langevin_module, "affine_noise_step"), (base_module, "affine_noise_step")]),
    (sds.AnnealedLangevin(n_steps=2), [(langevin_module, "affine_noise_step")]),
]


@pytest.mark.parametrize("solver,fused", WIRING, ids=lambda v: type(v).__name__ if isinstance(v, sds.Solver) else "")
def test_solvers_call_the_fused_updates_with_counter_noise(solver, fused, monkeypatch):
    """Every noisy update is a fused call given the Noise (drawn in-kernel on CUDA), except the
    last step without noise (final_noise=False), whose all-zero normals come as an explicit z.
    On a CPU state whose kernels take their reference path, the fixed-grid steps of EM and reverse
    diffusion (AffineSteps) do that path's arithmetic themselves (the next test: bit for bit the
    same); the kernel mode is made "triton" for them here, so that the path a kernel may take is
    the one seen (the update itself still runs its reference: triton is not active)."""
    calls = []
    monkeypatch.setattr(base_module, "kernel_mode", lambda: "triton")
    for module, name in fused:
        _spy(monkeypatch, module, name, calls)
    p = sds.VPSDE()
    steps = 30  # fine enough for the VP corrector's alpha = 1 - beta |dt| to stay positive
    sol = sds.sample(p, GM.score(p), solver, shape=(5, 2), steps=steps, seed=0, final_noise=False)
    assert torch.isfinite(sol.y).all()
    per_step = len(calls) // steps
    assert per_step >= 1 and len(calls) == per_step * steps
    last = calls[-per_step:]
    assert all(has_noise and not has_z for _, has_noise, has_z in calls[:-per_step])
    # the last step's updates see the all-zero noise, as an explicit z
    assert all(has_z and not has_noise for _, has_noise, has_z in last)


@pytest.mark.parametrize("solver", [sds.Euler(), sds.EulerMaruyama(), sds.ReverseDiffusion()], ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixed_grid_affine_steps_equal_the_kernel_reference_bit_for_bit(solver, dtype, monkeypatch):
    """AffineSteps' own arithmetic (held_affine_step with Noise.normal's draws) against the same
    rows handed to affine_noise_step with the Noise (the kernels' reference path), every step."""
    p = sds.VPSDE()
    x = torch.randn(6, 3, dtype=dtype, generator=torch.Generator().manual_seed(0))

    def run():
        return sds.sample(p, GM.score(p), solver, x_T=x[:, :2], steps=25, seed=4, final_noise=False).y

    plain = run()
    monkeypatch.setattr(base_module, "kernel_mode", lambda: "triton")
    checked = run()
    assert plain.dtype == dtype and torch.equal(plain, checked)


@pytest.mark.parametrize("solver", [sds.Euler(), sds.EulerMaruyama(), sds.ReverseDiffusion()], ids=repr)
def test_fixed_grid_affine_steps_keep_the_state_dtype_for_a_model_of_another(solver):
    """A score in float64 for a float32 state: the state stays float32, as on the kernel path."""
    p = sds.VPSDE()
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    wide = lambda x, t: GM.score_at(x.double(), t, p)  # noqa: E731
    y = sds.sample(p, wide, solver, x_T=x, steps=10, seed=1).y
    same = sds.sample(p, GM.score(p), solver, x_T=x, steps=10, seed=1).y
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, same, rtol=1e-5, atol=1e-5)


def test_euler_maruyama_on_a_general_sde_calls_em_step_with_the_noise(monkeypatch):
    calls = []
    _spy(monkeypatch, sde_module, "em_step", calls)
    rev = sds.VPSDE().reverse(GM.score(sds.VPSDE()))
    sde = sds.SDE(rev.drift, rev.diffusion, noise="additive")
    sds.solve(sde, torch.randn(5, 2), 1.0, 1e-3, sds.EulerMaruyama(), steps=12, seed=0)
    assert len(calls) == 12 and all(has_noise and not has_z for _, has_noise, has_z in calls)


def _col(c):
    return c[:, None]


def test_updates_use_the_documented_draws():
    """One step of each fused solver against its unfused formula in float64, with the normals
    taken from Noise.normal at the documented draws: 0 for the predictors, 16 + j for corrector
    iteration j, j for annealed Langevin update j (what the kernels regenerate in-kernel)."""
    p = sds.VPSDE()
    score = GM.score(p)
    B = 4
    x = torch.randn(B, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    t0 = torch.full((B,), 0.6, dtype=torch.float64)
    t1 = torch.full((B,), 0.55, dtype=torch.float64)
    h = t1 - t0
    noise = Noise(streams(9, B)).at(7)
    z = lambda draw: noise.normal(x, draw)  # noqa: E731
    rev = p.reverse(score)

    def close(solver, want, eq=rev, state=None, at=sds.Position()):
        got = solver.step(eq, t0, t1, x, state, noise, at).y
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)

    # Euler-Maruyama: x + f h + g sqrt|h| z_0
    close(sds.EulerMaruyama(), x + rev.drift(t0, x) * _col(h) + rev.diffusion(t0, x) * _col(h.abs().sqrt()) * z(0))
    # reverse diffusion: (2 - a) x + s_ts^2 s + s_ts z_0 over the transition t1 -> t0
    a = torch.exp(p.log_alpha(t0) - p.log_alpha(t1))
    s2 = p.sigma(t0) ** 2 - a**2 * p.sigma(t1) ** 2
    close(sds.ReverseDiffusion(), _col(2 - a) * x + _col(s2) * score(x, t0) + _col(s2.sqrt()) * z(0))
    # ancestral (DDPM posterior): (a sig_s^2 / sig_t^2) x + (alpha_s s_ts^2 / sig_t^2) D + sqrt(var) z_0
    D = rev.denoised(t0, x)
    sig_t2, sig_s2 = p.sigma(t0) ** 2, p.sigma(t1) ** 2
    mean = _col(a * sig_s2 / sig_t2) * x + _col(p.alpha(t1) * s2 / sig_t2) * D
    close(sds.Ancestral(), mean + _col((s2 * sig_s2 / sig_t2).sqrt()) * z(0))
    # DDIM(eta): alpha_s D + sqrt(sigma_s^2 - c^2) eps_hat + c z_0, c = eta sigma_s sqrt(1 - e^{-2h})
    eta = 0.6
    lam_h = p.lam(t1) - p.lam(t0)
    c = eta * p.sigma(t1) * torch.sqrt(-torch.expm1(-2 * lam_h))
    eps_hat = (x - _col(p.alpha(t0)) * D) / _col(p.sigma(t0))
    want = _col(p.alpha(t1)) * D + _col((sig_s2 - c**2).sqrt()) * eps_hat + _col(c) * z(0)
    ddim = sds.DDIM(eta)
    close(ddim, want, state=ddim.init(rev, t0, x))
    # Langevin corrector, realized norms, two iterations: draws 16 and 17
    alpha = p.langevin_alpha(t0, h)
    y = x
    for j in range(2):
        s, zj = score(y, t0), noise.normal(y, 16 + j)
        eps = 2 * alpha * (0.16 * zj.norm(dim=1) / s.norm(dim=1)) ** 2
        y = y + _col(eps) * s + _col((2 * eps).sqrt()) * zj
    torch.testing.assert_close(sds.Langevin(0.16, 2, expected_norms=False).correct(rev, t0, h, x, noise), y, rtol=1e-12, atol=1e-12)
    # expected norms: eps = 2 alpha snr^2 sigma_t^2
    eps = 2 * alpha * 0.16**2 * sig_t2
    want = x + _col(eps) * score(x, t0) + _col((2 * eps).sqrt()) * z(16)
    torch.testing.assert_close(sds.Langevin(0.16, 1, True).correct(rev, t0, h, x, noise), want, rtol=1e-12, atol=1e-12)
    # annealed Langevin, update j with draw j: x + a alpha^2 s + sqrt(2 a) alpha z_j at t1
    ald = sds.AnnealedLangevin(n_steps=2, step_lr=1e-3, denoise=False)
    a_ald = 1e-3 * p.sigma_edm(t1) ** 2 / p.sigma_edm(t1) ** 2
    y = x
    for j in range(2):
        y = (y + _col(a_ald * p.alpha(t1) ** 2) * score(y, t1)
             + _col(torch.sqrt(2 * a_ald) * p.alpha(t1)) * noise.normal(y, j))
    one_step = plan_times(p, schedule=torch.tensor([0.6, 0.55], dtype=torch.float64)).positions[0]
    close(ald, y, state=ald.init(rev, t0, x), at=one_step)


def test_embedded_runge_kutta_uses_rk_combine(monkeypatch):
    """The embedded pairs form y1 and the error norm in one fused pass; the norm agrees with the
    unfused formula RMS(h sum e_i k_i / (atol + rtol max(|y0|, |y1|))) in float64."""
    calls = []
    real = adaptive_module.rk_combine

    def spy(y0, ks, b, dt, b_err=None, **kw):
        calls.append(len(ks))
        return real(y0, ks, b, dt, b_err, **kw)

    monkeypatch.setattr(adaptive_module, "rk_combine", spy)
    eq = sds.ODE(lambda t, x: -x * (1.0 + t[:, None]))
    solver = sds.Dopri5(rtol=1e-4, atol=1e-6)
    y0 = torch.linspace(-1.0, 2.0, 12, dtype=torch.float64).reshape(3, 4)
    t0, t1 = torch.zeros(3, dtype=torch.float64), torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    out = solver.step(eq, t0, t1, y0, None, None)
    assert calls == [7]
    ks = solver.stages(eq, t0, t1, y0)
    h = (t1 - t0)[:, None]
    est = sum(e * k for e, k in zip(solver._b_err, ks))
    y1 = y0 + h * sum(b * k for b, k in zip(solver.tableau.b, ks))
    want = ((h * est) / (1e-6 + 1e-4 * torch.maximum(y0.abs(), y1.abs()))).pow(2).mean(1).sqrt()
    torch.testing.assert_close(out.y, y1, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(out.error, want, rtol=1e-12, atol=0)
    assert out.error.dtype == torch.float64


def test_euler_maruyama_scalar_noise_shares_one_brownian_motion():
    # scalar noise: every element of a sample sees the same dW, so equal components stay equal
    # (and match Milstein's draw, which drops to EM when g does not depend on x)
    eq = sds.SDE(lambda t, x: 0.5 * x, lambda t, x: 0.7 * torch.ones_like(x), noise="scalar")
    y0 = torch.ones(6, 3, dtype=torch.float64)
    em = sds.solve(eq, y0, 0.0, 1.0, sds.EulerMaruyama(), steps=16, seed=0).y
    assert torch.equal(em[:, 0], em[:, 1]) and torch.equal(em[:, 0], em[:, 2])
    assert em[:, 0].unique().numel() == 6
    mil = sds.solve(eq, y0, 0.0, 1.0, sds.Milstein(), steps=16, seed=0).y
    torch.testing.assert_close(em, mil, rtol=1e-14, atol=1e-14)


def test_langevin_corrector_with_zero_score_stays_put():
    """eps_b = 0 where ||s_b|| = 0: the sample does not move (the realized-norm formula would
    divide by zero); the other samples move."""
    p = sds.VESDE()
    exact = GM.score(p)

    def score(x, t):
        s = exact(x, t)
        return torch.cat([torch.zeros_like(s[:2]), s[2:]])

    eq = p.reverse(score)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    t = torch.full((5,), 0.5, dtype=torch.float64)
    out = sds.Langevin(0.16, 3, expected_norms=False).correct(eq, t, -0.01 * torch.ones_like(t), x, Noise(streams(0, 5)))
    assert torch.equal(out[:2], x[:2]) and not torch.isclose(out[2:], x[2:]).any()


# --- the same draws in-kernel: the Triton interpreter against the torch path -------------------------

_SAME_DRAWS = r"""
import json, os, sys
import torch
import sdesolve as sds
from sdesolve.kernels import dispatch

assert dispatch.interpreter_active(), "the Triton interpreter is not active"
tk = dispatch.load_kernels()
launches = []
real_launch = tk.launch

def launch(kernel, *args, **kwargs):
    launches.append(1)
    return real_launch(kernel, *args, **kwargs)

tk.launch = launch
gm = sds.GaussianMixture([0.2, 0.5, 0.3], [[-2.0, 0.0, 1.0], [2.0, 1.0, 0.0], [0.0, -2.5, 0.5]], [0.1, 0.3, 0.2])
p = sds.VPSDE()
score = gm.score(p)
cases = {
    "EulerMaruyama": (sds.EulerMaruyama(), 4),
    "PC(ReverseDiffusion, Langevin x2)": (sds.PredictorCorrector(sds.ReverseDiffusion(),
                                                                 sds.Langevin(0.16, 2, expected_norms=False)), 30),
    "PC(EulerMaruyama, Langevin expected)": (
        sds.PredictorCorrector(sds.EulerMaruyama(), sds.Langevin(0.16, 1, expected_norms=True)), 30),
    "Ancestral": (sds.Ancestral(), 4),
    "DDIM(0.5)": (sds.DDIM(0.5), 4),
    "Dopri5 fixed": (sds.Dopri5(), 4),
}
out = {}
for name, (solver, steps) in cases.items():
    ys = {}
    for mode in ("torch", "triton"):
        os.environ["SDESOLVE_KERNELS"] = mode
        launches.clear()
        ys[mode] = sds.sample(p, score, solver, shape=(6, 3), steps=steps, seed=2).y
        ys[mode + "_launches"] = len(launches)
    out[name] = dict(diff=float((ys["torch"] - ys["triton"]).abs().max()), scale=float(ys["torch"].abs().max()),
                     torch_launches=ys["torch_launches"], triton_launches=ys["triton_launches"], steps=steps)
print("RESULT" + json.dumps(out))
"""


@pytest.mark.skipif(not dispatch.triton_installed(), reason="triton is not installed")
def test_triton_interpreter_draws_the_same_noise_as_the_torch_path():
    """EM, PC (realized and expected norms), ancestral, DDIM(eta) and fixed-step Dopri5 sampled
    with every update a Triton kernel (interpreted, normals generated in-kernel) against the
    ``*_ref`` path, same seed: they must agree to float32 rounding. One update differs from its
    reference by a few float32 ulps (test_kernels: 1e-5 relative under the interpreter); over 4
    to 30 steps of a 3-D mixture sampler that stays below 1e-4, whereas a normal drawn at another
    (step, draw) counter would differ by O(1)."""
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    env.pop(dispatch.ENV_VAR, None)
    res = subprocess.run([sys.executable, "-c", _SAME_DRAWS], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    out = json.loads(res.stdout.split("RESULT", 1)[1])
    for name, r in out.items():
        assert r["torch_launches"] == 0 and r["triton_launches"] >= r["steps"], (name, r)
        assert r["diff"] <= 1e-4 * max(1.0, r["scale"]), (name, r)


# --- no host synchronisation in fixed-step loops -----------------------------------------------------

_aten = torch.ops.aten
#: operations that read a device value on the host (.item(), bool(), int(), float() all reach
#: _local_scalar_dense) or produce data-dependent shapes (nonzero, masked_select, unique)
_SYNCING = {_aten._local_scalar_dense.default, _aten.nonzero.default, _aten.masked_select.default,
            _aten.equal.default, _aten.allclose.default, _aten.unique_consecutive.default, _aten._unique2.default,
            _aten.unique_dim.default, _aten.repeat_interleave.Tensor}


class HostSyncError(AssertionError):
    pass


class NoHostSync(TorchDispatchMode):
    """Fails on any operation that would synchronise a CUDA stream with the host."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _SYNCING:
            raise HostSyncError(f"host synchronisation inside a fixed-step loop: {func}")
        if func is _aten.index.Tensor and any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in args[1]):
            raise HostSyncError("host synchronisation inside a fixed-step loop: boolean-mask indexing")
        return func(*args, **(kwargs or {}))


@pytest.fixture
def no_host_sync(monkeypatch):
    """solve's fixed-grid loop (what cuda_graph=True captures) under NoHostSync, with the tensor
    methods that read data outside the dispatcher (tolist, numpy, cpu) failing too."""
    entered = []
    real_loop = solve_module._loop

    def fail(name):
        def method(self, *args, **kwargs):
            raise HostSyncError(f"host synchronisation inside a fixed-step loop: Tensor.{name}")
        return method

    def loop(*args, **kwargs):
        entered.append(1)
        with monkeypatch.context() as m, NoHostSync():
            for name in ("tolist", "numpy", "cpu", "__array__"):
                m.setattr(torch.Tensor, name, fail(name))
            return real_loop(*args, **kwargs)

    monkeypatch.setattr(solve_module, "_loop", loop)
    return entered


SYNC_FREE = [
    sds.EulerMaruyama(), sds.ReverseDiffusion(), sds.Ancestral(),
    sds.PredictorCorrector(sds.ReverseDiffusion(), sds.Langevin(expected_norms=False)),
    sds.PredictorCorrector(sds.EulerMaruyama(), sds.Langevin(0.1, 2, expected_norms=True)),
    sds.PredictorCorrector(sds.DDIM(), sds.Langevin()),
    sds.DDIM(), sds.DDIM(0.5), sds.DPMSolver(2), sds.DPMSolver(3), sds.DPMSolverPP(2), sds.DPMSolverPP(3),
    sds.DPMSolverPP(2, sde=True), sds.DPMSolverPP(2, multistep=False), sds.UniPC(2), sds.UniPC(3),
    sds.EDMHeun(), sds.EDMHeun(churn=5.0), sds.AnnealedLangevin(2),
    sds.Euler(), sds.Heun(), sds.RK4(), sds.Dopri5(), sds.Milstein(), sds.SRA1(),
]


@pytest.mark.parametrize("process", [sds.VPSDE(), sds.EDM()], ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("solver", SYNC_FREE, ids=lambda s: repr(s)[:60])
def test_fixed_step_loops_make_no_host_sync(solver, process, no_host_sync):
    """Each solver's default grid (EDMHeun's ends at sigma = 0), the last step without noise and
    every state saved: the loop runs through without reading a device value on the host."""
    score = sds.Score.from_x0(lambda x, t: GM.score(process).denoised_of(x, t, process), process)
    score.check((2,), dtype=torch.float32)  # the first-use model check reads values on the host: run it first
    sol = sds.sample(process, score, solver, shape=(6, 2), steps=30, seed=0, final_noise=False, save_at=True)
    assert no_host_sync == [1]
    assert sol.ys.shape == (31, 6, 2) and torch.isfinite(sol.y).all()


def test_host_sync_detector_catches_a_sync(no_host_sync):
    class Syncing(sds.EulerMaruyama):
        def step(self, eq, t0, t1, y0, state, noise, at=sds.Position()):
            if float(t0[0]) > 2.0:  # a host read of a device value
                raise AssertionError("unreachable")
            return super().step(eq, t0, t1, y0, state, noise, at)

    p = sds.VPSDE()
    with pytest.raises(HostSyncError, match="_local_scalar_dense"):
        sds.sample(p, GM.score(p), Syncing(), shape=(2, 2), steps=3, seed=0)


# --- cuda_graph ------------------------------------------------------------------------------------

def test_cuda_graph_errors():
    p = sds.VPSDE()
    with pytest.raises(ValueError, match="cuda_graph=True needs a state on a CUDA device, y0 is on cpu"):
        sds.sample(p, GM.score(p), sds.EulerMaruyama(), shape=(4, 2), steps=3, seed=0, cuda_graph=True)
    with pytest.raises(ValueError, match="Dopri5 is adaptive"):
        sds.sample(p, GM.score(p), sds.Dopri5(), shape=(4, 2), seed=0, cuda_graph=True)
    eq = sds.SDE(lambda t, x: -x, lambda t, x: torch.ones_like(x))
    with pytest.raises(ValueError, match="cuda_graph=True needs a state on a CUDA device"):
        sds.solve(eq, torch.zeros(3, 2), 0.0, 1.0, sds.EulerMaruyama(), steps=3, cuda_graph=True)


GRAPHED = [sds.EulerMaruyama(), sds.PredictorCorrector(sds.ReverseDiffusion(), sds.Langevin(0.16, 1, expected_norms=False)),
           sds.Ancestral(), sds.DDIM(0.5), sds.DPMSolverPP(2), sds.UniPC(3), sds.EDMHeun(churn=2.0), sds.Dopri5()]


@pytest.mark.gpu
@pytest.mark.parametrize("solver", GRAPHED, ids=lambda s: repr(s)[:60])
def test_cuda_graph_replays_equal_eager_runs(solver):
    """First call: eager warm-up (its result) and capture; later calls replay with new x_T and
    seeds. Each must equal the eager loop on the same inputs (the same kernels, launched from a
    graph: equal to float32 rounding, 1e-5 covers reduction-order differences of the model)."""
    solve_module.clear_cuda_graphs()
    p = sds.VPSDE()
    score = GM.score(p)
    with torch.inference_mode():
        for seed in (0, 1, 0):
            graphed = sds.sample(p, score, solver, shape=(256, 2), steps=30, seed=seed, device="cuda", cuda_graph=True)
            eager = sds.sample(p, score, solver, shape=(256, 2), steps=30, seed=seed, device="cuda")
            torch.testing.assert_close(graphed.y, eager.y, rtol=1e-5, atol=1e-5)
            assert graphed.stats.nfe == eager.stats.nfe
    assert len(solve_module._GRAPHS) == 1


@pytest.mark.gpu
def test_cuda_graph_reports_nonfinite_values_after_replay():
    p = sds.VPSDE()
    exact = GM.score(p)

    def bad(x, t):
        s = exact(x, t)
        rows = (torch.arange(x.shape[0], device=x.device) >= 3) & (torch.arange(x.shape[0], device=x.device) < 5)
        return torch.where(rows[:, None] & (t[:, None] < 0.5), torch.full_like(s, math.nan), s)

    score = sds.Score(bad, p)
    with torch.inference_mode():
        for _ in range(2):  # the capture call, then a replay
            with pytest.raises(sds.NonFiniteError) as e:
                sds.sample(p, score, sds.EulerMaruyama(), shape=(8, 2), steps=10, seed=0, device="cuda",
                           cuda_graph=True)
            assert e.value.step == 5 and e.value.samples == [3, 4]


@pytest.mark.gpu
@pytest.mark.parametrize("solver", [sds.EulerMaruyama(), sds.PredictorCorrector(sds.ReverseDiffusion(), sds.Langevin())],
                         ids=lambda s: type(s).__name__)
def test_fused_cuda_sampling_matches_the_reference_path(solver, monkeypatch):
    """CUDA: the Triton updates (auto) against the *_ref updates (torch), same seed; compiled
    Triton's transcendental functions differ from torch's by an ulp or two (test_kernels:
    atol 1e-4 per update), accumulated over 50 steps."""
    p = sds.VPSDE()
    # 16-D, where the corrector's realized norms concentrate and do not amplify rounding
    score = sds.GaussianMixture([0.4, 0.6], [[1.0] * 16, [-1.0] * 16], [0.2, 0.3]).score(p)
    with torch.inference_mode():
        fused = sds.sample(p, score, solver, shape=(4096, 16), steps=50, seed=0, device="cuda").y
        monkeypatch.setenv(dispatch.ENV_VAR, "torch")
        ref = sds.sample(p, score, solver, shape=(4096, 16), steps=50, seed=0, device="cuda").y
    torch.testing.assert_close(fused, ref, rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
def test_cuda_graph_capture_failure_names_the_cause():
    # last in this module: a failed capture is reported, and what follows should not depend on it
    solve_module.clear_cuda_graphs()
    p = sds.VPSDE()
    exact = sds.GaussianMixture([1.0], [[0.0, 0.0]], [1.0]).score(p)

    def syncing(x, t):
        return exact(x, t) * float(t[0] > 0)  # a host read: runs eagerly, cannot be captured

    with torch.inference_mode(), pytest.raises(RuntimeError, match="could not capture the EulerMaruyama"):
        sds.sample(p, sds.Score(syncing, p), sds.EulerMaruyama(), shape=(4, 2), steps=3, seed=0, device="cuda",
                   cuda_graph=True)
