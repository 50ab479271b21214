"""The stochastic DPM-Solver++ samplers that users run from k-diffusion, with injectable noise.

Both work in EDM's variables x~ = x / alpha, rho = sigma / alpha = e^{-lambda} (k-diffusion's x and
sigma), for any process with Gaussian marginals, and take their normals from the step's
:class:`~sdesolve.noise.Noise` (draw numbers below), so two runs with the same seed agree sample
for sample, in any batch.

DPMSolverPP3MSDE(eta)   DPM-Solver++(3M) SDE (k-diffusion ``sample_dpmpp_3m_sde``): the SDE
    variant of multistep DPM-Solver++ (Lu et al. 2022b, Sec. 5; Gonzalez et al. 2023 for the
    SDE-DPM-Solver++ family), with h_eta = (1 + eta) h, h = lambda_b - lambda_a:
        x~_b = e^{-h_eta} x~_a + (1 - e^{-h_eta}) D_0 + phi_2 D1 - phi_3 D2
               + rho_b sqrt(1 - e^{-2 eta h}) s_noise z                                   (draw 0)
    with phi_2 = (e^{-h_eta} - 1) / h_eta + 1, phi_3 = phi_2 / h_eta - 1/2 (k-diffusion's
    weights) and, with r0 = h_1 / h, r1 = h_2 / h (h_1, h_2 the last two steps), D1_0 = (D_0 - D_1) / r0,
    D1_1 = (D_1 - D_2) / r1: D1 = D1_0 + (D1_0 - D1_1) r0 / (r0 + r1), D2 = (D1_0 - D1_1) / (r0 + r1).
    Second order (phi_2 D1_0) at step 1, first order at step 0. A step that ends where the model
    is not evaluated is the first-order data step (into rho = 0: the data prediction). eta = 0 is the ODE sampler DPM-Solver++(3M) with k-diffusion's weights
    (the -phi_3 weight of D2 makes it second-order accurate, like diffusers' 3M; see
    tests/test_diffusion_solvers.py); eta = 1 samples the reverse SDE.
DPMSolverPPSDE(eta, r)  k-diffusion's ``sample_dpmpp_sde``: a singlestep stochastic DPM-Solver++
    (second order in its drift, r = 1/2 the midpoint in lambda). Per step from rho_a to rho_b,
    with the ancestral split (rho_down, rho_up) of a step rho_a -> rho' (k-diffusion's
    get_ancestral_step: rho_up = min(rho', eta rho' sqrt(1 - rho'^2 / rho_a^2)),
    rho_down = sqrt(rho'^2 - rho_up^2); for eta <= 1 this is
    :func:`~sdesolve.solvers.exponential.ancestral`, the forward posterior scaled by eta):
        u~ = (d_s / rho_a) x~ + (1 - d_s / rho_a) D_0 + u_s s_noise z_1,   (d_s, u_s) of rho_s   (draw 0)
        x~_b = (d_b / rho_a) x~ + (1 - d_b / rho_a) [(1 - 1/(2r)) D_0 + 1/(2r) D(u~; rho_s)]
               + u_b s_noise z_2,   (d_b, u_b) of rho_b                                      (draw 1)
    rho_s = rho_a e^{-r h}. A step into rho = 0 is an Euler step (x~_b = D_0). k-diffusion draws
    z_1, z_2 from a Brownian tree (so z_2 is correlated with z_1); here they are independent
    normals, as in ``sample_dpmpp_sde`` given a noise_sampler (the tests pass it the same draws).
"""
from __future__ import annotations

import torch

from ..kernels import affine_noise_step
from ..noise import kernel_noise
from ..schedules import time_uniform
from .base import CONTROLLED, Step, per_sample
from .diffusion import DiffusionSolver
from .exponential import ancestral, data_step, point

__all__ = ["DPMSolverPP3MSDE", "DPMSolverPPSDE"]


class DPMSolverPP3MSDE(DiffusionSolver):
    """DPM-Solver++(3M) SDE (k-diffusion ``sample_dpmpp_3m_sde``); see the module docstring.
    Default grid: ``time_uniform(2.0)``, measured best of the grids valid for every process at 5-10
    evaluations over the digits model and both mixtures, ahead of log-SNR steps (which win at 10)
    and k-diffusion's Karras grid to sigma = 0 (the README's defaults table). The state is the
    history ((D_1, D_2), (h_1, h_2)), newest first."""

    order = 3
    default_schedule = staticmethod(time_uniform(2.0))

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0):
        if eta < 0:
            raise ValueError(f"DPMSolverPP3MSDE: eta must be >= 0, got {eta}")
        self.eta, self.s_noise = float(eta), float(s_noise)
        self.stochastic = self.eta > 0
        if self.stochastic:
            self.weak_order = 1.0

    def init(self, eq, t0, y0):
        return ((), ())

    def step(self, eq, t0, t1, y0, state, noise, at=CONTROLLED):
        outs, hs = state
        p = eq.process
        a, b = point(p, t0), point(p, t1)
        d0 = eq.denoised(t0, y0)
        if at.ends_low:
            return Step(data_step(a, b, y0, d0), None, state)
        h = b.lam - a.lam
        he = h * (self.eta + 1.0)
        xt = y0 / per_sample(a.alpha, y0)
        y = per_sample(torch.exp(-he), y0) * xt + per_sample(-torch.expm1(-he), y0) * d0
        phi2 = torch.expm1(-he) / he + 1.0
        if len(hs) >= 2:
            r0, r1 = hs[0] / h, hs[1] / h
            d1_0 = (d0 - outs[0]) / per_sample(r0, y0)
            d1_1 = (outs[0] - outs[1]) / per_sample(r1, y0)
            d1 = d1_0 + (d1_0 - d1_1) * per_sample(r0 / (r0 + r1), y0)
            d2 = (d1_0 - d1_1) / per_sample(r0 + r1, y0)
            phi3 = phi2 / he - 0.5
            y = y + per_sample(phi2, y0) * d1 - per_sample(phi3, y0) * d2
        elif len(hs) == 1:
            y = y + per_sample(phi2, y0) * ((d0 - outs[0]) / per_sample(hs[0] / h, y0))
        if self.eta > 0:
            std = torch.exp(-b.lam) * torch.sqrt(-torch.expm1(-2.0 * h * self.eta)) * self.s_noise
            y = y + per_sample(std, y0) * noise.normal(y0, 0)
        y = per_sample(b.alpha, y0) * y
        return Step(y, None, ((d0,) + outs[:1], (h,) + hs[:1]))


class DPMSolverPPSDE(DiffusionSolver):
    """k-diffusion's stochastic singlestep DPM-Solver++ (``sample_dpmpp_sde``), two model
    evaluations per step; see the module docstring. Default grid: ``time_uniform(1.75)``
    (measured best at 5-10 evaluations over the digits model and both mixtures, tied with
    ``time_uniform(2.0)``; the README's defaults table)."""

    order = 2
    nfe_per_step = 2
    default_schedule = staticmethod(time_uniform(1.75))

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5):
        if eta < 0 or not 0 < r <= 1:
            raise ValueError(f"DPMSolverPPSDE: need eta >= 0 and 0 < r <= 1, got eta={eta}, r={r}")
        self.eta, self.s_noise, self.r = float(eta), float(s_noise), float(r)
        self.stochastic = self.eta > 0
        if self.stochastic:
            self.weak_order = 1.0

    def _ancestral(self, a, b, x, d, noise, draw):
        """k-diffusion's ancestral step x_b = c_x x + c_D D + s_noise rho_up alpha_b z: the shared
        :func:`~sdesolve.solvers.exponential.ancestral` with rho_up capped at rho_b (eta > 1)."""
        cx, cd, std = ancestral(a, b, self.eta)
        if self.eta == 0:
            return per_sample(cx, x) * x + per_sample(cd, x) * d
        std = torch.minimum(std, b.sigma) * self.s_noise
        return affine_noise_step(x, cx, d, cd, std, **kernel_noise(noise, x, draw))

    def step(self, eq, t0, t1, y0, state, noise, at=CONTROLLED):
        p = eq.process
        a, b = point(p, t0), point(p, t1)
        d0 = eq.denoised(t0, y0)
        if at.ends_low:
            return Step(data_step(a, b, y0, d0))
        s = point(p, p.t_of_lam(a.lam + self.r * (b.lam - a.lam)))
        d2 = eq.denoised(s.t, self._ancestral(a, s, y0, d0, noise, 0))
        fac = 1.0 / (2.0 * self.r)
        return Step(self._ancestral(a, b, y0, (1.0 - fac) * d0 + fac * d2, noise, 1))
