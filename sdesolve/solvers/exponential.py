"""The shared pieces of the diffusion solvers: exponential-integrator steps in the half log-SNR.

For a process with Gaussian marginals x_t = alpha_t x_0 + sigma_t z (VP, sub-VP, VE, EDM, a
discrete VP schedule, any Gaussian path), lambda_t = log(alpha_t / sigma_t). One step from t
(noisier) to s (cleaner), h = lambda_s - lambda_t > 0 (Lu et al. 2022a, 2022b):

    data_step   x_s = (sigma_s / sigma_t) x + alpha_s (1 - e^{-h}) D         (DPM-Solver++-1, DDIM)
    noise_step  x_s = (alpha_s / alpha_t) x - sigma_s (e^h - 1) eps           (DPM-Solver-1, DDIM)
    ancestral   x_s = c_x x + c_D D + std z, the forward posterior q(x_s | x_t, x_0 = D) with its
                standard deviation scaled by eta and the rest of the variance sent along the
                predicted noise (DDIM's Eq. 12 with eta; eta = 1 is DDPM's ancestral step):
                std = eta sigma_s sqrt(1 - e^{-2h}),  c_x = sqrt(sigma_s^2 - std^2) / sigma_t,
                c_D = alpha_s - c_x alpha_t

All coefficients are float64 tensors of shape (B,) (per-sample times), or 0-d where the batch
shares its time (:func:`sdesolve.tensors.shared_time`); a step into sigma_s = 0
(lambda_s = inf) is x_s = alpha_s D in the data form.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..tensors import per_sample, shared_time

__all__ = ["LogSNRPoint", "point", "data_step", "noise_step", "ancestral", "data_coefficients"]


@dataclass(frozen=True)
class LogSNRPoint:
    """alpha, sigma, lambda = log(alpha / sigma) at per-sample times t: float64 tensors (B,), or
    0-d where all samples share the time (:func:`sdesolve.tensors.shared_time`; ``t`` is then
    still the (B,) times the point was made from)."""

    t: torch.Tensor
    alpha: torch.Tensor
    sigma: torch.Tensor
    lam: torch.Tensor


def point(process, t: torch.Tensor) -> LogSNRPoint:
    """alpha(t), sigma(t) and lambda(t) of ``process`` at per-sample times t (B,), float64."""
    t = t.to(torch.float64)
    tc = shared_time(t)
    return LogSNRPoint(t, torch.exp(process.log_alpha(tc)), process.sigma(tc), process.lam(tc))


def data_coefficients(a: LogSNRPoint, b: LogSNRPoint) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma_s / sigma_t, alpha_s (1 - e^{-h})): the coefficients of x and D in ``data_step``."""
    return b.sigma / a.sigma, -b.alpha * torch.expm1(-(b.lam - a.lam))


def data_step(a: LogSNRPoint, b: LogSNRPoint, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """First-order step in the data form: x_s = (sigma_s / sigma_t) x + alpha_s (1 - e^{-h}) D."""
    cx, cd = data_coefficients(a, b)
    return per_sample(cx, x) * x + per_sample(cd, x) * d


def noise_step(a: LogSNRPoint, b: LogSNRPoint, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """First-order step in the noise form: x_s = (alpha_s / alpha_t) x - sigma_s (e^h - 1) eps;
    where sigma_s = 0 the noise coefficient is written alpha_s sigma_t / alpha_t (its limit)."""
    h = b.lam - a.lam
    ce = torch.where(b.sigma == 0, b.alpha * a.sigma / a.alpha, b.sigma * torch.expm1(h))
    return per_sample(b.alpha / a.alpha, x) * x - per_sample(ce, x) * e


def ancestral(a: LogSNRPoint, b: LogSNRPoint, eta: float | torch.Tensor = 1.0):
    """(c_x, c_D, std) of the ancestral step x_s = c_x x + c_D D + std z (module docstring),
    written without cancellation for small h."""
    h = b.lam - a.lam
    one_m = -torch.expm1(-2.0 * h)                            # 1 - e^{-2h}
    std = eta * b.sigma * torch.sqrt(one_m)
    keep = torch.sqrt((1.0 - eta**2 * one_m).clamp_min(0.0))  # sqrt(sigma_s^2 - std^2) / sigma_s
    cx = b.sigma / a.sigma * keep
    # alpha_s - alpha_t c_x = alpha_s (1 - e^{-h} keep), = alpha_s one_m (1 + eta^2 e^{-2h}) / (1 + e^{-h} keep)
    cd = b.alpha * one_m * (1.0 + eta**2 * torch.exp(-2.0 * h)) / (1.0 + torch.exp(-h) * keep)
    return cx, cd, std
