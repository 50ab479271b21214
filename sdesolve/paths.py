"""Gaussian probability paths: x_t = alpha(t) x_0 + sigma(t) z, flows included.

Every forward process of :mod:`sdesolve.processes` is such a path; this module builds one from
any alpha(t), sigma(t), and names the ones used by flow matching. The forward SDE a path implies
(Kingma et al. 2021, VDM, App. A; Lipman et al. 2024, "Flow Matching Guide", Sec. 4.8):

    f(t)   = d log alpha / dt                          drift f(t) x
    g(t)^2 = d sigma^2 / dt - 2 f(t) sigma^2           = -2 sigma^2 d lambda / dt >= 0
    lambda = log(alpha / sigma)                         half log-SNR, decreasing in t

The velocity of the path (the flow-matching target, Lipman et al. 2023; Liu et al. 2023) is

    u = alpha'(t) x_0 + sigma'(t) z,   E[u | x_t = x] = f x - g^2 score / 2   (the PF-ODE drift)

so the probability-flow ODE of a path is dx/dt = alpha' E[x_0|x] + sigma' E[z|x], finite even
where alpha = 0: a path's ``probability_flow`` integrates that form (``Score.velocity_of``),
which is what a velocity model predicts natively. ``reverse(score, diffusion=g~)`` is the family
of SDEs with the same marginals (Song et al. 2021, App. D.1; Karras et al. 2022, Eq. 6):

    dx = [u(x, t) - g~(t)^2 score / 2] dt + g~(t) dW_bar        (= [f x - (g^2 + g~^2)/2 score] dt + ...)

g~ = 0 is the probability-flow ODE, g~ = g (the default) the usual reverse SDE. The g~ of an
equation is what generic SDE solvers integrate (EulerMaruyama, Milstein, AdaptiveSDE, ...); the
samplers that step the process's own Gaussian transitions (ReverseDiffusion, Ancestral,
DDIM(eta), SDE-DPM-Solver) have their own noise levels and do not read it.

Conventions of the named paths (time runs from data at t = 0 to noise):

    RectifiedFlow   alpha = 1 - t, sigma = t                 lambda = log((1 - t) / t)
    CosinePath      alpha = cos(pi t / 2), sigma = sin(pi t / 2)   lambda = -log tan(pi t / 2)
    TimeShift(p, s) p at time t' = s t / (1 + (s - 1) t)     (Esser et al. 2024, SD3, Sec. 5.3.2)

Endpoints. At t = 1 both named paths have alpha = 0: lambda = -inf, f = -inf, g = inf, and the
prior N(0, I) is exact. Solvers that step in the log-SNR need lambda finite at both ends, so
the default time range is ``t_min = 1e-3``, ``T = 1 - 1e-3`` (lambda from about +6.9 to -6.9 on
the linear path; for comparison VPSDE spans +4.6 .. -5.0), and the prior at ``T`` is
N(0, sigma(T)^2 I), which ignores alpha(T) x_0 (alpha(T) = 1e-3 here, 6.7e-3 for VPSDE).
``T = 1`` is allowed (``RectifiedFlow(T=1.0)``, as diffusers' flow-matching schedulers start
there): Euler/Heun/RK on the probability-flow ODE evaluate the velocity there, and DDIM or the
first step of DPM-Solver++/UniPC go from lambda = -inf exactly. Grids spaced in lambda or sigma
(the default grids of the log-SNR solvers) start at sigma / alpha = ``schedules.SIGMA_EDM_MAX`` =
999 instead (t = 0.999 on the linear path), where lambda, f and g are finite, so every solver and
the reverse SDE with g~ = g work on such a path with its default grid (see
:mod:`sdesolve.schedules`); an explicit grid from t = 1 works with the solvers that do not need
lambda(T) finite (Euler, Heun, RK, DDIM, DPM-Solver++, UniPC).
"""
from __future__ import annotations

import math

import torch

from .equations import ProbabilityFlowODE, ReverseSDE, VelocityODE, VelocitySDE
from .processes import Process, _t
from .tensors import per_sample

__all__ = ["GaussianPath", "RectifiedFlow", "CosinePath", "TimeShift", "VelocityODE", "VelocitySDE",
           "dynamic_shift"]


def _fd(fn, t: torch.Tensor, h: float) -> torch.Tensor:
    """d fn / dt by the five-point central stencil (error O(h^4) + rounding eps/h)."""
    return (fn(t - 2 * h) - 8 * fn(t - h) + 8 * fn(t + h) - fn(t + 2 * h)) / (12 * h)


# ------------------------------------------------------------------------------------------------
# ------------------------------------------------------------------------------------------------
class GaussianPath(Process):
    """x_t = alpha(t) x_0 + sigma(t) z for any positive alpha, sigma with alpha / sigma strictly
    decreasing on (0, T]: functions of a float64 tensor t returning tensors. ``d_alpha`` and
    ``d_sigma`` are their derivatives (by default: five-point central differences, step h = 1e-4,
    accurate to about 1e-11 for smooth functions; the functions are then evaluated up to 2h
    beyond the time range). The inverse of the log-SNR is found by bisection on [0, T] then
    Newton (exact to rounding); a lambda outside [lambda(T), lambda(0)] maps to T or 0.

    f, g^2 and the prior: see the module docstring. ``prior_std = sigma(T)``.
    """

    _fd_h = 1e-4

    def __init__(self, alpha, sigma, T: float = 1.0, t_min: float = 1e-3, d_alpha=None, d_sigma=None):
        self._alpha_fn, self._sigma_fn = alpha, sigma
        self._d_alpha_fn, self._d_sigma_fn = d_alpha, d_sigma
        self.T, self.t_min = float(T), float(t_min)
        self._check()
        self._set_prior()

    def _set_prior(self):
        self.prior_std = float(self.sigma(torch.tensor(self.T, dtype=torch.float64)))
        if not self.prior_std > 0:
            raise ValueError(f"{type(self).__name__}: sigma(T) must be > 0, got {self.prior_std}")

    # the marginal ---------------------------------------------------------------------------------
    def alpha(self, t):
        return torch.as_tensor(self._alpha_fn(_t(t)), dtype=torch.float64)

    def log_alpha(self, t):
        return torch.log(self.alpha(t))

    def sigma(self, t):
        return torch.as_tensor(self._sigma_fn(_t(t)), dtype=torch.float64)

    def marginal(self, t):
        t = _t(t)
        return self.alpha(t), self.sigma(t)

    def d_marginal(self, t):
        """(alpha'(t), sigma'(t)), float64."""
        t = _t(t)
        da = self._d_alpha_fn(t) if self._d_alpha_fn is not None else _fd(self.alpha, t, self._fd_h)
        ds = self._d_sigma_fn(t) if self._d_sigma_fn is not None else _fd(self.sigma, t, self._fd_h)
        return torch.as_tensor(da, dtype=torch.float64), torch.as_tensor(ds, dtype=torch.float64)

    def t_of_lam(self, lam):
        lam = _t(lam)
        lo = torch.zeros_like(lam)
        hi = torch.full_like(lam, self.T)
        for _ in range(64):  # bisection: lambda decreasing, so lambda(mid) > lam means mid is too early
            mid = 0.5 * (lo + hi)
            later = self.lam(mid) > lam
            lo, hi = torch.where(later, mid, lo), torch.where(later, hi, mid)
        t = 0.5 * (lo + hi)
        for _ in range(2):  # Newton on lambda(t) = lam, d lambda / dt = -g^2 / (2 sigma^2)
            dl = -0.5 * self.g2(t) / self.sigma(t) ** 2
            step = (self.lam(t) - lam) / dl
            ok = torch.isfinite(step) & (dl < 0)
            t = torch.where(ok, (t - step).clamp(0.0, self.T), t)
        return t

    # the forward SDE --------------------------------------------------------------------------------
    def f(self, t):
        t = _t(t)
        da, _ = self.d_marginal(t)
        return da / self.alpha(t)

    def g2(self, t):
        t = _t(t)
        a, s = self.marginal(t)
        da, ds = self.d_marginal(t)
        # d sigma^2/dt - 2 f sigma^2 = 2 sigma (sigma' - alpha' sigma / alpha) = -2 sigma^2 d lambda/dt
        return 2.0 * s * (ds * a - da * s) / a

    # equations ----------------------------------------------------------------------------------------
    def reverse(self, score, diffusion=None) -> ReverseSDE:
        """dx = [u - g~^2 score / 2] dt + g~ dW_bar (module docstring); ``diffusion`` g~: None for
        g (the usual reverse SDE), a number >= 0, or a function of the float64 times (B,)."""
        return VelocitySDE(self, score, diffusion)

    def probability_flow(self, score) -> ProbabilityFlowODE:
        """dx/dt = u(x, t) = alpha' E[x_0|x] + sigma' E[z|x] (= f x - g^2 score / 2)."""
        return VelocityODE(self, score)

    def __repr__(self):
        return f"{type(self).__name__}(T={self.T}, t_min={self.t_min})"


class RectifiedFlow(GaussianPath):
    """The linear path of rectified flow / conditional flow matching with optimal-transport paths
    (Liu et al. 2023; Lipman et al. 2023; Esser et al. 2024): alpha = 1 - t, sigma = t, velocity
    u = z - x_0. f = -1 / (1 - t), g^2 = 2 t / (1 - t), lambda = log((1 - t) / t),
    t(lambda) = 1 / (1 + e^lambda). Endpoint conventions: module docstring."""

    def __init__(self, T: float = 1.0 - 1e-3, t_min: float = 1e-3):
        if not 0 <= t_min < T <= 1:
            raise ValueError(f"RectifiedFlow: need 0 <= t_min < T <= 1, got t_min={t_min}, T={T}")
        self.T, self.t_min = float(T), float(t_min)
        self._check()
        self.prior_std = float(T)

    def alpha(self, t):
        return 1.0 - _t(t)

    def log_alpha(self, t):
        return torch.log1p(-_t(t))

    def sigma(self, t):
        return _t(t).clone()

    def lam(self, t):
        t = _t(t)
        return torch.log1p(-t) - torch.log(t)

    def t_of_lam(self, lam):
        return torch.sigmoid(-_t(lam))

    def d_marginal(self, t):
        t = _t(t)
        return -torch.ones_like(t), torch.ones_like(t)

    def f(self, t):
        return -1.0 / (1.0 - _t(t))

    def g2(self, t):
        t = _t(t)
        return 2.0 * t / (1.0 - t)


class CosinePath(GaussianPath):
    """alpha = cos(pi t / 2), sigma = sin(pi t / 2) (variance preserving; Nichol & Dhariwal 2021's
    cosine schedule without offset, the "cosine" affine path of flow_matching). f = -(pi/2)
    tan(pi t/2), g^2 = pi tan(pi t/2), lambda = -log tan(pi t / 2), t(lambda) = (2/pi) atan(e^-lambda)."""

    def __init__(self, T: float = 1.0 - 1e-3, t_min: float = 1e-3):
        if not 0 <= t_min < T <= 1:
            raise ValueError(f"CosinePath: need 0 <= t_min < T <= 1, got t_min={t_min}, T={T}")
        self.T, self.t_min = float(T), float(t_min)
        self._check()
        self._set_prior()

    def alpha(self, t):
        return torch.cos(0.5 * math.pi * _t(t))

    def log_alpha(self, t):
        return torch.log(self.alpha(t))

    def sigma(self, t):
        return torch.sin(0.5 * math.pi * _t(t))

    def lam(self, t):
        return -torch.log(torch.tan(0.5 * math.pi * _t(t)))

    def t_of_lam(self, lam):
        return torch.atan(torch.exp(-_t(lam))) * (2.0 / math.pi)

    def d_marginal(self, t):
        t = _t(t)
        return -0.5 * math.pi * self.sigma(t), 0.5 * math.pi * self.alpha(t)

    def f(self, t):
        return -0.5 * math.pi * torch.tan(0.5 * math.pi * _t(t))

    def g2(self, t):
        return math.pi * torch.tan(0.5 * math.pi * _t(t))


def dynamic_shift(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5,
                  max_shift: float = 1.15, exponential: bool = True) -> float:
    """The shift s of diffusers' dynamic shifting by resolution (Flux, SD3.5): mu is linear in
    the number of latent tokens, mu = base_shift + (max_shift - base_shift) (n - base_seq_len) /
    (max_seq_len - base_seq_len), and the time shift e^mu / (e^mu + (1/t - 1)) ("exponential") or
    mu / (mu + (1/t - 1)) ("linear") is the SD3 shift with s = e^mu or s = mu."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    mu = base_shift + m * (image_seq_len - base_seq_len)
    return math.exp(mu) if exponential else mu


class TimeShift(Process):
    """``process`` run on shifted time: at time t this is ``process`` at t' = phi(t),

        phi(t) = s t / (1 + (s - 1) t),   phi^-1(u) = u / (s - (s - 1) u),   phi' = s / (1 + (s - 1) t)^2

    (Esser et al. 2024, SD3, Sec. 5.3.2; s > 1 spends more time at high noise). The marginals
    are ``process``'s, visited at other times: f and g^2 scale by phi', lambda(t) = lambda_p(phi(t)).
    T and t_min are phi^-1 of ``process``'s, so the log-SNR range is the same. The shift acts
    on times in [0, 1]: ``process.T`` must be <= 1. For resolution-dependent shifting, use
    ``TimeShift(process, dynamic_shift(image_seq_len, ...))``.
    """

    def __init__(self, process: Process, shift: float):
        if not isinstance(process, Process):
            raise TypeError(f"TimeShift: process must be a Process, got {type(process).__name__}")
        if not shift > 0:
            raise ValueError(f"TimeShift: shift must be > 0, got {shift}")
        if process.T > 1:
            raise ValueError(f"TimeShift: the shift acts on times in [0, 1]; {process!r} has T = {process.T}")
        self.process, self.shift = process, float(shift)
        self.T = float(self.inverse(torch.tensor(process.T, dtype=torch.float64)))
        self.t_min = float(self.inverse(torch.tensor(process.t_min, dtype=torch.float64)))
        self.prior_std = process.prior_std
        self._check()

    def forward(self, t):
        """phi(t): the time of ``process``."""
        t = _t(t)
        return self.shift * t / (1.0 + (self.shift - 1.0) * t)

    def inverse(self, u):
        u = _t(u)
        return u / (self.shift - (self.shift - 1.0) * u)

    def _dphi(self, t):
        t = _t(t)
        return self.shift / (1.0 + (self.shift - 1.0) * t) ** 2

    def alpha(self, t):
        return self.process.alpha(self.forward(t))

    def log_alpha(self, t):
        return self.process.log_alpha(self.forward(t))

    def sigma(self, t):
        return self.process.sigma(self.forward(t))

    def marginal(self, t):
        return self.process.marginal(self.forward(t))

    def lam(self, t):
        return self.process.lam(self.forward(t))

    def t_of_lam(self, lam):
        return self.inverse(self.process.t_of_lam(lam))

    def d_marginal(self, t):
        da, ds = self.process.d_marginal(self.forward(t))
        d = self._dphi(t)
        return da * d, ds * d

    def f(self, t):
        return self.process.f(self.forward(t)) * self._dphi(t)

    def g2(self, t):
        return self.process.g2(self.forward(t)) * self._dphi(t)

    def langevin_alpha(self, t, dt):
        return self.process.langevin_alpha(self.forward(t), _t(dt) * self._dphi(t))

    def reverse(self, score, diffusion=None) -> ReverseSDE:
        """The shifted process's reverse SDE (with diffusion g~, see :class:`GaussianPath`)."""
        return VelocitySDE(self, score, diffusion)

    def probability_flow(self, score) -> ProbabilityFlowODE:
        return VelocityODE(self, score)

    def __repr__(self):
        return f"TimeShift({self.process!r}, shift={self.shift})"
