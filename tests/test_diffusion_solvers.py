"""Fast diffusion samplers (DDIM, DPM-Solver, DPM-Solver++, UniPC, EDM Heun) and DiscreteVP:
convergence orders against the closed-form probability-flow map of Gaussian data, exact NFE
accounting, per-sample behaviour, and the conventions at the ends of the grid."""
import math

import pytest
import torch

import sdesolve as sds
from sdesolve.noise import Noise, streams
from sdesolve.timeplan import plan_times

from helpers import fitted_slope


def on_grid(solver, eq, y0, grid, noise):
    """``solve``'s fixed-grid loop written out, each step told its position on the grid (so
    multistep solvers can plan their last steps and EDMHeun can divide its churn by N)."""
    B, n = y0.shape[0], grid.numel() - 1
    tv = lambda i: grid[i].expand(B)
    eq.reset_counts()
    # a peer's grid, read back through float32, may lie a hair outside [t_min, T]
    at = plan_times(eq.process, schedule=grid, check_range=False).positions
    state = solver.init(eq, tv(0), y0)
    y = y0
    for i in range(n):
        out = solver.step(eq, tv(i), tv(i + 1), y, state, noise.at(i), at[i])
        y, state = out.y, out.state
    return y


def mixture(D=2, K=3, floor=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = 2.0 * torch.randn(K, D, generator=g, dtype=torch.float64)
    A = 0.3 * torch.randn(K, D, D, generator=g, dtype=torch.float64)
    covs = A @ A.transpose(-1, -2) + floor * torch.eye(D, dtype=torch.float64)
    w = torch.arange(K, 0, -1, dtype=torch.float64)
    return sds.GaussianMixture(w, means, covs)


# --- closed form: the probability-flow map of Gaussian data ----------------------------------------
# For x_0 ~ N(mu, S) = N(mu, U diag(l) U^T), x_t - alpha_t mu has covariance U diag(c_t) U^T with
# c_t = alpha_t^2 l + sigma_t^2, and the probability-flow ODE scales each eigen-direction by
# sqrt(c_s / c_t) (d log sqrt(c)/dt = f + g^2 / (2c) is the ODE's own rate there).
_g = torch.Generator().manual_seed(0)
_A = torch.randn(3, 3, generator=_g, dtype=torch.float64)
GAUSS_S = 0.3 * _A @ _A.T + 0.2 * torch.eye(3, dtype=torch.float64)
GAUSS_MU = torch.tensor([[0.5, -1.0, 0.3]], dtype=torch.float64)
GAUSS = sds.GaussianMixture([1.0], GAUSS_MU, GAUSS_S[None])


def pf_map(process, x, t, s):
    lam, U = torch.linalg.eigh(GAUSS_S)
    at, st = process.marginal(torch.tensor(t, dtype=torch.float64))
    as_, ss = process.marginal(torch.tensor(s, dtype=torch.float64))
    ratio = torch.sqrt((as_**2 * lam + ss**2) / (at**2 * lam + st**2))
    return as_ * GAUSS_MU + ((x - at * GAUSS_MU) @ U * ratio) @ U.T


def closed_form_error(process, solver, steps, schedule):
    x = process.prior_std * torch.randn(16, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grid = schedule(process, steps)
    sol = sds.solve(process.probability_flow(GAUSS.score(process)), x, solver=solver, schedule=grid)
    return float((sol.y - pf_map(process, x, float(grid[0]), float(grid[-1]))).abs().max())


LOGSNR, KARRAS = sds.schedules.logsnr, sds.schedules.karras(7.0)
S40 = [40, 80, 160, 320]

# UniPC-p is UniP-p corrected by UniC-p, which raises the order of accuracy by one (Zhao et al.
# 2023, Thm 3.3): orders p + 1. DPM-Solver++(3M), exactly as released by its authors and in
# diffusers, weights D2 ~ h^2 D''/2 by -phi_3 where the Taylor term needs -2 phi_3: its local
# error is O(h^3), so it converges with order 2 (test_oracles checks that it is diffusers' 3M).
ORDER_CASES = [
    ("DDIM", sds.DDIM(), 1, LOGSNR, S40, sds.VPSDE()),
    ("DPM-Solver-2", sds.DPMSolver(2), 2, LOGSNR, S40, sds.VPSDE()),
    ("DPM-Solver-3", sds.DPMSolver(3), 3, LOGSNR, S40, sds.VPSDE()),
    ("DPM-Solver-3 EDM", sds.DPMSolver(3), 3, LOGSNR, S40, sds.EDM()),
    ("DPM-Solver++(2M)", sds.DPMSolverPP(2, lower_order_final=False), 2, LOGSNR, S40, sds.VPSDE()),
    ("DPM-Solver++(2M) VE", sds.DPMSolverPP(2, lower_order_final=False), 2, LOGSNR, S40, sds.VESDE()),
    ("DPM-Solver++(3M)", sds.DPMSolverPP(3, lower_order_final=False), 2, LOGSNR, S40, sds.VPSDE()),
    ("DPM-Solver++(2S)", sds.DPMSolverPP(2, multistep=False), 2, LOGSNR, S40, sds.SubVPSDE()),
    ("UniPC-2 bh1", sds.UniPC(2, "bh1", lower_order_final=False), 3, LOGSNR, S40, sds.VPSDE()),
    ("UniPC-2 bh2", sds.UniPC(2, "bh2", lower_order_final=False), 3, LOGSNR, S40, sds.VPSDE()),
    ("UniPC-3 bh1", sds.UniPC(3, "bh1", lower_order_final=False), 4, LOGSNR, [80, 160, 320, 640], sds.VPSDE()),
    ("UniPC-3 bh2", sds.UniPC(3, "bh2", lower_order_final=False), 4, LOGSNR, [80, 160, 320, 640], sds.EDM()),
    ("EDMHeun", sds.EDMHeun(), 2, KARRAS, S40, sds.VPSDE()),
    ("EDMHeun EDM", sds.EDMHeun(), 2, KARRAS, S40, sds.EDM()),
]


@pytest.mark.parametrize("name,solver,order,schedule,steps,process", ORDER_CASES, ids=[c[0] for c in ORDER_CASES])
def test_convergence_order_against_gaussian_closed_form(name, solver, order, schedule, steps, process):
    errs = [closed_form_error(process, solver, n, schedule) for n in steps]
    assert errs[-1] > 1e-12, errs  # above float64 rounding: the fit sees discretization error only
    slope = fitted_slope([1 / n for n in steps], errs)
    assert abs(slope - order) < 0.3, (name, slope, errs)


def test_first_order_methods_coincide():
    """DDIM(eta=0) = DPM-Solver-1 = first-order DPM-Solver++ (Lu et al. 2022a, Sec. 4.1)."""
    p = sds.VPSDE()
    eq = p.probability_flow(mixture().score(p))
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ys = [sds.solve(eq, x, solver=s, schedule=LOGSNR(p, 12)).y
          for s in (sds.DDIM(), sds.DPMSolver(1), sds.DPMSolverPP(1), sds.UniPC(1, disable_corrector=range(12)))]
    for y in ys[1:]:
        torch.testing.assert_close(y, ys[0], rtol=1e-12, atol=1e-12)


# --- NFE accounting ------------------------------------------------------------------------------
def _nfe(solver, schedule, steps, process=None):
    process = process or sds.EDM()
    x = torch.randn(4, 2, dtype=torch.float64)
    eq = process.reverse(mixture().score(process)) if solver.stochastic else process.probability_flow(mixture().score(process))
    grid = schedule(process, steps)
    y = on_grid(solver, eq, x, grid, Noise(streams(0, 4)))
    assert torch.isfinite(y).all()
    nfe = eq.nfe
    if not (isinstance(solver, sds.EDMHeun) and solver.churn > 0) or _passes_grid():  # churn needs the grid
        assert sds.solve(eq, x, solver=solver, schedule=grid, seed=0).stats.nfe == nfe
    return nfe


ZERO = sds.append_zero(KARRAS)


@pytest.mark.parametrize("solver,per_step", [
    (sds.DDIM(), 1), (sds.DDIM(eta=1.0), 1), (sds.DPMSolver(1), 1), (sds.DPMSolver(2), 2), (sds.DPMSolver(3), 3),
    (sds.DPMSolverPP(2), 1), (sds.DPMSolverPP(3), 1), (sds.DPMSolverPP(2, sde=True), 1),
    (sds.DPMSolverPP(2, multistep=False), 2), (sds.UniPC(2), 1), (sds.UniPC(3, "bh1"), 1),
    (sds.EDMHeun(), 2), (sds.EDMHeun(churn=5.0), 2),
], ids=repr)
def test_nfe_exact(solver, per_step):
    N = 7
    # on a grid ending at t_min every step makes its evaluations
    assert _nfe(solver, KARRAS, N) == per_step * N
    # on a grid ending at sigma = 0 the last step is first order: one evaluation, at its start
    assert _nfe(solver, ZERO, N) == per_step * (N - 1) + 1


# --- ends of the grid ------------------------------------------------------------------------------
def test_append_zero_grid():
    p = sds.EDM()
    g = sds.append_zero(KARRAS)(p, 6)
    assert g.shape == (7,) and g[-1] == 0 and g[-2] == p.t_min and g[0] == p.T
    torch.testing.assert_close(g[:-1], KARRAS(p, 5))
    sds.schedules.validate(g, p)
    with pytest.raises(ValueError, match="steps >= 2"):
        sds.append_zero(KARRAS)(p, 1)


@pytest.mark.parametrize("solver", [sds.DDIM(), sds.DPMSolver(2), sds.DPMSolverPP(2), sds.DPMSolverPP(3),
                                    sds.DPMSolverPP(2, multistep=False), sds.UniPC(3), sds.EDMHeun()], ids=repr)
def test_step_to_sigma_zero_returns_alpha_times_denoised(solver):
    """The last step into sigma = 0 is x = alpha(0) D(x, t) for every solver (with data
    prediction, first order), and keeps gradients finite (coefficients masked per sample)."""
    p = sds.VPSDE()
    score = mixture().score(p)
    eq = p.probability_flow(score)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64, requires_grad=True)
    grid = torch.cat([LOGSNR(p, 6), torch.zeros(1, dtype=torch.float64)])
    seen = {}

    def record(y, t):  # the last model call is at the start of the last step
        seen["t"], seen["y"] = t, y
        return score(y, t)

    rec = p.probability_flow(sds.Score(record, p))
    y = on_grid(solver, rec, x, grid, Noise(streams(0, 5)))
    assert torch.all(seen["t"] == grid[-2])
    alpha0 = float(p.alpha(torch.tensor(0.0)))
    torch.testing.assert_close(y, alpha0 * score.denoised_of(seen["y"], seen["t"], p), rtol=1e-12, atol=1e-12)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    del eq


# --- the state, per-sample behaviour, lower order final ---------------------------------------------
def test_solvers_are_stateless_and_repeatable():
    p = sds.VPSDE()
    score = mixture().score(p)
    for solver in (sds.DPMSolverPP(3), sds.UniPC(3), sds.DPMSolverPP(2, sde=True), sds.EDMHeun(), sds.DDIM(0.5)):
        before = repr(solver), dict(vars(solver))
        a = sds.sample(p, score, solver, shape=(6, 2), steps=8, seed=3, dtype=torch.float64)
        b = sds.sample(p, score, solver, shape=(6, 2), steps=8, seed=3, dtype=torch.float64)
        assert (repr(solver), dict(vars(solver))) == before
        assert torch.equal(a.y, b.y)


@pytest.mark.parametrize("solver", [sds.DPMSolverPP(2, sde=True), sds.UniPC(3), sds.DDIM(1.0)], ids=repr)
def test_sample_does_not_depend_on_its_batch(solver):
    p = sds.VPSDE()
    score = mixture().score(p)
    seeds = torch.tensor([11, 12, 13, 14])
    full = sds.sample(p, score, solver, shape=(4, 2), steps=9, seed=seeds, dtype=torch.float64).y
    one = sds.sample(p, score, solver, shape=(1, 2), steps=9, seed=seeds[2:3], dtype=torch.float64).y
    torch.testing.assert_close(one[0], full[2], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("solver", [sds.DPMSolverPP(3, lower_order_final=False), sds.UniPC(3, lower_order_final=False),
                                    sds.DPMSolver(3), sds.EDMHeun()], ids=repr)
def test_per_sample_times(solver):
    """Two samples on different grids, stepped together with (B,) times, give what each gives alone."""
    p = sds.VPSDE()
    eq = p.probability_flow(mixture().score(p))
    x = torch.randn(2, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    g1 = LOGSNR(p, 9)
    g2 = KARRAS(p, 9, t_start=0.8, t_end=0.01)
    t = torch.stack([g1, g2], 1)  # (steps + 1, B)
    state = solver.init(eq, t[0], x)
    y = x
    for i in range(9):
        out = solver.step(eq, t[i], t[i + 1], y, state, Noise(streams(0, 2)).at(i))  # no grid: the default position
        y, state = out.y, out.state
    for b, g in enumerate((g1, g2)):
        alone = sds.solve(eq, x[b:b + 1], solver=solver, schedule=g).y
        torch.testing.assert_close(y[b:b + 1], alone, rtol=1e-12, atol=1e-12)


def test_lower_order_final_through_solve():
    """Through solve() the loop tells multistep solvers where each step is: DPM-Solver++(2M)
    and UniPC-2 agree with the loop written out; with lower_order_final the last step is first
    order (so the results differ from lower_order_final=False)."""
    p = sds.VPSDE()
    eq = p.probability_flow(mixture().score(p))
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grid = LOGSNR(p, 8)
    for s, s_off in ((sds.DPMSolverPP(2), sds.DPMSolverPP(2, lower_order_final=False)),
                     (sds.UniPC(2), sds.UniPC(2, lower_order_final=False))):
        via_solve = sds.solve(eq, x, solver=s, schedule=grid).y
        torch.testing.assert_close(via_solve, on_grid(s, eq, x, grid, Noise(streams(0, 6))), rtol=1e-13, atol=1e-13)
        assert (via_solve - sds.solve(eq, x, solver=s_off, schedule=grid).y).abs().max() > 1e-6
    # diffusers' rule for DPM-Solver++: lower_order_final only below 15 steps
    g20 = LOGSNR(p, 20)
    torch.testing.assert_close(sds.solve(eq, x, solver=sds.DPMSolverPP(2), schedule=g20).y,
                               sds.solve(eq, x, solver=sds.DPMSolverPP(2, lower_order_final=False), schedule=g20).y,
                               rtol=0, atol=0)


def _passes_grid():
    seen = {}

    class Probe(sds.DDIM):
        def step(self, eq, t0, t1, y0, state, noise, at=sds.Position()):
            seen["grid"] = at.grid
            return super().step(eq, t0, t1, y0, state, noise, at)

    p = sds.EDM()
    sds.solve(p.probability_flow(GAUSS.score(p)), torch.zeros(1, 3), solver=Probe(), steps=2,
              schedule=sds.schedules.logsnr)
    return seen["grid"] is not None


@pytest.mark.skipif(not _passes_grid(), reason="solve() does not tell the steps their grid")
def test_sample_plans_from_the_grid():
    p = sds.VPSDE()
    score = mixture().score(p)
    x = torch.randn(4, 2, dtype=torch.float64)
    for s in (sds.UniPC(3), sds.DPMSolverPP(3), sds.EDMHeun(churn=3.0)):
        eq = p.reverse(score) if s.stochastic else p.probability_flow(score)
        grid = s.default_schedule(p, 8)
        torch.testing.assert_close(sds.solve(eq, x, solver=s, schedule=grid, seed=1).y,
                                   on_grid(s, eq, x, grid, Noise(streams(1, 4))), rtol=1e-13, atol=1e-13)


# --- stochastic samplers: equation choice and marginals ---------------------------------------------
def test_stochastic_attribute_and_equation():
    assert not sds.DDIM().stochastic and sds.DDIM(0.3).stochastic
    assert sds.DPMSolverPP(2, sde=True).stochastic and not sds.DPMSolverPP(2).stochastic
    assert sds.EDMHeun(churn=1.0).stochastic and not sds.EDMHeun().stochastic
    p = sds.VPSDE()
    score = mixture().score(p)
    x = torch.randn(4, 2, dtype=torch.float64)
    det = [sds.sample(p, score, sds.DDIM(), x_T=x, steps=5, seed=s).y for s in (0, 1)]
    sto = [sds.sample(p, score, sds.DDIM(1.0), x_T=x, steps=5, seed=s).y for s in (0, 1)]
    assert torch.equal(det[0], det[1]) and not torch.equal(sto[0], sto[1])
    with pytest.raises(TypeError, match="ODE"):
        sds.solve(p.probability_flow(score), x, solver=sds.DDIM(1.0), steps=3)


@pytest.mark.parametrize("solver,steps", [(sds.DDIM(1.0), 100), (sds.DPMSolverPP(2, sde=True), 40),
                                          (sds.EDMHeun(churn=10.0, s_tmin=0.05, s_tmax=10.0), 40)], ids=repr)
def test_stochastic_samplers_reach_the_gaussian_marginal(solver, steps):
    """On Gaussian data the sample covariance at t_min matches C(t_min) = alpha^2 S + sigma^2 I.
    Each entry of a covariance estimate from n samples has standard error at most
    sqrt((C_ii C_jj + C_ij^2) / n) <= sqrt(2 / n) max_i C_ii; we allow 5 of those, plus the mean."""
    p = sds.VPSDE()
    n = 4000
    grid = solver.default_schedule(p, steps)
    eq = p.reverse(GAUSS.score(p))
    x = p.prior_std * Noise(streams(7, n)).at(0xFFFFFFFF).normal(torch.empty(n, 3, dtype=torch.float64))
    y = on_grid(solver, eq, x, grid, Noise(streams(7, n)))
    a, s = p.marginal(grid[-1])
    C = a**2 * GAUSS_S + s**2 * torch.eye(3, dtype=torch.float64)
    se = math.sqrt(2.0 / n) * float(C.diagonal().max())
    assert float((torch.cov(y.T) - C).abs().max()) < 5 * se
    assert float((y.mean(0) - a * GAUSS_MU[0]).abs().max()) < 5 * math.sqrt(float(C.diagonal().max()) / n)


# --- errors --------------------------------------------------------------------------------------------
def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="eta"):
        sds.DDIM(eta=1.5)
    with pytest.raises(ValueError, match="order"):
        sds.DPMSolver(order=4)
    with pytest.raises(ValueError, match="2S"):
        sds.DPMSolverPP(order=3, multistep=False)
    with pytest.raises(ValueError, match="SDE"):
        sds.DPMSolverPP(order=3, sde=True)
    with pytest.raises(ValueError, match="variant"):
        sds.UniPC(variant="bh3")
    with pytest.raises(ValueError, match="churn"):
        sds.EDMHeun(churn=-1.0)
    p = sds.EDM()
    eq = p.probability_flow(GAUSS.score(p))
    with pytest.raises(ValueError, match="needs the grid"):
        sds.EDMHeun(churn=1.0).step(eq, torch.full((1,), p.T), torch.full((1,), p.t_min), torch.zeros(1, 3), None,
                                    Noise(streams(0, 1)))
    with pytest.raises(TypeError, match="diffusion equation"):
        sds.solve(sds.ODE(lambda t, y: -y), torch.zeros(1, 3), 1.0, 0.5, sds.DPMSolverPP(), steps=3)


# --- DiscreteVP -----------------------------------------------------------------------------------------
BETAS = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32)  # DDPM's linear schedule, as diffusers stores it


def test_discrete_vp_matches_alphas_cumprod_at_the_timesteps():
    ac = torch.cumprod(1 - BETAS, 0)
    p = sds.DiscreteVP(ac)
    t = p.time(torch.arange(1000))
    a, s = p.marginal(t)
    torch.testing.assert_close(a**2, ac.double(), rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(a), rtol=0, atol=1e-15)
    torch.testing.assert_close(p.timestep(t), torch.arange(1000, dtype=torch.float64), rtol=0, atol=1e-12)
    u = torch.rand(200, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(p.t_of_lam(p.lam(u)), u, rtol=0, atol=1e-14)
    lam = p.lam(u)
    assert torch.all(lam[u.argsort()].diff() < 0)
    # the SDE has these marginals: d sigma^2/dt = 2 f sigma^2 + g^2 (inside segments)
    h = 1e-7
    tc = (torch.arange(1, 999, 7, dtype=torch.float64) + 0.5) / 999
    ds2 = (p.sigma(tc + h) ** 2 - p.sigma(tc - h) ** 2) / (2 * h)
    torch.testing.assert_close(ds2, 2 * p.f(tc) * p.sigma(tc) ** 2 + p.g2(tc), rtol=1e-6, atol=1e-9)
    dla = (p.log_alpha(tc + h) - p.log_alpha(tc - h)) / (2 * h)
    torch.testing.assert_close(dla, p.f(tc), rtol=1e-6, atol=1e-9)
    assert p.T == 1.0 and p.t_min == 0.0
    torch.testing.assert_close(sds.DiscreteVP.from_betas(BETAS.double()).alphas_cumprod,
                               torch.cumprod(1 - BETAS.double(), 0))


def test_discrete_vp_rejects_bad_schedules():
    with pytest.raises(ValueError, match="strictly decreasing"):
        sds.DiscreteVP(torch.tensor([0.9, 0.95, 0.5]))
    with pytest.raises(ValueError, match="between 0 and 1"):
        sds.DiscreteVP(torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match="at least 2"):
        sds.DiscreteVP(torch.tensor([0.5]))


def test_discrete_vp_with_discrete_labels():
    """An eps model labelled by integer timesteps sees t (N - 1) = its timestep."""
    p = sds.DiscreteVP(torch.cumprod(1 - BETAS, 0))
    seen = []

    def model(x, label):
        seen.append(label)
        return torch.zeros_like(x)

    score = sds.Score.from_eps(model, p, time_label=sds.labels.discrete(p.N), check=False)
    grid = p.time(torch.tensor([999.0, 500.0, 0.0]))
    sds.solve(p.probability_flow(score), torch.zeros(2, 3, dtype=torch.float64), solver=sds.DDIM(), schedule=grid)
    torch.testing.assert_close(torch.stack(seen), torch.tensor([[999.0, 999.0], [500.0, 500.0]], dtype=torch.float64),
                               rtol=0, atol=1e-9)
