"""Sliced Wasserstein distance between two sample sets (Rabin et al. 2011; Bonneel et al. 2015).

SW_2(x, y)^2 = E_theta[ W_2(theta . x, theta . y)^2 ] over directions theta uniform on the
sphere; each 1-D W_2 between equal-size empirical measures is the RMS difference of the sorted
projections. Estimated with ``n_proj`` random directions from ``generator``.
"""
from __future__ import annotations

import torch

__all__ = ["sliced_wasserstein", "two_sample_floor"]


def _quantiles(p: torch.Tensor, n: int) -> torch.Tensor:
    """Empirical quantile functions of projections p (N, P) at n mid-point levels."""
    p, _ = torch.sort(p, dim=0)
    if p.shape[0] == n:
        return p
    q = (torch.arange(n, dtype=p.dtype, device=p.device) + 0.5) / n * p.shape[0] - 0.5
    lo = q.floor().clamp(0, p.shape[0] - 1).long()
    hi = (lo + 1).clamp(max=p.shape[0] - 1)
    w = (q - lo.to(p.dtype)).clamp(0, 1)[:, None]
    return p[lo] * (1 - w) + p[hi] * w


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, n_proj: int = 256,
                       generator: torch.Generator | None = None) -> float:
    """SW_2 between samples x (N, ...) and y (M, ...), in float64."""
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    y = y.reshape(y.shape[0], -1).to(torch.float64).to(x.device)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"sample sets of dimension {x.shape[1]} and {y.shape[1]}")
    theta = torch.randn(x.shape[1], n_proj, generator=generator, dtype=torch.float64).to(x.device)
    theta = theta / theta.norm(dim=0, keepdim=True)
    n = max(x.shape[0], y.shape[0])
    qx, qy = _quantiles(x @ theta, n), _quantiles(y @ theta, n)
    return float(((qx - qy) ** 2).mean().sqrt())


def two_sample_floor(sampler, n: int, repeats: int = 20, n_proj: int = 256, seed: int = 0) -> float:
    """Mean SW between two independent sets of n exact samples: the floor a sampler is judged by.
    ``sampler(n, generator)`` draws n exact samples."""
    vals = []
    for r in range(repeats):
        g = torch.Generator().manual_seed(seed + 1000 * r)
        vals.append(sliced_wasserstein(sampler(n, g), sampler(n, g), n_proj, torch.Generator().manual_seed(seed + r)))
    return sum(vals) / len(vals)
