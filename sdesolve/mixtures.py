"""Gaussian mixtures: exact samples, scores and log-densities under any process at any time.

If x_0 ~ sum_k w_k N(mu_k, S_k) and x_t = alpha x_0 + sigma z, then
x_t ~ sum_k w_k N(alpha mu_k, alpha^2 S_k + sigma^2 I): with S_k = U_k diag(l_k) U_k^T the
covariance at time t is U_k diag(alpha^2 l_k + sigma^2) U_k^T, so one eigendecomposition per
component, made once, gives every density and score in closed form:

    log p_t(x) = logsumexp_k [log w_k + log N(x; alpha mu_k, C_k(t))]
    grad log p_t(x) = sum_k r_k(x) C_k(t)^{-1} (alpha mu_k - x),   r_k the posterior weights.

All arithmetic is float64; results come back in the dtype of x.
"""
from __future__ import annotations

import math

import torch

from .scores import Score

__all__ = ["GaussianMixture"]


class GaussianMixture:
    """sum_k weights[k] N(means[k], cov_k) in R^D.

    ``variances`` may be (K,) (isotropic), (K, D) (diagonal) or (K, D, D) (full, symmetric
    positive definite). ``weights`` are normalised.
    """

    def __init__(self, weights, means, variances):
        w = torch.as_tensor(weights, dtype=torch.float64)
        mu = torch.as_tensor(means, dtype=torch.float64)
        v = torch.as_tensor(variances, dtype=torch.float64)
        if mu.dim() != 2:
            raise ValueError(f"means must be (K, D), got shape {tuple(mu.shape)}")
        K, D = mu.shape
        if w.shape != (K,) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be {K} non-negative numbers with a positive sum, got {w.tolist()}")
        if v.shape == (K,):
            v = torch.diag_embed(v[:, None].expand(K, D))
        elif v.shape == (K, D):
            v = torch.diag_embed(v)
        elif v.shape != (K, D, D):
            raise ValueError(f"variances must be (K,), (K, D) or (K, D, D) with K={K}, D={D}; got {tuple(v.shape)}")
        if not torch.allclose(v, v.transpose(-1, -2)):
            raise ValueError("covariances must be symmetric")
        lam, U = torch.linalg.eigh(v)
        if (lam <= 0).any():
            raise ValueError("covariances must be positive definite")
        self.weights, self.means, self.covs = w / w.sum(), mu, v
        self._lam, self._U = lam, U
        self.K, self.D = K, D
        self._on_device = {}

    # ---------------------------------------------------------------------------------------------
    def __repr__(self):
        return f"GaussianMixture(K={self.K}, D={self.D})"

    def component(self, k: int) -> "GaussianMixture":
        return GaussianMixture(self.weights[k:k + 1], self.means[k:k + 1], self.covs[k:k + 1])

    def _tensors(self, device):
        """(U, eigenvalues, means, log weights) on ``device``, copied once per device."""
        if device not in self._on_device:
            self._on_device[device] = (self._U.to(device), self._lam.to(device), self.means.to(device),
                                       torch.log(self.weights).to(device))
        return self._on_device[device]

    def _at(self, x: torch.Tensor, t, process):
        """Whitened residuals y (B,K,D) and per-direction variances d (B,K,D) at time t."""
        B = x.shape[0]
        xf = x.reshape(B, -1).to(torch.float64)
        if xf.shape[1] != self.D:
            raise ValueError(f"samples have {xf.shape[1]} dimensions, the mixture {self.D}")
        dev = xf.device
        if t is None:
            a = torch.ones(B, dtype=torch.float64, device=dev)
            s = torch.zeros(B, dtype=torch.float64, device=dev)
        else:
            if process is None:
                raise ValueError("a time t needs the process that defines the marginal at t")
            t = torch.as_tensor(t, dtype=torch.float64, device=dev).expand(B)
            a, s = process.marginal(t)
        U, lam, mu, _ = self._tensors(dev)
        r = xf[:, None, :] - a[:, None, None] * mu[None]  # (B,K,D)
        y = torch.einsum("kdj,bkd->bkj", U, r)
        d = a[:, None, None] ** 2 * lam[None] + (s**2)[:, None, None]
        return xf, y, d, U

    def _log_components(self, y, d):
        return (self._tensors(y.device)[3][None]
                - 0.5 * (y * y / d).sum(-1) - 0.5 * torch.log(d).sum(-1) - 0.5 * self.D * math.log(2 * math.pi))

    def log_prob(self, x: torch.Tensor, t=None, process=None) -> torch.Tensor:
        """log p_t(x) per sample (the data density when t is None)."""
        _, y, d, _ = self._at(x, t, process)
        return torch.logsumexp(self._log_components(y, d), dim=1).to(x.dtype)

    def posterior(self, x: torch.Tensor, t=None, process=None) -> torch.Tensor:
        """p(component k | x_t = x), shape (B, K): the exact time-dependent classifier."""
        _, y, d, _ = self._at(x, t, process)
        return torch.softmax(self._log_components(y, d), dim=1).to(x.dtype)

    def score_at(self, x: torch.Tensor, t=None, process=None, component: int | None = None) -> torch.Tensor:
        """grad_x log p_t(x) (of one component's density if ``component`` is given)."""
        _, y, d, U = self._at(x, t, process)
        comp = -torch.einsum("kdj,bkj->bkd", U, y / d)  # (B,K,D): per-component scores
        if component is not None:
            s = comp[:, component]
        else:
            r = torch.softmax(self._log_components(y, d), dim=1)
            s = (r[..., None] * comp).sum(1)
        return s.reshape(x.shape).to(x.dtype)

    def denoised_at(self, x: torch.Tensor, t, process) -> torch.Tensor:
        """E[x_0 | x_t = x] = sum_k r_k(x) (mu_k + alpha S_k C_k^{-1} (x - alpha mu_k)): finite
        where alpha = 0 (then the data mean), unlike (x + sigma^2 score) / alpha."""
        _, y, d, U = self._at(x, t, process)
        a, _ = process.marginal(torch.as_tensor(t, dtype=torch.float64, device=y.device).expand(x.shape[0]))
        lam, mu = self._tensors(y.device)[1], self._tensors(y.device)[2]
        comp = mu[None] + torch.einsum("kdj,bkj->bkd", U, (a[:, None, None] * lam[None] / d) * y)
        r = torch.softmax(self._log_components(y, d), dim=1)
        return (r[..., None] * comp).sum(1).reshape(x.shape).to(x.dtype)

    def velocity_at(self, x: torch.Tensor, t, process) -> torch.Tensor:
        """The exact flow-matching velocity E[alpha' x_0 + sigma' z | x_t = x]
        = alpha' E[x_0|x] + sigma' (x - alpha E[x_0|x]) / sigma (sigma > 0)."""
        B = x.shape[0]
        tt = torch.as_tensor(t, dtype=torch.float64, device=x.device).expand(B)
        d0 = self.denoised_at(x.to(torch.float64), tt, process).reshape(B, -1)
        a, s = process.marginal(tt)
        da, ds = process.d_marginal(tt)
        xf = x.reshape(B, -1).to(torch.float64)
        u = (da - ds * a / s)[:, None] * d0 + (ds / s)[:, None] * xf
        return u.reshape(x.shape).to(x.dtype)

    def velocity(self, process) -> Score:
        """The exact velocity on ``process`` as a velocity :class:`Score` (``Score.from_velocity``)."""
        def fn(x, t):
            return self.velocity_at(x, t, process)
        return Score.from_velocity(fn, process, label_dtype=torch.float64, check=False)

    def score(self, process, component: int | None = None) -> Score:
        """The exact score of the mixture's marginal p_t under ``process`` as a :class:`Score`."""
        def fn(x, t):
            return self.score_at(x, t, process, component)
        return Score(fn, process)

    def sample(self, n: int, generator: torch.Generator | None = None, *, t=None, process=None,
               return_labels: bool = False, dtype=torch.float32):
        """n exact samples of the data (or of p_t under ``process`` if t is given)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.D, generator=generator, dtype=torch.float64)
        x = self.means[k] + torch.einsum("nij,nj->ni", self._U[k], self._lam[k].sqrt() * z)
        if t is not None:
            a, s = process.marginal(torch.as_tensor(t, dtype=torch.float64))
            x = a * x + s * torch.randn(n, self.D, generator=generator, dtype=torch.float64)
        x = x.to(dtype)
        return (x, k) if return_labels else x

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood of samples under the data density (nats per sample)."""
        return -self.log_prob(x).to(torch.float64).mean()
