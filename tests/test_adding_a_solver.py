"""Adding a solver takes a few lines over the shared primitives (the how-to of
:mod:`sdesolve.solvers.base`): one of each family, each checked against the library's own
implementation or a closed form on the same inputs."""
import torch

import sdesolve as sds
from sdesolve.kernels import em_step
from sdesolve.noise import kernel_noise
from sdesolve.solvers.base import Step
from sdesolve.solvers.diffusion import DiffusionSolver, multistep_order
from sdesolve.solvers.exponential import data_step, point
from sdesolve.solvers.sde import diffusion_argument
from sdesolve.solvers.tableaus import ButcherTableau
from sdesolve.tensors import per_sample

GM = sds.GaussianMixture([0.2, 0.5, 0.3], [[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]], [0.1, 0.3, 0.2])


class Ralston(sds.RungeKutta):
    """Ralston's second-order method (Ralston 1962): a Runge-Kutta method is its tableau."""
    tableau = ButcherTableau("Ralston", c=(0.0, 2 / 3), A=((0.0, 0.0), (2 / 3, 0.0)), b=(0.25, 0.75), order=2)


class TwoStepData(DiffusionSolver):
    """DPM-Solver++(2M) in its own words: a first-order data step plus the divided difference of
    the last two denoised predictions (Lu et al. 2022b, Algorithm 2)."""

    def init(self, eq, t0, y0):
        return None

    def step(self, eq, t0, t1, y0, state, noise, at=sds.Position()):
        a, b = point(eq.process, t0), point(eq.process, t1)
        d = eq.denoised(t0, y0)
        y = data_step(a, b, y0, d)
        if state is not None and multistep_order(2, 1, at, lower_order_final=True, below=15) == 2:
            lam_prev, d_prev = state
            r = (a.lam - lam_prev) / (b.lam - a.lam)
            y = y + per_sample(-b.alpha * torch.expm1(a.lam - b.lam) / (2 * r), y0) * (d - d_prev)
        return Step(y, state=(a.lam, d))


class EM(sds.Solver):
    """Euler-Maruyama as a user would write it on the fused update."""
    order, stochastic = 0.5, True

    def step(self, eq, t0, t1, y0, state, noise, at=sds.Position()):
        g = diffusion_argument(eq.diffusion(t0, y0), y0)
        return Step(em_step(y0, eq.drift(t0, y0), g, t1 - t0, **kernel_noise(noise, y0, 0)))


def test_a_runge_kutta_method_is_its_tableau():
    # y' = -y from 1 over [0, 1]: the error of a second-order method falls 4x per halving
    eq = sds.ODE(lambda t, y: -y)
    y0 = torch.ones(1, 1, dtype=torch.float64)
    err = [abs(float(sds.solve(eq, y0, 0.0, 1.0, Ralston(), steps=n).y) - torch.e**-1) for n in (16, 32, 64)]
    assert 3.7 < err[0] / err[1] < 4.3 and 3.7 < err[1] / err[2] < 4.3


def test_a_diffusion_multistep_method_in_a_few_lines():
    p = sds.VPSDE()
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for steps in (6, 20):
        ours = sds.sample(p, GM.score(p), TwoStepData(), x_T=x, steps=steps, schedule=sds.schedules.logsnr).y
        lib = sds.sample(p, GM.score(p), sds.DPMSolverPP(2), x_T=x, steps=steps, schedule=sds.schedules.logsnr).y
        torch.testing.assert_close(ours, lib, rtol=1e-12, atol=1e-12)


def test_an_sde_method_in_a_few_lines():
    p = sds.VPSDE()
    kw = dict(shape=(32, 2), steps=50, seed=3, dtype=torch.float64)
    # on an SDE given by its drift and diffusion the library's step is the same fused update
    rev = p.reverse(GM.score(p))
    sde = sds.SDE(rev.drift, rev.diffusion, noise="additive")
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    solve = lambda solver: sds.solve(sde, x, p.T, p.t_min, solver, steps=50, seed=3).y
    torch.testing.assert_close(solve(EM()), solve(sds.EulerMaruyama()), rtol=0, atol=0)
    # on the reverse SDE the library folds a grid's coefficients, (1 + f h) x + (-g^2 h) s: rounding apart
    torch.testing.assert_close(sds.sample(p, GM.score(p), EM(), **kw).y,
                               sds.sample(p, GM.score(p), sds.EulerMaruyama(), **kw).y, rtol=1e-12, atol=1e-12)
