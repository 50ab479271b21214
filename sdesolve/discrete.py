"""A variance-preserving process defined by the cumulative products of a discrete DDPM schedule.

A model trained on N discrete steps (DDPM, Ho et al. 2020; diffusers' schedulers) knows
``alphas_cumprod[k]`` = alpha_k^2 at integer timesteps k = 0..N-1. ``DiscreteVP`` places timestep
k at time t_k = k / (N - 1) (so ``labels.discrete(N)`` gives the model its integer timestep back,
and t = 1 is the last training step) and matches those values exactly there:

    lambda(t_k) = log(alpha_k / sigma_k) = (log a_k - log(1 - a_k)) / 2,   a = alphas_cumprod,

interpolating lambda piecewise-linearly in t between the knots (and extrapolating the end
segments linearly outside [0, 1]). Being variance preserving,

    alpha(t)^2 = sigmoid(2 lambda),   sigma(t)^2 = sigmoid(-2 lambda),
    f(t) = d log alpha / dt = sigma^2 dlambda/dt,   g(t)^2 = -2 f(t)

(so d sigma^2/dt = 2 f sigma^2 + g^2 holds and the marginals are the ones above); f and g are
piecewise continuous, with jumps at the knots. ``t_of_lam`` is the exact inverse of ``lam``.
T = 1 (timestep N - 1) and t_min = 0 (timestep 0, where sigma^2 = 1 - a_0 > 0).
"""
from __future__ import annotations

import torch

from .processes import Process, _t

__all__ = ["DiscreteVP"]


class DiscreteVP(Process):
    """VP process through the values ``alphas_cumprod`` (N,) at timesteps 0..N-1 (see module)."""

    prior_std = 1.0

    def __init__(self, alphas_cumprod, t_min: float = 0.0):
        a = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64).reshape(-1)
        if a.numel() < 2:
            raise ValueError(f"DiscreteVP needs at least 2 values of alphas_cumprod, got {a.numel()}")
        if not torch.isfinite(a).all() or (a <= 0).any() or (a >= 1).any():
            raise ValueError("DiscreteVP: alphas_cumprod must lie strictly between 0 and 1 "
                             f"(got min {float(a.min())}, max {float(a.max())})")
        lam = 0.5 * (torch.log(a) - torch.log1p(-a))
        bad = torch.nonzero(lam[1:] >= lam[:-1]).flatten()
        if bad.numel():
            raise ValueError(f"DiscreteVP: alphas_cumprod must be strictly decreasing; it is not after timestep "
                             f"{bad[:5].tolist()}")
        self.alphas_cumprod = a
        self.N = a.numel()
        self._lam = lam
        self._slope = (lam[1:] - lam[:-1]) * (self.N - 1)  # dlambda/dt on each segment
        self.T, self.t_min = 1.0, float(t_min)
        self._check()

    @classmethod
    def from_betas(cls, betas, **kw) -> "DiscreteVP":
        """From the per-step betas: alphas_cumprod = cumprod(1 - betas), in float64."""
        b = torch.as_tensor(betas, dtype=torch.float64)
        return cls(torch.cumprod(1.0 - b, 0), **kw)

    @classmethod
    def from_scheduler(cls, scheduler, **kw) -> "DiscreteVP":
        """From a diffusers scheduler's ``alphas_cumprod`` (exactly the values it steps with)."""
        return cls(scheduler.alphas_cumprod, **kw)

    def __repr__(self) -> str:
        return f"DiscreteVP(N={self.N}, t_min={self.t_min})"

    # --- time <-> timestep ------------------------------------------------------------------------
    def timestep(self, t) -> torch.Tensor:
        """The (fractional) training timestep of time t: t (N - 1)."""
        return _t(t) * (self.N - 1)

    def time(self, timestep) -> torch.Tensor:
        """The time of a training timestep: timestep / (N - 1)."""
        return _t(timestep) / (self.N - 1)

    # --- the marginal -----------------------------------------------------------------------------
    def _table(self, name: str, device) -> torch.Tensor:
        """A knot table on ``device``, copied there once (no host-to-device copy per step)."""
        cache = self.__dict__.setdefault("_on_device", {})
        key = (name, device)
        if key not in cache:
            cache[key] = getattr(self, name).to(device)
        return cache[key]

    def _segment(self, t: torch.Tensor):
        u = t * (self.N - 1)
        k = torch.clamp(torch.floor(u), 0, self.N - 2).to(torch.int64)
        return k, u - k.to(u.dtype)

    def lam(self, t) -> torch.Tensor:
        t = _t(t)
        lam = self._table("_lam", t.device)
        k, w = self._segment(t)
        return lam[k] + w * (lam[k + 1] - lam[k])

    def t_of_lam(self, lam) -> torch.Tensor:
        lam = _t(lam)
        table = self._table("_lam", lam.device)
        # -lambda is increasing in the knot index: the segment [k, k+1] holds -lambda's position
        k = torch.searchsorted(-table, (-lam).contiguous(), right=True) - 1
        k = torch.clamp(k, 0, self.N - 2)
        w = (lam - table[k]) / (table[k + 1] - table[k])
        return (k.to(lam.dtype) + w) / (self.N - 1)

    def log_alpha(self, t) -> torch.Tensor:
        return -0.5 * torch.nn.functional.softplus(-2.0 * self.lam(t))

    def sigma(self, t) -> torch.Tensor:
        return torch.exp(-0.5 * torch.nn.functional.softplus(2.0 * self.lam(t)))

    # --- the forward SDE ----------------------------------------------------------------------------
    def f(self, t) -> torch.Tensor:
        t = _t(t)
        k, _ = self._segment(t)
        return self.sigma(t) ** 2 * self._table("_slope", t.device)[k]

    def g2(self, t) -> torch.Tensor:
        return -2.0 * self.f(t)

    def langevin_alpha(self, t, dt):
        """1 - g^2 |dt|: about 1 - beta_k over one training step (dt = 1 / (N - 1)), as for VPSDE."""
        return 1.0 - self.g2(t) * _t(dt).abs()
