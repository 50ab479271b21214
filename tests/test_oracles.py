"""Peer oracles for the fast samplers: k-diffusion's ``sampling.py`` and diffusers' schedulers,
on the same model (the exact Gaussian-mixture denoiser), the same grid, the same initial noise
and the same per-step noise, in float64.

k-diffusion works in the variance-exploding variable x_k = x / alpha(t) with noise level
sigma = sigma_edm(t) = sigma / alpha and a denoiser D(x_k; sigma). We compare (a) on the EDM
process (alpha = 1, sigma = t), where the variables coincide, and (b) on the VP process through
k-diffusion's VP-wrapper convention: D_k(x_k; sigma) = D(alpha(t) x_k, t) with t =
t_of_sigma_edm(sigma), x_k(T) = x_T / alpha(T), and our result divided by alpha(t_end).
Grids are k-diffusion's: Karras' (rho = 7) ending at sigma = 0 for the samplers that step to 0
(k-diffusion takes an Euler / first-order step there, and so do ours), ending at sigma_min for
the plain RK methods. k-diffusion's ``sample_dpm_2`` is DPM-Solver-2 (r1 = 1/2: the midpoint in
log sigma = in lambda) written in x_k, so it is compared with ``DPMSolver(order=2)`` itself; its
DPM-Solver-3 (``DPMSolver.dpm_solver_3_step``) is stepped along the same grid.

diffusers runs on DDPM's discrete schedule (linear betas 1e-4..0.02, N = 1000) through
``DiscreteVP(scheduler.alphas_cumprod)``, timestep k at t = k / 999. Conventions set alike on
both sides: diffusers' final step goes to timestep 0 (``final_sigmas_type="sigma_min"``; DDIM:
``set_alpha_to_one=False``), so our grid is the scheduler's timesteps followed by t = 0; DDIM
uses "trailing" and "leading" (steps_offset = 1) spacing, whose timesteps are equally spaced (as
DDIM's prev_timestep = t - 1000 // steps assumes); the multistep schedulers use "linspace";
``lower_order_final`` is passed to both (diffusers lowers the order below 15 steps for
DPM-Solver++, always for UniPC). diffusers keeps its sample in float32 inside ``step``, so the
tolerance is 1e-5 relative; the SDE variant can amplify that float32 rounding along its path
(measured on a sharper mixture: one float32 rounding of our own state at step 2 of 10 moved the
result by 3e-6, and diffusers' end-to-end result differed by 2e-5 while every single step agreed
to 6e-8), so at 10 steps it is compared step by step from the same state, and end to end at 20.
"""
import pytest
import torch

import sdesolve as sds
from sdesolve.timeplan import plan_times
from sdesolve.noise import PRIOR_STEP, Noise, streams

from peers import kdiffusion_sampling
from test_diffusion_solvers import mixture, on_grid

B = 8
KD_TOL = 1e-6
DF_TOL = 1e-5


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


# --- k-diffusion ------------------------------------------------------------------------------------
class KSetup:
    def __init__(self, process, steps=10):
        self.p = process
        self.mix = mixture()
        self.score = self.mix.score(process)
        self.noise = Noise(streams(1, B))
        self.x = process.prior_std * self.noise.at(PRIOR_STEP).normal(torch.empty(B, 2, dtype=torch.float64))
        self.zero = sds.append_zero(sds.schedules.karras(7.0))(process, steps + 1)  # steps + 1 steps, last to 0
        self.tmin = self.zero[:-1].clone()                                            # steps steps, to t_min

    def sigmas(self, grid):
        return self.p.sigma_edm(grid)

    def denoiser(self, xk, sigma):
        t = self.p.t_of_sigma_edm(sigma.to(torch.float64))
        return self.score.denoised_of(xk * self.p.alpha(t)[:, None], t, self.p)

    def noise_sampler(self, grid):
        """k-diffusion asks noise_sampler(sigma_i, sigma_{i+1}) once in step i: give it our step-i draw."""
        index = {float(s): i for i, s in enumerate(self.sigmas(grid))}
        return lambda sigma, sigma_next: self.noise.at(index[float(sigma)]).normal(self.x, 0)

    def ours(self, solver, grid):
        eq = self.p.reverse(self.score) if solver.stochastic else self.p.probability_flow(self.score)
        return on_grid(solver, eq, self.x, grid, self.noise) / self.p.alpha(grid[-1])

    def kx(self):
        return self.x / self.p.alpha(torch.tensor(self.p.T, dtype=torch.float64))


PROCESSES = {"EDM": sds.EDM, "VP": sds.VPSDE}

# (name, our solver, k-diffusion sampler name, its kwargs, the grid, needs a noise sampler)
KD_CASES = [
    ("EDMHeun", sds.EDMHeun(), "sample_heun", {}, "zero", False),
    ("DPM-Solver-2", sds.DPMSolver(2), "sample_dpm_2", {}, "zero", False),
    ("DPM-Solver++(2M)", sds.DPMSolverPP(2, lower_order_final=False), "sample_dpmpp_2m", {}, "zero", False),
    ("DPM-Solver++(2S)", sds.DPMSolverPP(2, multistep=False), "sample_dpmpp_2s_ancestral", {"eta": 0.0}, "zero", True),
    ("DDIM(eta=1)", sds.DDIM(1.0), "sample_euler_ancestral", {}, "zero", True),
    ("Ancestral", sds.Ancestral(1.0), "sample_euler_ancestral", {}, "zero", True),
    ("SDE-DPM-Solver++(2M)", sds.DPMSolverPP(2, sde=True, lower_order_final=False), "sample_dpmpp_2m_sde",
     {"solver_type": "midpoint"}, "zero", True),
]


@pytest.mark.parametrize("proc", list(PROCESSES))
@pytest.mark.parametrize("name,solver,kd_name,kw,which,noisy", KD_CASES, ids=[c[0] for c in KD_CASES])
def test_kdiffusion(proc, name, solver, kd_name, kw, which, noisy):
    kd = kdiffusion_sampling()
    s = KSetup(PROCESSES[proc]())
    grid = getattr(s, which)
    if noisy:
        kw = dict(kw, noise_sampler=s.noise_sampler(grid))
    theirs = getattr(kd, kd_name)(s.denoiser, s.kx(), s.sigmas(grid), disable=True, **kw)
    assert rel(s.ours(solver, grid), theirs) < KD_TOL


@pytest.mark.parametrize("solver,kd_name", [(sds.Euler(), "sample_euler"), (sds.Heun(), "sample_heun")], ids=repr)
def test_kdiffusion_plain_rk_on_the_edm_process(solver, kd_name):
    """On the EDM process the probability-flow ODE is dx/dt = (x - D) / t: k-diffusion's ODE in sigma."""
    kd = kdiffusion_sampling()
    s = KSetup(sds.EDM())
    theirs = getattr(kd, kd_name)(s.denoiser, s.kx(), s.sigmas(s.tmin), disable=True)
    ours = sds.solve(s.p.probability_flow(s.score), s.x, solver=solver, schedule=s.tmin).y
    assert rel(ours, theirs) < KD_TOL


@pytest.mark.parametrize("proc", list(PROCESSES))
@pytest.mark.parametrize("order", [2, 3])
def test_kdiffusion_dpm_solver_steps(proc, order):
    """k-diffusion's DPMSolver class (Lu et al.'s noise-prediction steps in t = -log sigma)."""
    kd = kdiffusion_sampling()
    s = KSetup(PROCESSES[proc]())
    dpm = kd.DPMSolver(s.denoiser)
    step = dpm.dpm_solver_2_step if order == 2 else dpm.dpm_solver_3_step
    sig = s.sigmas(s.tmin)
    xk = s.kx()
    for i in range(len(sig) - 1):
        xk, _ = step(xk, dpm.t(sig[i]), dpm.t(sig[i + 1]))
    assert rel(s.ours(sds.DPMSolver(order), s.tmin), xk) < KD_TOL


class _TorchWithDraws:
    """k-diffusion's module namespace ``torch`` with ``randn_like`` returning given draws in order
    (``sample_heun`` draws its churn noise with torch.randn_like once per step)."""

    def __init__(self, draws):
        self._draws = iter(draws)

    def randn_like(self, x):
        return next(self._draws)

    def __getattr__(self, name):
        return getattr(torch, name)


@pytest.mark.parametrize("proc", list(PROCESSES))
def test_kdiffusion_heun_with_churn(proc, monkeypatch):
    kd = kdiffusion_sampling()
    s = KSetup(PROCESSES[proc]())
    grid = s.zero
    n = grid.numel() - 1
    kw = dict(s_churn=30.0, s_tmin=0.05, s_tmax=10.0, s_noise=1.003)
    monkeypatch.setattr(kd, "torch", _TorchWithDraws([s.noise.at(i).normal(s.x, 0) for i in range(n)]))
    theirs = kd.sample_heun(s.denoiser, s.kx(), s.sigmas(grid), disable=True, **kw)
    ours = s.ours(sds.EDMHeun(churn=30.0, s_tmin=0.05, s_tmax=10.0, s_noise=1.003), grid)
    assert rel(ours, theirs) < KD_TOL
    assert rel(ours, s.ours(sds.EDMHeun(), grid)) > 1e-3  # the churn did act


# --- diffusers ------------------------------------------------------------------------------------
def _ddpm(cls, **kw):
    return cls(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", **kw)


class DSetup:
    def __init__(self, scheduler, steps):
        scheduler.set_timesteps(steps)
        self.sched = scheduler
        self.p = sds.DiscreteVP.from_scheduler(scheduler)
        self.score = mixture().score(self.p)
        self.noise = Noise(streams(3, B))
        self.x = self.noise.at(PRIOR_STEP).normal(torch.empty(B, 2, dtype=torch.float64))
        ts = scheduler.timesteps.to(torch.float64)
        self.timesteps = scheduler.timesteps
        self.grid = self.p.time(torch.cat([ts, torch.zeros(1, dtype=torch.float64)]))

    def eps(self, x, timestep):
        return self.score.eps_of(x, self.p.time(torch.full((B,), float(timestep))), self.p)

    def theirs(self, noisy=False, **kw):
        x = self.x.clone()
        for i, ts in enumerate(self.timesteps):
            if noisy:
                kw["variance_noise"] = self.noise.at(i).normal(x, 0)
            x = self.sched.step(self.eps(x, ts), ts, x, **kw).prev_sample
        return x

    def ours(self, solver):
        eq = self.p.reverse(self.score) if solver.stochastic else self.p.probability_flow(self.score)
        return on_grid(solver, eq, self.x, self.grid, self.noise)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("spacing,offset", [("trailing", 0), ("leading", 1)])
def test_diffusers_ddim(spacing, offset, eta):
    from diffusers import DDIMScheduler
    s = DSetup(_ddpm(DDIMScheduler, set_alpha_to_one=False, timestep_spacing=spacing, steps_offset=offset,
                     clip_sample=False), 10)
    assert rel(s.ours(sds.DDIM(eta)), s.theirs(noisy=eta > 0, eta=eta)) < DF_TOL


@pytest.mark.parametrize("steps", [10, 20])
@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize("order", [2, 3])
def test_diffusers_dpmsolver_multistep(order, lower_order_final, steps):
    from diffusers import DPMSolverMultistepScheduler
    s = DSetup(_ddpm(DPMSolverMultistepScheduler, solver_order=order, algorithm_type="dpmsolver++",
                     lower_order_final=lower_order_final, final_sigmas_type="sigma_min"), steps)
    assert rel(s.ours(sds.DPMSolverPP(order, lower_order_final=lower_order_final)), s.theirs()) < DF_TOL


@pytest.mark.parametrize("lower_order_final", [True, False])
def test_diffusers_sde_dpmsolver_step_by_step(lower_order_final):
    """SDE-DPM-Solver++(2M), midpoint: each step from diffusers' own state, over 10 steps."""
    from diffusers import DPMSolverMultistepScheduler
    s = DSetup(_ddpm(DPMSolverMultistepScheduler, solver_order=2, algorithm_type="sde-dpmsolver++",
                     solver_type="midpoint", lower_order_final=lower_order_final, final_sigmas_type="sigma_min"), 10)
    solver = sds.DPMSolverPP(2, sde=True, lower_order_final=lower_order_final)
    eq = s.p.reverse(s.score)
    tv = lambda i: s.grid[i].expand(B)
    at = plan_times(eq.process, schedule=s.grid).positions
    state = solver.init(eq, tv(0), s.x)
    x, worst = s.x.clone(), 0.0
    for i, ts in enumerate(s.timesteps):
        ours = solver.step(eq, tv(i), tv(i + 1), x, state, s.noise.at(i), at[i])
        state = ours.state
        x = s.sched.step(s.eps(x, ts), ts, x, variance_noise=s.noise.at(i).normal(x, 0)).prev_sample
        worst = max(worst, rel(ours.y, x))
    assert worst < DF_TOL


def test_diffusers_sde_dpmsolver_end_to_end():
    from diffusers import DPMSolverMultistepScheduler
    s = DSetup(_ddpm(DPMSolverMultistepScheduler, solver_order=2, algorithm_type="sde-dpmsolver++",
                     solver_type="midpoint", final_sigmas_type="sigma_min"), 20)
    assert rel(s.ours(sds.DPMSolverPP(2, sde=True)), s.theirs(noisy=True)) < DF_TOL


@pytest.mark.parametrize("steps,lower_order_final", [(5, True), (10, True), (10, False)])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [2, 3])
def test_diffusers_unipc(order, variant, steps, lower_order_final):
    from diffusers import UniPCMultistepScheduler
    s = DSetup(_ddpm(UniPCMultistepScheduler, solver_order=order, solver_type=variant, predict_x0=True,
                     lower_order_final=lower_order_final, final_sigmas_type="sigma_min"), steps)
    assert rel(s.ours(sds.UniPC(order, variant, lower_order_final=lower_order_final)), s.theirs()) < DF_TOL


def test_diffusers_unipc_disable_corrector():
    from diffusers import UniPCMultistepScheduler
    s = DSetup(_ddpm(UniPCMultistepScheduler, solver_order=2, disable_corrector=[0, 3],
                     final_sigmas_type="sigma_min"), 8)
    ours = s.ours(sds.UniPC(2, disable_corrector=(0, 3)))
    assert rel(ours, s.theirs()) < DF_TOL
    assert rel(ours, s.ours(sds.UniPC(2))) > 1e-4  # the corrector matters on this grid
