"""Gaussian paths and flows against closed forms and exact Gaussian-mixture velocities.

* Closed forms: the named paths against a ``GaussianPath`` built from the same alpha, sigma
  (numerical derivatives and log-SNR inverse), f and g^2 against d log alpha / dt and
  d sigma^2 / dt - 2 f sigma^2 by finite differences, the time shift's formulas, the
  conversions table (velocity <-> x0 / eps / score / v).
* Sampling 2-D and 8-D mixtures with exact velocities on the linear and cosine paths (Euler,
  Heun, DPM-Solver++(2M), UniPC, iPNDM, DDIM, EDMHeun and the reverse SDE with g~ = g): component
  proportions within binomial 4-sigma bounds of the exact proportions, and the mean negative
  log-likelihood under the true density within 5 standard errors of exact samples' (the standard
  error of the difference of two independent means of N samples each).
* The same distribution through different paths: DPM-Solver(++) / UniPC / DDIM / iPNDM / DEIS in
  log rho on a VP process and on the linear path, on grids equal in log-SNR, from x_T scaled by
  sigma_lin / sigma_vp: the samples agree up to that scaling.
* Likelihood of a flow with the exact trace against the exact mixture density (corrected for the
  prior's mismatch at T).

Run with ``-s`` to see the figures.
"""
from __future__ import annotations

import math

import pytest
import torch

import sdesolve as sds
from sdesolve.bench.problems import gmm8d
from sdesolve.likelihood import ExactTrace, log_likelihood

F64 = torch.float64
GM2 = sds.GaussianMixture([0.2, 0.5, 0.3], [[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]], [0.1, 0.3, 0.2])
GM8 = gmm8d()
MIX = {2: GM2, 8: GM8}


def _cos_path(T=0.999):
    return sds.GaussianPath(lambda t: torch.cos(0.5 * math.pi * t), lambda t: torch.sin(0.5 * math.pi * t), T=T)


# --- closed forms ------------------------------------------------------------------------------------
@pytest.mark.parametrize("named,generic", [
    (sds.RectifiedFlow(), sds.GaussianPath(lambda t: 1 - t, lambda t: t, T=0.999)),
    (sds.CosinePath(), _cos_path()),
], ids=["linear", "cosine"])
def test_named_paths_match_the_generic_path(named, generic):
    t = torch.linspace(0.002, 0.998, 41, dtype=F64)
    assert torch.allclose(named.lam(t), generic.lam(t), rtol=0, atol=1e-13)
    assert torch.allclose(named.f(t), generic.f(t), rtol=1e-8, atol=0)
    assert torch.allclose(named.g2(t), generic.g2(t), rtol=1e-8, atol=0)
    for a, b in zip(named.d_marginal(t), generic.d_marginal(t)):
        assert torch.allclose(a, b, rtol=0, atol=1e-9)
    lam = named.lam(t)
    assert torch.allclose(generic.t_of_lam(lam), t, rtol=0, atol=1e-12)
    assert torch.allclose(named.t_of_lam(lam), t, rtol=0, atol=1e-12)
    # the SDE of the path: f = d log alpha / dt, g^2 = d sigma^2 / dt - 2 f sigma^2 (finite differences)
    h = 1e-6
    dla = (named.log_alpha(t + h) - named.log_alpha(t - h)) / (2 * h)
    ds2 = (named.sigma(t + h) ** 2 - named.sigma(t - h) ** 2) / (2 * h)
    assert torch.allclose(named.f(t), dla, rtol=1e-6)
    assert torch.allclose(named.g2(t), ds2 - 2 * named.f(t) * named.sigma(t) ** 2, rtol=1e-6)
    # the base class's alpha', sigma' from f and g^2 agree with the closed forms
    for a, b in zip(sds.Process.d_marginal(named, t), named.d_marginal(t)):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    assert named.prior_std == pytest.approx(float(named.sigma(torch.tensor(named.T, dtype=F64))))
    assert math.isfinite(float(named.lam(torch.tensor(named.T)))) and math.isfinite(float(named.lam(torch.tensor(named.t_min))))


def test_time_shift():
    base = sds.RectifiedFlow()
    for s in (3.0, 0.5):
        p = sds.TimeShift(base, s)
        t = torch.linspace(p.t_min, p.T, 33, dtype=F64)
        u = s * t / (1 + (s - 1) * t)
        assert torch.allclose(p.sigma(t), u, rtol=0, atol=1e-15)
        assert torch.allclose(p.lam(t), base.lam(u), rtol=0, atol=1e-13)
        assert torch.allclose(p.t_of_lam(p.lam(t)), t, rtol=0, atol=1e-12)
        # same log-SNR range
        assert float(p.lam(torch.tensor(p.T, dtype=F64))) == pytest.approx(float(base.lam(torch.tensor(base.T, dtype=F64))), abs=1e-12)
        assert float(p.lam(torch.tensor(p.t_min, dtype=F64))) == pytest.approx(float(base.lam(torch.tensor(base.t_min, dtype=F64))), abs=1e-12)
        h = 1e-6
        dsig = (p.sigma(t[1:-1] + h) - p.sigma(t[1:-1] - h)) / (2 * h)
        assert torch.allclose(p.d_marginal(t[1:-1])[1], dsig, rtol=1e-7)
        assert torch.allclose(p.f(t), base.f(u) * s / (1 + (s - 1) * t) ** 2, rtol=1e-12)
    with pytest.raises(ValueError, match="shift"):
        sds.TimeShift(base, 0.0)
    with pytest.raises(ValueError, match="T = 80"):
        sds.TimeShift(sds.EDM(), 3.0)


@pytest.mark.parametrize("process", [sds.RectifiedFlow(), sds.CosinePath(), sds.TimeShift(sds.RectifiedFlow(), 3.0),
                                     sds.VPSDE()], ids=lambda p: type(p).__name__)
def test_conversions_table(process):
    """A velocity Score converts to x0, eps and score exactly as the mixture's own quantities."""
    x = GM2.sample(64, torch.Generator().manual_seed(3), t=0.4, process=process, dtype=F64)
    t = torch.full((64,), 0.4, dtype=F64)
    v = GM2.velocity(process)
    assert torch.allclose(v.score_of(x, t, process), GM2.score_at(x, t, process), atol=1e-10)
    assert torch.allclose(v.denoised_of(x, t, process), GM2.denoised_at(x, t, process), atol=1e-10)
    s = GM2.score(process)
    assert torch.allclose(s.velocity_of(x, t, process), v.velocity_of(x, t, process), atol=1e-10)
    assert torch.allclose(s.eps_of(x, t, process), v.eps_of(x, t, process), atol=1e-10)
    # the PF-ODE drift f x - g^2 score / 2 is the velocity
    f, g2 = process.f(t)[:, None], process.g2(t)[:, None]
    assert torch.allclose(f * x - 0.5 * g2 * GM2.score_at(x, t, process), v.velocity_of(x, t, process), atol=1e-9)


def test_velocity_model_on_another_timing_and_v_prediction():
    rf = sds.RectifiedFlow()
    shifted = sds.TimeShift(rf, 3.0)
    x = GM2.sample(32, torch.Generator().manual_seed(4), t=0.6, process=rf, dtype=F64)
    tau = torch.full((32,), 0.6, dtype=F64)
    t = shifted.inverse(tau)
    v = GM2.velocity(rf)  # the model knows only the linear path's timing
    assert torch.allclose(v.velocity_of(x, t, shifted), GM2.velocity(shifted).velocity_of(x, t, shifted), atol=1e-10)
    assert torch.allclose(v.score_of(x, t, shifted), GM2.score_at(x, t, shifted), atol=1e-10)
    # on a VP process (another path with the same log-SNR) the input is rescaled: scores agree
    vp = sds.VPSDE()
    tv = vp.t_of_lam(rf.lam(tau))
    xv = x * (vp.sigma(tv) / rf.sigma(tau))[:, None]
    assert torch.allclose(v.score_of(xv, tv, vp), GM2.score_at(xv, tv, vp), atol=1e-9)
    # cosine path: velocity = (pi / 2) v-prediction (v = alpha z - sigma x0)
    cp = sds.CosinePath()
    tc = torch.full((32,), 0.3, dtype=F64)
    xc = GM2.sample(32, torch.Generator().manual_seed(5), t=0.3, process=cp, dtype=F64)
    vel = GM2.velocity(cp)
    vpred = sds.Score.from_v(lambda xx, tt: vel.velocity_of(xx, tt, cp) / (0.5 * math.pi), cp)
    assert torch.allclose(vpred.score_of(xc, tc, cp), GM2.score_at(xc, tc, cp), atol=1e-10)


# --- sampling with exact velocities -----------------------------------------------------------------
N = 2000
# (solver, steps in 2-D, steps in 8-D, schedule); the 8-D runs are slow-marked
SOLVERS = [
    (sds.Euler(), 100, 200, None),
    (sds.Heun(), 25, 50, None),
    (sds.DPMSolverPP(order=2), 30, 50, None),
    (sds.UniPC(order=2), 30, 50, None),
    (sds.IPNDM(order=4), 25, 50, None),
    (sds.DDIM(), 100, 200, None),
    (sds.EDMHeun(), 25, 80, None),  # at 40 steps its 8-D bias is +0.21 nats, over half the 5 SE bound
    (sds.EulerMaruyama(), 150, 500, sds.schedules.logsnr),  # the reverse SDE, g~ = g
]
_EXACT = {}


def _exact(dim):
    """(proportions that exact samples get from the posterior argmax, NLL of N exact samples)."""
    if dim not in _EXACT:
        gm = MIX[dim]
        x = gm.sample(100_000, torch.Generator().manual_seed(9))
        w = torch.bincount(gm.posterior(x).argmax(1), minlength=gm.K).double() / len(x)
        ref = -gm.log_prob(gm.sample(N, torch.Generator().manual_seed(11), dtype=F64)).double()
        _EXACT[dim] = (w, ref)
    return _EXACT[dim]


def _judge(gm, x, w, ref):
    assert torch.isfinite(x).all()
    props = torch.bincount(gm.posterior(x).argmax(1), minlength=gm.K).double() / len(x)
    bound = 4 * torch.sqrt(w * (1 - w) / len(x))
    nll = -gm.log_prob(x.to(F64)).double()
    se = math.sqrt(nll.var() / len(nll) + ref.var() / len(ref))
    gap = float(nll.mean() - ref.mean())
    return props, bound, gap, se


def _sample_and_judge(dim, path, solver, steps, schedule):
    gm = MIX[dim]
    w, ref = _exact(dim)
    sol = sds.sample(path, gm.velocity(path), solver, shape=(N, dim), steps=steps, schedule=schedule, seed=0,
                     dtype=F64)
    props, bound, gap, se = _judge(gm, sol.y, w, ref)
    print(f"\n{type(path).__name__} {dim}-D {type(solver).__name__} {steps} steps: NLL gap {gap:+.4f} "
          f"(5 SE = {5 * se:.4f}), max |prop - w| / 4sigma {float(((props - w).abs() / bound).max()):.2f}")
    assert ((props - w).abs() <= bound).all(), (props.tolist(), w.tolist())
    assert abs(gap) <= 5 * se, (gap, se)


_ids = lambda v: type(v).__name__ if isinstance(v, sds.Solver) else None  # noqa: E731
PATHS = [sds.RectifiedFlow(), sds.CosinePath()]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("solver,steps,steps8,schedule", SOLVERS, ids=_ids)
def test_sampling_2d_mixture_with_exact_velocities(path, solver, steps, steps8, schedule):
    _sample_and_judge(2, path, solver, steps, schedule)


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS, ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("solver,steps,steps8,schedule", SOLVERS, ids=_ids)
def test_sampling_8d_mixture_with_exact_velocities(path, solver, steps, steps8, schedule):
    _sample_and_judge(8, path, solver, steps8, schedule)


def test_reverse_family_free_diffusion():
    """g~ = 0 is the probability-flow ODE; an intermediate g~ samples the same distribution."""
    rf = sds.RectifiedFlow()
    score = GM2.velocity(rf)
    x = GM2.sample(16, torch.Generator().manual_seed(0), t=0.5, process=rf, dtype=F64)
    t = torch.full((16,), 0.5, dtype=F64)
    ode, sde0 = rf.probability_flow(score), rf.reverse(score, diffusion=0.0)
    assert torch.allclose(ode.drift(t, x), sde0.drift(t, x), atol=1e-12)
    assert torch.equal(sde0.diffusion(t, x), torch.zeros(16, 1, dtype=F64))
    sde = rf.reverse(score)  # g~ = g: f x - g^2 score
    expect = rf.f(t)[:, None] * x - rf.g2(t)[:, None] * GM2.score_at(x, t, rf)
    assert torch.allclose(sde.drift(t, x), expect, atol=1e-9)
    # the same family through the base class, on a VP process
    vp = sds.VPSDE()
    half = vp.reverse(GM2.score(vp), diffusion=lambda tt: 0.5 * torch.sqrt(vp.g2(tt)))
    expect = vp.f(t)[:, None] * x - 0.625 * vp.g2(t)[:, None] * GM2.score_at(x, t, vp)
    assert torch.allclose(half.drift(t, x), expect, atol=1e-9)
    with pytest.raises(ValueError, match=">= 0"):
        rf.reverse(score, diffusion=-1.0).diffusion(t, x)
    # g~ = g / 2 on the linear path samples the mixture
    eq = rf.reverse(score, diffusion=lambda tt: 0.5 * torch.sqrt(rf.g2(tt)))
    grid = sds.schedules.logsnr(rf, 150)
    x_T = rf.prior_sample((N, 2), torch.Generator().manual_seed(2), dtype=F64)
    sol = sds.solve(eq, x_T, rf.T, rf.t_min, sds.EulerMaruyama(), schedule=grid, seed=3)
    w, ref = _exact(2)
    props, bound, gap, se = _judge(GM2, sol.y, w, ref)
    print(f"\ng~ = g/2: NLL gap {gap:+.4f} (5 SE = {5 * se:.4f})")
    assert ((props - w).abs() <= bound).all(), (props.tolist(), w.tolist())
    assert abs(gap) <= 5 * se


# --- the same distribution through different paths ---------------------------------------------------
# the solvers stepping in the log-SNR (or sigma = e^-lambda) are invariant under the change of path;
# Euler/Heun in t and DEIS's tAB (a polynomial in t) are not, by construction
@pytest.mark.parametrize("solver", [sds.DPMSolverPP(order=2), sds.UniPC(order=2), sds.DDIM(), sds.DPMSolver(order=3),
                                    sds.IPNDM(order=4), sds.DEIS(order=3, in_log_rho=True)],
                         ids=["DPMSolverPP", "UniPC", "DDIM", "DPMSolver3", "IPNDM", "DEIS-logrho"])
def test_vp_and_linear_paths_give_the_same_samples(solver):
    vp, rf = sds.VPSDE(), sds.RectifiedFlow()
    grid_vp = sds.schedules.logsnr(vp, 12)
    grid_rf = rf.t_of_lam(vp.lam(grid_vp))  # equal log-SNR
    x_vp = vp.prior_sample((256, 2), torch.Generator().manual_seed(0), dtype=F64)
    x_rf = x_vp * rf.sigma(grid_rf[0]) / vp.sigma(grid_vp[0])
    y_vp = sds.solve(vp.probability_flow(GM2.score(vp)), x_vp, None, None, solver, schedule=grid_vp).y
    y_rf = sds.solve(rf.probability_flow(GM2.velocity(rf)), x_rf, None, None, solver, schedule=grid_rf).y
    scale = (rf.alpha(grid_rf[-1]) / vp.alpha(grid_vp[-1]))
    diff = float((y_rf - scale * y_vp).abs().max())
    print(f"\n{type(solver).__name__}: max |x_lin - c x_vp| = {diff:.2e}")
    assert diff <= 1e-6


# --- likelihood ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [sds.RectifiedFlow(), sds.CosinePath()], ids=lambda p: type(p).__name__)
def test_flow_likelihood_matches_mixture_density(path):
    x = GM2.sample(12, torch.Generator().manual_seed(2), dtype=F64)
    res = log_likelihood(path, GM2.velocity(path), x, solver=sds.Dopri5(1e-6, 1e-6), trace=ExactTrace())
    mismatch = res.prior_logp - GM2.log_prob(res.z, path.T, path)
    exact = GM2.log_prob(x, path.t_min, path)
    err = (res.logp - mismatch - exact).abs()
    print(f"\n{type(path).__name__}: MAE {err.mean():.2e} nats (max {err.max():.2e}), prior mismatch mean "
          f"{mismatch.mean():+.2e}, nfe {res.nfe}")
    assert err.max() < 2e-3
