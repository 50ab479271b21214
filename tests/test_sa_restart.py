"""SA-Solver against diffusers' SASolverScheduler (same grid, model and noise) and what differs
from the authors' code; Restart sampling's bookkeeping and its effect on a Gaussian."""
import math

import pytest
import torch

import sdesolve as sds
from sdesolve.bench.peers import Diffusers
from sdesolve.solvers.sa_solver import tau_band

from test_multistep import DF32, VPSetup, rel


def _diffusers_sa(s, steps, po, co, tau_func, monkeypatch):
    import diffusers.schedulers.scheduling_sasolver as M
    from diffusers import SASolverScheduler
    cfg = dict(predictor_order=po, corrector_order=co)
    if tau_func is not None:
        cfg["tau_func"] = tau_func
    sched = Diffusers(SASolverScheduler, **cfg)._scheduler(s.p)
    sched.set_timesteps(steps)
    dt = (s.p.T - s.p.t_min) / 999
    x = s.x.clone()
    draws = iter([s.noise.at(i).normal(x, 0) for i in range(steps)])  # the predictor's one normal per step
    monkeypatch.setattr(M, "randn_tensor", lambda *a, **k: next(draws))
    for k in sched.timesteps:
        x = sched.step(s.eps(x, s.p.t_min + float(k) * dt), k, x).prev_sample
    return x


@pytest.mark.parametrize("po,co,steps,stochastic", [(1, 1, 6, False), (2, 2, 8, True), (3, 3, 10, True),
                                                   (4, 4, 10, True), (3, 2, 8, False)])
def test_diffusers_sasolver(po, co, steps, stochastic, monkeypatch):
    """diffusers' default tau (1 on timesteps 200..800) is our tau_band on the same times;
    tau = 0 is the ODE. Equal with the authors' order-2 term, different without it (the paper)."""
    s = VPSetup()
    theirs = _diffusers_sa(s, steps, po, co, None if stochastic else (lambda k: 0), monkeypatch)
    tau = tau_band(1.0, 200 / 999, 800 / 999) if stochastic else 0.0
    grid = sds.schedules.linspace_timesteps(final_zero=False)(s.p, steps)  # SA-Solver ends at timestep 0
    ours = s.ours(sds.SASolver(po, co, tau=tau, order2_correction=True), grid)
    assert rel(ours, theirs) < DF32
    if max(po, co) >= 2:
        assert rel(s.ours(sds.SASolver(po, co, tau=tau), grid), theirs) > 1e-3


def test_sasolver_tau_zero_is_the_ode_and_tau_draws_noise():
    assert not sds.SASolver(tau=0.0).stochastic and sds.SASolver().stochastic
    p = sds.VPSDE()
    score = VPSetup().score
    a = sds.sample(p, score, sds.SASolver(tau=0.0), shape=(16, 2), steps=8, seed=0, dtype=torch.float64)
    b = sds.sample(p, score, sds.SASolver(tau=0.0), shape=(16, 2), steps=8, seed=1, dtype=torch.float64)
    x_T = sds.bench.runner.initial_noise(p, (16, 2), 0, dtype=torch.float64)
    c = sds.sample(p, score, sds.SASolver(tau=0.0), x_T=x_T, steps=8, seed=1)
    d = sds.sample(p, score, sds.SASolver(tau=1.0), x_T=x_T, steps=8, seed=1)
    assert rel(a.y, c.y) < 1e-14 and rel(a.y, b.y) > 1e-3 and rel(c.y, d.y) > 1e-3
    assert a.stats.nfe == 8


def _gauss():
    return sds.GaussianMixture([1.0], torch.zeros(1, 2, dtype=torch.float64), torch.full((1,), 0.25, dtype=torch.float64))


def test_restart_bookkeeping():
    p = sds.VPSDE()
    score = _gauss().score(p)
    x_T = sds.bench.runner.initial_noise(p, (64, 2), 0, dtype=torch.float64)
    plain = sds.sample(p, score, sds.EDMHeun(), x_T=x_T, steps=10, seed=0)
    never = sds.sample(p, score, sds.Restart(intervals=((1e-4, 0.3, 2),)), x_T=x_T, steps=10, seed=0)
    assert rel(never.y, plain.y) < 1e-15 and never.stats.nfe == plain.stats.nfe  # rho_lo below the grid
    r = sds.sample(p, score, sds.Restart(intervals=((0.06, 0.3, 3),), restart_steps=2), x_T=x_T, steps=10, seed=0)
    assert r.stats.nfe == plain.stats.nfe + 3 * 2 * 2  # K restarts of 2 Heun steps (2 evaluations each)
    with pytest.raises(ValueError, match="interval"):
        sds.Restart(intervals=((0.3, 0.06, 1),))
    with pytest.raises(ValueError, match="deterministic"):
        sds.Restart(inner=sds.DDIM(1.0))


def test_restart_contracts_the_error_on_a_gaussian():
    """N(0, 0.25 I) under the VP SDE: 10 EDM Heun steps overshoot the standard deviation; two
    restarts on [0.06, 0.3] bring it closer (the sample std's standard error is ~0.006 here)."""
    p = sds.VPSDE()
    score = _gauss().score(p)
    x_T = sds.bench.runner.initial_noise(p, (4000, 2), 0, dtype=torch.float64)
    a, s = p.marginal(torch.tensor(p.t_min, dtype=torch.float64))
    exact = float(torch.sqrt(0.25 * a**2 + s**2))  # the std of p_{t_min}: 0.5001
    err = lambda y: float((y.std(0) - exact).abs().mean())  # noqa: E731
    plain = sds.sample(p, score, sds.EDMHeun(), x_T=x_T, steps=10, seed=0).y
    r = sds.sample(p, score, sds.Restart(), x_T=x_T, steps=10, seed=0).y
    assert err(plain) - err(r) > 5 * 0.006, (err(plain), err(r))


def test_restart_continues_with_the_restarted_trajectory_history():
    """A multistep inner solver continues the main grid after the restarts with the history of the
    restarted trajectory, not the outputs of the trajectory it replaced. On N(0, 0.25 I) the
    probability-flow map from the restarted state at t_lo is exact (x / std_t is constant): the
    error of the continuation converges at DPM-Solver++(2M)'s order 2 and stays below the error of
    the same solver over the whole grid (a stale history gives order 1 and 10-30x that error)."""
    p = sds.VPSDE()
    score = _gauss().score(p)
    x_T = sds.bench.runner.initial_noise(p, (256, 2), 0, dtype=torch.float64)

    def std(t):
        a, s = p.marginal(t)
        return torch.sqrt(0.25 * a**2 + s**2)
    inner = sds.DPMSolverPP(2, lower_order_final=False)
    errs = []
    for steps in (20, 40, 80):
        grid = sds.schedules.logsnr(p, steps)
        i_lo = int(torch.nonzero(p.sigma_edm(grid) <= 0.06)[0])
        sol = sds.sample(p, score, sds.Restart(inner, intervals=((0.06, 0.3, 1),), restart_steps=steps // 4),
                         x_T=x_T, schedule=grid, seed=0, save_at=True)
        cont = float((sol.y - sol.ys[i_lo] * std(grid[-1]) / std(grid[i_lo])).abs().max())
        plain = sds.sample(p, score, inner, x_T=x_T, schedule=grid, seed=0).y
        whole = float((plain - x_T * std(grid[-1]) / std(grid[0])).abs().max())
        assert cont < whole, (steps, cont, whole)
        errs.append(cont)
    slopes = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert min(slopes) > 1.7, (errs, slopes)
