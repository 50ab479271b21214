"""Time grids on flow paths that reach pure noise (alpha(T) = 0, lambda(T) = -inf): the grids spaced
in lambda or sigma start at sigma / alpha = ``SIGMA_EDM_MAX`` (t = 0.999 on the linear path, the
default T of ``RectifiedFlow()``), so on ``RectifiedFlow(T=1.0)`` they equal the grids on
``RectifiedFlow()``; the grids spaced in t still start at T. Every diffusion solver with its
default grid then samples the 2-D mixture on ``RectifiedFlow(T=1.0)`` (exact velocities): component
proportions within binomial 4-sigma bounds, mean NLL within 5 standard errors of exact samples'.
"""
from __future__ import annotations

import math

import pytest
import torch

import sdesolve as sds
from sdesolve import schedules as S

F64 = torch.float64
GM = sds.GaussianMixture([0.2, 0.5, 0.3], [[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]], [0.1, 0.3, 0.2])
SPACED = [S.logsnr, S.exponential, S.karras(7.0), S.polyexponential(2.0), S.beta()]
SP_IDS = ["logsnr", "exponential", "karras", "polyexponential", "beta"]


@pytest.mark.parametrize("schedule", SPACED, ids=SP_IDS)
def test_grids_in_lambda_or_sigma_start_at_sigma_edm_max(schedule):
    full, clipped = sds.RectifiedFlow(T=1.0), sds.RectifiedFlow()
    g = schedule(full, 12)
    assert torch.isfinite(g).all() and (g[1:] < g[:-1]).all() and g.numel() == 13
    assert float(g[0]) == pytest.approx(1 - 1 / (1 + S.SIGMA_EDM_MAX), abs=1e-15) == pytest.approx(0.999, abs=1e-15)
    assert float(g[-1]) == full.t_min
    assert torch.allclose(g, schedule(clipped, 12), rtol=0, atol=1e-12)
    S.validate(g, full)
    # other paths to pure noise: the same noise level, sigma / alpha = SIGMA_EDM_MAX
    for p in (sds.CosinePath(T=1.0), sds.TimeShift(sds.RectifiedFlow(T=1.0), 3.0),
              sds.GaussianPath(lambda t: 1 - t ** 2, lambda t: t, T=1.0)):
        g = schedule(p, 8)
        assert torch.isfinite(g).all() and (g[1:] < g[:-1]).all() and float(g[-1]) == p.t_min
        assert float(p.sigma_edm(g[0])) == pytest.approx(S.SIGMA_EDM_MAX, rel=1e-9)
        S.validate(g, p)
    # a finite start is kept (VP), and integrating up (likelihoods) clips the other end
    vp = sds.VPSDE()
    assert float(schedule(vp, 8)[0]) == vp.T
    up = schedule(full, 8, t_start=full.t_min, t_end=1.0)
    assert float(up[0]) == full.t_min and float(up[-1]) == pytest.approx(0.999, abs=1e-15)


@pytest.mark.parametrize("schedule", [S.uniform, S.quadratic, S.linspace_timesteps()],
                         ids=["uniform", "quadratic", "linspace_timesteps"])
def test_grids_in_t_start_at_T(schedule):
    g = schedule(sds.RectifiedFlow(T=1.0), 10)
    assert float(g[0]) == 1.0 and torch.isfinite(g).all()


def test_time_uniform_starts_where_rho_is_finite():
    """time_uniform, the default grid of the solvers in lambda and rho = sigma / alpha, starts at
    sigma / alpha = SIGMA_EDM_MAX on a path to pure noise, and at T where alpha(T) > 0."""
    for p in (sds.RectifiedFlow(T=1.0), sds.CosinePath(T=1.0)):
        g = S.time_uniform(2.0)(p, 10)
        assert torch.isfinite(g).all() and (g[1:] < g[:-1]).all() and float(g[-1]) == p.t_min
        assert float(p.sigma_edm(g[0])) == pytest.approx(S.SIGMA_EDM_MAX, rel=1e-9)
    for p in (sds.VPSDE(), sds.RectifiedFlow()):
        assert float(S.time_uniform(2.0)(p, 10)[0]) == p.T


def test_a_data_end_at_sigma_zero_is_refused():
    rf = sds.RectifiedFlow(T=1.0, t_min=0.0)
    with pytest.raises(ValueError, match="logsnr.*sigma = 0"):
        S.logsnr(rf, 8)
    with pytest.raises(ValueError, match="karras.*sigma = 0"):
        S.karras()(rf, 8, t_end=0.0)
    assert math.isfinite(float(S.uniform(rf, 8)[-1]))


N = 2000
SOLVERS = [(sds.DPMSolverPP(order=2), 30), (sds.UniPC(order=2), 30), (sds.IPNDM(order=4), 25), (sds.DEIS(order=3), 25),
           (sds.DPMSolver(order=2), 30), (sds.DDIM(), 100), (sds.Heun(), 25)]


def _exact():
    x = GM.sample(100_000, torch.Generator().manual_seed(9))
    w = torch.bincount(GM.posterior(x).argmax(1), minlength=GM.K).double() / len(x)
    ref = -GM.log_prob(GM.sample(N, torch.Generator().manual_seed(11), dtype=F64)).double()
    return w, ref


@pytest.fixture(scope="module")
def exact():
    return _exact()


def _judge(y, w, ref):
    assert torch.isfinite(y).all()
    props = torch.bincount(GM.posterior(y).argmax(1), minlength=GM.K).double() / len(y)
    bound = 4 * torch.sqrt(w * (1 - w) / len(y))
    nll = -GM.log_prob(y.to(F64)).double()
    se = math.sqrt(nll.var() / len(nll) + ref.var() / len(ref))
    gap = float(nll.mean() - ref.mean())
    assert ((props - w).abs() <= bound).all(), (props.tolist(), w.tolist())
    assert abs(gap) <= 5 * se, (gap, se)
    return gap, se


@pytest.mark.parametrize("solver,steps", SOLVERS, ids=lambda v: type(v).__name__ if isinstance(v, sds.Solver) else None)
def test_default_grids_sample_a_T1_flow(solver, steps, exact):
    rf = sds.RectifiedFlow(T=1.0)
    sol = sds.sample(rf, GM.velocity(rf), solver, shape=(N, 2), steps=steps, seed=0, dtype=F64)
    gap, se = _judge(sol.y, *exact)
    print(f"\nRectifiedFlow(T=1) {type(solver).__name__} x{steps}: NLL gap {gap:+.4f} (5 SE {5 * se:.4f})")


def test_reverse_sde_on_a_T1_flow(exact):
    """The reverse SDE (g~ = g) on the log-SNR grid, which now starts at t = 0.999 (g finite there)."""
    rf = sds.RectifiedFlow(T=1.0)
    sol = sds.sample(rf, GM.velocity(rf), sds.EulerMaruyama(), shape=(N, 2), steps=150, schedule=S.logsnr, seed=0,
                     dtype=F64)
    gap, se = _judge(sol.y, *exact)
    print(f"\nRectifiedFlow(T=1) reverse SDE EulerMaruyama x150: NLL gap {gap:+.4f} (5 SE {5 * se:.4f})")
