"""Few-step samplers (iPNDM, LMS, DEIS, DPM-Solver++(3M) SDE, DPM-Solver++ SDE) and the new grids:
peers as oracles on the same grid, model and noise; convergence orders against the closed-form
probability-flow map of Gaussian data.

Peers: k-diffusion's ``sample_lms``, ``sample_dpmpp_3m_sde``, ``sample_dpmpp_sde`` (float64,
relative difference <= 1e-10), diffusers' IPNDMScheduler, DEISMultistepScheduler,
LMSDiscreteScheduler and DPMSolverMultistepScheduler with its default final sigma zero (diffusers
keeps float32 coefficients: <= 1e-5). diffusers' VP schedulers run on a continuous VP SDE through
the benchmark's mapping (timestep k at t_min + k (T - t_min) / 999, alphas_cumprod = alpha(t_k)^2),
so that the grids of :mod:`sdesolve.schedules` (``linspace_timesteps``) are tested with them.
"""
import math

import pytest
import torch

import sdesolve as sds
from sdesolve.bench.peers import Diffusers
from sdesolve.noise import PRIOR_STEP, Noise, streams
from sdesolve.solvers.multistep import AB_COEFFICIENTS, lagrange_integrals
from sdesolve.timeplan import plan_times

from helpers import fitted_slope
from peers import kdiffusion_sampling
from test_diffusion_solvers import GAUSS, closed_form_error, mixture, on_grid, pf_map
from test_oracles import B, KSetup, PROCESSES, rel

KD64 = 1e-10
DF32 = 1e-5


# --- k-diffusion ------------------------------------------------------------------------------------
class _CallNoise:
    """A k-diffusion noise_sampler handing out our draws in call order: call c of step i (found
    by sigma_from, nearest in log sigma) gets draw c of step i."""

    def __init__(self, setup, grid):
        self.s, self.logs = setup, torch.log(setup.sigmas(grid)[:-1])
        self.calls = {}

    def __call__(self, sigma, sigma_next):
        i = int(torch.argmin((self.logs - torch.log(torch.as_tensor(sigma, dtype=torch.float64))).abs()))
        c = self.calls.get(i, 0)
        self.calls[i] = c + 1
        return self.s.noise.at(i).normal(self.s.x, c)


@pytest.mark.parametrize("proc", list(PROCESSES))
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_kdiffusion_lms(proc, order):
    kd = kdiffusion_sampling()
    s = KSetup(PROCESSES[proc]())
    theirs = kd.sample_lms(s.denoiser, s.kx(), s.sigmas(s.zero), disable=True, order=order)
    assert rel(s.ours(sds.LMS(order), s.zero), theirs) < KD64


@pytest.mark.parametrize("proc", list(PROCESSES))
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_kdiffusion_dpmpp_3m_sde(proc, eta):
    kd = kdiffusion_sampling()
    s = KSetup(PROCESSES[proc]())
    theirs = kd.sample_dpmpp_3m_sde(s.denoiser, s.kx(), s.sigmas(s.zero), disable=True, eta=eta,
                                    noise_sampler=_CallNoise(s, s.zero))
    assert rel(s.ours(sds.DPMSolverPP3MSDE(eta), s.zero), theirs) < KD64


@pytest.mark.parametrize("proc", list(PROCESSES))
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_kdiffusion_dpmpp_sde(proc, eta):
    kd = kdiffusion_sampling()
    s = KSetup(PROCESSES[proc]())
    ns = _CallNoise(s, s.zero)
    theirs = kd.sample_dpmpp_sde(s.denoiser, s.kx(), s.sigmas(s.zero), disable=True, eta=eta, noise_sampler=ns)
    if eta:
        assert set(ns.calls.values()) == {2}  # two draws in every step but the last (Euler to 0)
    assert rel(s.ours(sds.DPMSolverPPSDE(eta), s.zero), theirs) < KD64


# --- diffusers ------------------------------------------------------------------------------------
class VPSetup:
    """The benchmark's diffusers mapping on the VP SDE, float64 state, shared x_T."""

    def __init__(self):
        self.p = sds.VPSDE()
        self.score = mixture().score(self.p)
        self.noise = Noise(streams(5, B))
        self.x = self.noise.at(PRIOR_STEP).normal(torch.empty(B, 2, dtype=torch.float64))

    def ours(self, solver, grid):
        eq = self.p.reverse(self.score) if solver.stochastic else self.p.probability_flow(self.score)
        return on_grid(solver, eq, self.x, grid, self.noise)

    def eps(self, x, t):
        return self.score.eps_of(x, torch.full((x.shape[0],), float(t), dtype=torch.float64), self.p)


@pytest.mark.parametrize("order,steps", [(1, 5), (2, 5), (3, 10), pytest.param(2, 10, marks=pytest.mark.slow),
                                         pytest.param(3, 5, marks=pytest.mark.slow)])
def test_diffusers_dpmsolver_multistep_default_final_sigma_zero(order, steps):
    """diffusers' default DPMSolverMultistepScheduler (final_sigmas_type="zero", linspace): our
    DPMSolverPP on ``linspace_timesteps()`` (final t = 0 where sigma = 0)."""
    from diffusers import DPMSolverMultistepScheduler
    s = VPSetup()
    peer = Diffusers(DPMSolverMultistepScheduler, solver_order=order)  # diffusers' defaults otherwise
    assert peer._scheduler(s.p).config.final_sigmas_type == "zero"
    theirs, calls = peer.sample(s.p, s.score, s.x, steps=steps)
    grid = sds.schedules.linspace_timesteps()(s.p, steps)
    assert float(grid[-1]) == 0.0 and calls == steps
    assert rel(s.ours(sds.DPMSolverPP(order), grid), theirs) < DF32


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_diffusers_timestep_spacings(spacing):
    from diffusers import DPMSolverMultistepScheduler
    s = VPSetup()
    for final_zero in (True, False):
        cfg = dict(solver_order=2, timestep_spacing=spacing, final_sigmas_type="zero" if final_zero else "sigma_min",
                   steps_offset=1 if spacing == "leading" else 0)
        theirs, _ = Diffusers(DPMSolverMultistepScheduler, **cfg).sample(s.p, s.score, s.x, steps=8)
        make = {"leading": lambda: sds.schedules.leading_timesteps(steps_offset=1, final_zero=final_zero),
                "trailing": lambda: sds.schedules.trailing_timesteps(final_zero=final_zero)}[spacing]
        assert rel(s.ours(sds.DPMSolverPP(2), make()(s.p, 8)), theirs) < DF32


@pytest.mark.parametrize("solver_order,steps", [(1, 6), (2, 6), (3, 12), pytest.param(3, 6, marks=pytest.mark.slow)])
def test_diffusers_deis(solver_order, steps):
    """diffusers' DEIS ("logrho": the polynomial in log rho), solver_order p = our order p - 1."""
    from diffusers import DEISMultistepScheduler
    s = VPSetup()
    peer = Diffusers(DEISMultistepScheduler, solver_order=solver_order)
    theirs, _ = peer.sample(s.p, s.score, s.x, steps=steps)
    grid = sds.schedules.linspace_timesteps(final_zero=False)(s.p, steps)  # DEIS ends at timestep 0
    ours = s.ours(sds.DEIS(solver_order - 1, in_log_rho=True, lower_order_final=True), grid)
    assert rel(ours, theirs) < DF32
    if solver_order == 3:  # the paper's tAB (polynomial in t) is a different method
        assert rel(s.ours(sds.DEIS(2, lower_order_final=True), grid), theirs) > 1e-4


@pytest.mark.parametrize("steps", [4, 10])
def test_diffusers_lms(steps):
    """LMSDiscreteScheduler steps x~ = x / alpha with the model fed x~ / sqrt(1 + rho^2) = x; its
    "linspace" timesteps are linspace(0, N - 1, steps) (integers when steps - 1 divides 999),
    then sigma = 0."""
    from diffusers import LMSDiscreteScheduler
    s = VPSetup()
    sched = Diffusers(LMSDiscreteScheduler)._scheduler(s.p)
    sched.set_timesteps(steps)
    dt = (s.p.T - s.p.t_min) / 999
    x = s.x / s.p.alpha(torch.tensor(s.p.T, dtype=torch.float64))
    for k in sched.timesteps:
        x = sched.step(s.eps(sched.scale_model_input(x, k), s.p.t_min + float(k) * dt), k, x).prev_sample
    grid = torch.cat([s.p.t_min + sched.timesteps.to(torch.float64) * dt, torch.zeros(1, dtype=torch.float64)])
    assert rel(s.ours(sds.LMS(4), grid), x) < DF32


@pytest.mark.parametrize("steps", [5, 10])
def test_diffusers_ipndm(steps):
    """IPNDMScheduler on a VP grid given as its ``trained_betas`` (its sigma_i, then 0; alpha_i =
    sqrt(1 - sigma_i^2)): our Karras grid; model output v with eps = sigma x + alpha v; order 4
    with warm-up. (Its own grid starts at alpha = 0, infinite noise, which no process reaches.)"""
    from diffusers import IPNDMScheduler
    s = VPSetup()
    g = sds.append_zero(K7)(s.p, steps)
    sched = IPNDMScheduler(num_train_timesteps=1000, trained_betas=s.p.sigma(g).tolist())
    sched.set_timesteps(steps)
    sig, alp = sched.betas.to(torch.float64), sched.alphas.to(torch.float64)
    grid = torch.cat([s.p.t_of_lam(torch.log(alp[:-1] / sig[:-1])), torch.zeros(1, dtype=torch.float64)])
    x = s.x.clone()
    for i, k in enumerate(sched.timesteps):
        e = s.eps(x, grid[i])
        x = sched.step((e - sched.betas[i] * x) / sched.alphas[i], k, x).prev_sample
    assert rel(s.ours(sds.IPNDM(4), grid), x) < DF32


# --- what the methods are -----------------------------------------------------------------------------
def _lagrange_exact(nodes, a, b):
    import numpy as np
    from numpy.polynomial import polynomial as P
    out = []
    for j in range(len(nodes)):
        c = np.array([1.0])
        for k in range(len(nodes)):
            if k != j:
                c = P.polymul(c, np.array([-nodes[k], 1.0]) / (nodes[j] - nodes[k]))
        integ = P.polyint(c)
        out.append(P.polyval(b, integ) - P.polyval(a, integ))
    return out


def test_variable_step_weights_integrate_polynomials_and_reduce_to_adams_bashforth():
    nodes = [3.0, 9.0, 30.0, 80.0]
    a, b = 3.0, 1.1
    tv = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    ours = lagrange_integrals([tv(v) for v in nodes], lambda w: w, tv(a), tv(b), torch.ones_like, 3)
    for c, e in zip(ours, _lagrange_exact(nodes, a, b)):
        assert abs(float(c) - e) < 1e-12 * max(1.0, abs(e))
    # on constant steps the variable-step weights are the Adams-Bashforth weights
    for k, ab in AB_COEFFICIENTS.items():
        uni = [tv(5.0 + j) for j in range(k)]
        cs = lagrange_integrals(uni, lambda w: w, tv(5.0), tv(4.0), torch.ones_like, 3)
        assert all(abs(float(c) + w) < 1e-12 for c, w in zip(cs, ab))


def test_ipndm_v_of_diff_sampler_differs_from_variable_step_adams_bashforth():
    """diff-sampler's iPNDM_v order-3 weights (Zhou et al.'s code) are AB3 on constant steps but
    do not integrate quadratics exactly on variable steps; the textbook weights (ours) do."""
    t = [80.0, 30.0, 9.0, 3.0, 1.1]
    i = 3
    hn, h1, h2 = t[i + 1] - t[i], t[i] - t[i - 1], t[i - 1] - t[i - 2]
    temp = (1 - hn / (3 * (hn + h1)) * (hn * (hn + h1)) / (h1 * (h1 + h2))) / 2
    theirs = [hn * ((2 + hn / h1) / 2 + temp), hn * (-(hn / h1) / 2 - (1 + h1 / h2) * temp), hn * temp * h1 / h2]
    ours = _lagrange_exact([t[3], t[2], t[1]], t[3], t[4])
    exact = (t[4] ** 3 - t[3] ** 3) / 3  # integral of s^2
    quad = lambda w: sum(c * s**2 for c, s in zip(w, [t[3], t[2], t[1]]))  # noqa: E731
    assert abs(quad(ours) - exact) < 1e-9 * abs(exact)
    assert abs(quad(theirs) - exact) > 1e-2 * abs(exact)


def _order_error(process, solver, steps, schedule, exact_start):
    """Closed-form error; with ``exact_start`` the history is filled with exact values at the
    first k - 1 grid points (the textbook order of a k-step method), and the solve starts there."""
    if not exact_start:
        return closed_form_error(process, solver, steps, schedule)
    x = process.prior_std * torch.randn(16, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grid = schedule(process, steps)
    eq = process.probability_flow(GAUSS.score(process))
    k = solver.points
    Bn = x.shape[0]
    tv = lambda i: grid[i].expand(Bn)  # noqa: E731
    at = plan_times(process, schedule=grid).positions
    nodes, eps = [], []
    for i in range(k - 1):
        xi = pf_map(process, x, float(grid[0]), float(grid[i]))
        a = sds.solvers.multistep.point(process, tv(i))
        nodes.append(solver.node(a))
        eps.append(eq.eps(tv(i), xi))
    state = (tuple(nodes), tuple(eps))
    y = pf_map(process, x, float(grid[0]), float(grid[k - 1]))
    for i in range(k - 1, steps):
        out = solver.step(eq, tv(i), tv(i + 1), y, state, None, at[i])
        y, state = out.y, out.state
    return float((y - pf_map(process, x, float(grid[0]), float(grid[-1]))).abs().max())


def _sub(schedule, s_hi, s_lo):
    """``schedule`` between the noise levels s_hi and s_lo."""
    def sch(p, n):
        f = lambda s: float(p.t_of_sigma_edm(torch.tensor(s, dtype=torch.float64)))  # noqa: E731
        return schedule(p, n, t_start=f(s_hi), t_end=f(s_lo))
    return sch


K7, LOG = sds.schedules.karras(7.0), sds.schedules.logsnr
UNI_RHO = _sub(sds.schedules.karras(1.0), 5.0, 0.5)   # uniform in rho: iPNDM's constant steps
S = [40, 80, 160, 320]
SLOW = pytest.mark.slow


def _case(name, solver, order, grid, steps, process, exact, slow=False):
    return pytest.param(name, solver, order, grid, steps, process, exact, id=name, marks=[SLOW] if slow else [])


ORDERS = (
    [_case(f"iPNDM-{k} {g}", sds.IPNDM(k), k, UNI_RHO, S, P, True, slow=(g == "EDM" and k < 4))
     for k in (2, 3, 4) for g, P in (("VP", sds.VPSDE()), ("EDM", sds.EDM()))]
    + [_case(f"iPNDM_v-{k} karras", sds.IPNDM(k, variable=True), k, K7, [40, 80, 160, 320], sds.VPSDE(), True,
             slow=k == 2) for k in (2, 3, 4)]
    + [_case(f"LMS-{k} {name}", sds.LMS(k), k, g, [40, 80, 160, 320] if k < 4 else [80, 160, 320], sds.VPSDE(), True,
             slow=k == 2) for k in (2, 3, 4) for name, g in (("karras", K7), ("logsnr", LOG))]
    + [_case(f"DEIS tAB-{r} {name}", sds.DEIS(r), r + 1, g, [20, 40, 80, 160], sds.VPSDE(), False, slow=r == 1)
       for r in (1, 2, 3) for name, g in (("karras", K7), ("logsnr", LOG))]
)


@pytest.mark.parametrize("name,solver,order,schedule,steps,process,exact_start", ORDERS)
def test_convergence_order(name, solver, order, schedule, steps, process, exact_start):
    errs = [_order_error(process, solver, n, schedule, exact_start) for n in steps]
    assert errs[-1] > 1e-12, errs
    slope = fitted_slope([1 / n for n in steps], errs)
    assert abs(slope - order) < 0.3, (name, slope, errs)


def test_afs_saves_one_evaluation_and_stays_close():
    p = sds.VPSDE()
    score = GAUSS.score(p)
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grid = sds.append_zero(K7)(p, 10)
    eq = p.probability_flow(score)
    plain = sds.solve(eq, x, solver=sds.IPNDM(4), schedule=grid)
    afs = sds.solve(eq, x, solver=sds.IPNDM(4, afs=True), schedule=grid)
    assert plain.stats.nfe == 10 and afs.stats.nfe == 9
    exact = pf_map(p, x, float(grid[0]), 1e-9)
    # the first step's eps differs from the model's by ~ rho_0 |alpha mu| / (1 + rho_0^2): small here
    assert (afs.y - plain.y).abs().max() < 0.05 * exact.abs().max()


def test_lower_order_final_and_invalid():
    with pytest.raises(ValueError, match="order"):
        sds.IPNDM(5)
    with pytest.raises(ValueError, match="order"):
        sds.DEIS(4)
    with pytest.raises(ValueError, match="eta"):
        sds.DPMSolverPP3MSDE(-1.0)
    p = sds.VPSDE()
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eq = p.probability_flow(GAUSS.score(p))
    g = K7(p, 8)
    a = sds.solve(eq, x, solver=sds.LMS(3), schedule=g).y
    b = sds.solve(eq, x, solver=sds.LMS(3, lower_order_final=True), schedule=g).y
    assert rel(a, b) > 1e-6


def test_schedules_match_kdiffusion_and_diffusers_grids():
    kd = kdiffusion_sampling()
    p = sds.EDM()
    smin, smax = p.t_min, p.T
    S_ = sds.schedules
    assert rel(p.sigma_edm(S_.exponential(p, 9)), kd.get_sigmas_exponential(10, smin, smax).double()[:-1]) < 1e-6
    assert rel(p.sigma_edm(S_.polyexponential(2.0)(p, 9)),
               kd.get_sigmas_polyexponential(10, smin, smax, rho=2.0).double()[:-1]) < 1e-6
    from diffusers import DPMSolverMultistepScheduler
    sched = DPMSolverMultistepScheduler(use_beta_sigmas=True)
    ours = S_.beta()(sds.VPSDE(), 7)
    vp = sds.VPSDE()
    sig = vp.sigma_edm(ours)
    s_max, s_min = float(sig[0]), float(sig[-1])
    theirs = sched._convert_to_beta(torch.tensor([s_max, s_min], dtype=torch.float64), 8)
    assert rel(sig, torch.as_tensor(theirs, dtype=torch.float64)) < 1e-10
    tu = S_.time_uniform(1.0)(vp, 6)
    assert rel(tu, S_.uniform(vp, 6)) < 1e-15
