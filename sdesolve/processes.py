"""Forward diffusion processes: linear SDEs dx = f(t) x dt + g(t) dW with Gaussian marginals.

Every process here has marginals x_t = alpha(t) x_0 + sigma(t) z (``marginal(t) -> (alpha,
sigma)``), a drift ``f(t) x``, a diffusion ``g(t)``, a prior at time ``T`` and a smallest time
``t_min`` (score_sde's "eps") below which the score is not evaluated. Time is float64.

The fast diffusion solvers work in the half log-SNR lambda(t) = log(alpha / sigma) (Lu et al.
2022, DPM-Solver), decreasing in t, with its inverse ``t_of_lam``; ``sigma_edm(t) = sigma /
alpha = exp(-lambda)`` is the noise level of the equivalent variance-exploding process (Karras
et al. 2022, EDM, Sec. 4), which is what k-diffusion calls ``sigma``.

Conventions:
  VPSDE     beta(t) = beta_min + t (beta_max - beta_min), T = 1 (Song et al. 2021, score_sde)
            log alpha = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2, sigma^2 = 1 - alpha^2
  SubVPSDE  same alpha, sigma = 1 - alpha^2, g^2 = beta(t) (1 - alpha^4)
  VESDE     sigma(t) = sigma_min (sigma_max / sigma_min)^t, alpha = 1, T = 1
  EDM       sigma(t) = t, alpha = 1, g = sqrt(2 t), T = sigma_max
"""
from __future__ import annotations

import math

import torch

from .equations import ProbabilityFlowODE, ReverseSDE, VelocitySDE
from .tensors import per_sample

__all__ = ["Process", "VPSDE", "SubVPSDE", "VESDE", "EDM"]


def _t(t, like: torch.Tensor | None = None) -> torch.Tensor:
    """Time as a float64 tensor (on ``like``'s device if given)."""
    if isinstance(t, torch.Tensor) and t.dtype == torch.float64 and (like is None or t.device == like.device):
        return t
    device = like.device if like is not None else (t.device if isinstance(t, torch.Tensor) else None)
    return torch.as_tensor(t, dtype=torch.float64, device=device)


class Process:
    """A forward SDE dx = f(t) x dt + g(t) dW with Gaussian marginals. Subclasses define
    ``log_alpha``, ``sigma``, ``f``, ``g2`` and ``t_of_lam``; everything else follows."""

    T: float = 1.0
    t_min: float = 1e-3
    prior_std: float = 1.0

    # --- the marginal x_t = alpha x_0 + sigma z -------------------------------------------
    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def alpha(self, t) -> torch.Tensor:
        return torch.exp(self.log_alpha(_t(t)))

    def marginal(self, t):
        """(alpha(t), sigma(t)): x_t = alpha x_0 + sigma z, float64, shaped like t."""
        t = _t(t)
        return self.alpha(t), self.sigma(t)

    def lam(self, t) -> torch.Tensor:
        """Half log-SNR lambda(t) = log(alpha(t) / sigma(t)), strictly decreasing in t."""
        t = _t(t)
        return self.log_alpha(t) - torch.log(self.sigma(t))

    def t_of_lam(self, lam) -> torch.Tensor:
        raise NotImplementedError

    def sigma_edm(self, t) -> torch.Tensor:
        """sigma / alpha = exp(-lambda): the noise level of the equivalent VE process."""
        return torch.exp(-self.lam(t))

    def t_of_sigma_edm(self, sigma_edm) -> torch.Tensor:
        return self.t_of_lam(-torch.log(_t(sigma_edm)))

    # --- the forward SDE --------------------------------------------------------------------
    def f(self, t: torch.Tensor) -> torch.Tensor:
        """Drift coefficient: drift(t, x) = f(t) x."""
        raise NotImplementedError

    def g2(self, t: torch.Tensor) -> torch.Tensor:
        """Squared diffusion coefficient g(t)^2."""
        raise NotImplementedError

    def d_marginal(self, t):
        """(alpha'(t), sigma'(t)) from f and g^2: alpha' = f alpha, sigma' = (g^2 + 2 f sigma^2) / (2 sigma)."""
        t = _t(t)
        a, s = self.marginal(t)
        f = self.f(t)
        return f * a, (self.g2(t) + 2.0 * f * s * s) / (2.0 * s)

    def drift(self, t, x: torch.Tensor) -> torch.Tensor:
        return per_sample(self.f(_t(t, x)), x) * x

    def diffusion(self, t) -> torch.Tensor:
        return torch.sqrt(self.g2(_t(t)))

    # --- the prior at T ---------------------------------------------------------------------
    def prior_sample(self, shape, generator: torch.Generator | None = None, device=None,
                     dtype=torch.float32) -> torch.Tensor:
        return self.prior_std * torch.randn(shape, generator=generator, device=device, dtype=dtype)

    def prior_from_normal(self, z: torch.Tensor) -> torch.Tensor:
        """A prior sample from standard normal ``z`` (how ``sample`` draws x_T from its noise)."""
        return self.prior_std * z

    def prior_logp(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x; 0, prior_std^2 I) per sample, summed over all but the batch dimension."""
        d = x[0].numel()
        sq = x.reshape(x.shape[0], -1).pow(2).sum(1)
        s2 = self.prior_std**2
        return -0.5 * d * math.log(2 * math.pi * s2) - 0.5 * sq / s2

    # --- helpers for samplers ------------------------------------------------------------------
    def langevin_alpha(self, t, dt) -> torch.Tensor:
        """The alpha_i of score_sde's Langevin corrector step size: 1 - beta_i for VP-type
        processes (the discrete DDPM beta over a step of length |dt|; taken as exp(-beta |dt|),
        equal to first order and positive on coarse grids), 1 otherwise."""
        return torch.ones_like(_t(t))

    # --- equations ----------------------------------------------------------------------------
    def reverse(self, score, diffusion=None) -> ReverseSDE:
        """dx = [f x - g^2 score(x, t)] dt + g dW_bar, integrated from T down to t_min. With
        ``diffusion`` g~ (a number >= 0 or a function of the float64 times (B,)): the SDE with the
        same marginals dx = [f x - (g^2 + g~^2) score / 2] dt + g~ dW_bar (see :mod:`sdesolve.paths`)."""
        if diffusion is None:
            return ReverseSDE(self, score)
        return VelocitySDE(self, score, diffusion)

    def probability_flow(self, score) -> ProbabilityFlowODE:
        """dx/dt = f x - g^2 score(x, t) / 2: the same marginals, deterministically."""
        return ProbabilityFlowODE(self, score)

    def _check(self):
        if not (0 <= self.t_min < self.T):
            raise ValueError(f"{type(self).__name__}: need 0 <= t_min < T, got t_min={self.t_min}, T={self.T}")

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class VPSDE(Process):
    """Variance-preserving SDE (DDPM in continuous time): dx = -beta(t) x / 2 dt + sqrt(beta(t)) dW."""

    prior_std = 1.0

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0, t_min: float = 1e-3):
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"VPSDE: need 0 <= beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max, self.T, self.t_min = float(beta_min), float(beta_max), float(T), float(t_min)
        self._check()

    def beta(self, t):
        return self.beta_min + _t(t) * (self.beta_max - self.beta_min)

    def log_alpha(self, t):
        # -t^2 (beta_max - beta_min) / 4 - t beta_min / 2, with the exact factors 1/4 and 1/2 folded
        # into the constants: the same bits as written out, in four operations instead of six
        t = _t(t)
        return (t * t) * (-0.25 * (self.beta_max - self.beta_min)) - t * (0.5 * self.beta_min)

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def lam(self, t):
        la = self.log_alpha(t)
        return la - 0.5 * torch.log(-torch.expm1(2.0 * la))

    def _t_of_log_alpha(self, la):
        db = self.beta_max - self.beta_min
        return (-self.beta_min + torch.sqrt(self.beta_min**2 - 4.0 * db * la)) / db

    def t_of_lam(self, lam):
        lam = _t(lam)
        return self._t_of_log_alpha(-0.5 * torch.nn.functional.softplus(-2.0 * lam))

    def f(self, t):
        # -beta(t) / 2, the exact factor folded in as in log_alpha
        return _t(t) * (-0.5 * (self.beta_max - self.beta_min)) + (-0.5 * self.beta_min)

    def g2(self, t):
        return self.beta(t)

    def langevin_alpha(self, t, dt):
        # exp(-beta |dt|) = 1 - beta |dt| + O(dt^2), score_sde's 1 - beta_i, but positive on any grid
        return torch.exp(-self.beta(t) * _t(dt).abs())


class SubVPSDE(VPSDE):
    """Sub-VP SDE (Song et al. 2021, Eq. 29): VP drift, g^2 = beta(t) (1 - exp(-2 int beta)),
    marginal sigma = 1 - alpha^2 (never above the VP one)."""

    def sigma(self, t):
        return -torch.expm1(2.0 * self.log_alpha(t))

    def lam(self, t):
        la = self.log_alpha(t)
        return la - torch.log(-torch.expm1(2.0 * la))

    def t_of_lam(self, lam):
        lam = _t(lam)
        # alpha / (1 - alpha^2) = e^lam  =>  alpha = 2 e^lam / (1 + sqrt(1 + 4 e^{2 lam}))
        la = math.log(2.0) + lam - torch.log1p(torch.sqrt(1.0 + 4.0 * torch.exp(2.0 * lam)))
        return self._t_of_log_alpha(la)

    def g2(self, t):
        return self.beta(t) * -torch.expm1(4.0 * self.log_alpha(t))


class VESDE(Process):
    """Variance-exploding SDE: sigma(t) = sigma_min (sigma_max / sigma_min)^t, dx = g(t) dW with
    g = sigma(t) sqrt(2 log(sigma_max / sigma_min)). As in score_sde, x_t = x_0 + sigma(t) z:
    the "data" at t = 0 already carries noise of level sigma_min."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0, t_min: float = 1e-5):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"VESDE: need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max, self.T, self.t_min = float(sigma_min), float(sigma_max), float(T), float(t_min)
        self.prior_std = self.sigma_max
        self._check()

    @property
    def _log_ratio(self):
        return math.log(self.sigma_max / self.sigma_min)

    def log_alpha(self, t):
        return torch.zeros_like(_t(t))

    def sigma(self, t):
        return self.sigma_min * torch.exp(_t(t) * self._log_ratio)

    def lam(self, t):
        return -(math.log(self.sigma_min) + _t(t) * self._log_ratio)

    def t_of_lam(self, lam):
        return (-_t(lam) - math.log(self.sigma_min)) / self._log_ratio

    def f(self, t):
        return torch.zeros_like(_t(t))

    def g2(self, t):
        return 2.0 * self._log_ratio * self.sigma(t) ** 2


class EDM(Process):
    """The EDM process of Karras et al. 2022: sigma(t) = t, alpha = 1, dx = sqrt(2 t) dW.
    Time is the noise level; T = sigma_max, t_min = sigma_min."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"EDM: need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.T, self.t_min, self.prior_std = self.sigma_max, self.sigma_min, self.sigma_max
        self._check()

    def log_alpha(self, t):
        return torch.zeros_like(_t(t))

    def sigma(self, t):
        return _t(t).clone()

    def lam(self, t):
        return -torch.log(_t(t))

    def t_of_lam(self, lam):
        return torch.exp(-_t(lam))

    def f(self, t):
        return torch.zeros_like(_t(t))

    def g2(self, t):
        return 2.0 * _t(t)
