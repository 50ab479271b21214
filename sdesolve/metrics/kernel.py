"""Kernel two-sample distances: unbiased MMD^2 (Gretton et al. 2012) and KID (Binkowski et al. 2018).

For samples X = {x_i} (n of them) and Y = {y_j} (m) and a kernel k, the unbiased estimator of
MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y) is

    MMD^2_u = sum_{i != i'} k(x_i, x_i') / (n (n - 1)) + sum_{j != j'} k(y_j, y_j') / (m (m - 1))
              - 2 sum_{i, j} k(x_i, y_j) / (n m),

which can be negative; its mean is exactly MMD^2, zero when X and Y come from the same law.

KID is MMD^2_u with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3 on d-dimensional
features, averaged over random subsets of ``subset_size`` drawn without replacement from each set.

All computations are in float64. Kernels are functions ``k(X (n, d), Y (m, d)) -> (n, m)``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

__all__ = [
    "mmd",
    "kid",
    "mmd2_unbiased",
    "rbf_kernel",
    "polynomial_kernel",
    "linear_kernel",
    "median_bandwidth",
    "energy_distance",
]

Kernel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _features(a, name: str) -> torch.Tensor:
    x = a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of features (N, d), got shape {tuple(x.shape)}")
    return x.detach().to(torch.float64)


def linear_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x, y) = x.y"""
    return x @ y.T


def polynomial_kernel(degree: int = 3, coef0: float = 1.0, gamma: float | None = None) -> Kernel:
    """k(x, y) = (gamma x.y + coef0)^degree; ``gamma=None`` means 1 / d (the KID kernel by default)."""

    def k(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        g = 1.0 / x.shape[1] if gamma is None else gamma
        return (g * (x @ y.T) + coef0) ** degree

    return k


def _sq_dists(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    d = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    return d.clamp_min_(0.0)


def rbf_kernel(bandwidth: float | Sequence[float]) -> Kernel:
    """Gaussian kernel k(x, y) = exp(-||x - y||^2 / (2 h^2)); several bandwidths h give the mean
    of their kernels (still a characteristic kernel)."""
    hs = [float(bandwidth)] if np.isscalar(bandwidth) else [float(h) for h in bandwidth]
    if not hs or any(not h > 0 for h in hs):
        raise ValueError(f"rbf_kernel: bandwidths must be positive, got {bandwidth!r}")

    def k(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d2 = _sq_dists(x, y)
        return sum(torch.exp(-d2 / (2.0 * h * h)) for h in hs) / len(hs)

    return k


def median_bandwidth(x, y, max_points: int = 2000) -> float:
    """Median heuristic: the median of the pairwise distances ||z_i - z_j||, i < j, over the
    pooled sample Z = X u Y (Gretton et al. 2012); the usual median (mean of the two middle values
    for an even count). Beyond ``max_points`` pooled points, an evenly spaced subset of that many
    rows of Z is used, which keeps the cost at O(max_points^2).
    """
    z = torch.cat([_features(x, "x"), _features(y, "y")])
    if len(z) > max_points:
        z = z[torch.linspace(0, len(z) - 1, max_points).round().long().to(z.device)]
    iu = torch.triu_indices(len(z), len(z), offset=1, device=z.device)
    d = _sq_dists(z, z)[iu[0], iu[1]].sqrt()
    h = float(np.median(d.cpu().numpy()))
    if not h > 0:
        raise ValueError("median_bandwidth: the median pairwise distance is 0 (mostly repeated points)")
    return h


def mmd2_unbiased(kxx: torch.Tensor, kyy: torch.Tensor, kxy: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 from Gram matrices K_XX (n, n), K_YY (m, m), K_XY (n, m); n, m >= 2."""
    n, m = kxx.shape[0], kyy.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"mmd2_unbiased needs at least 2 samples on each side, got {n} and {m}")
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return sxx + syy - 2.0 * kxy.mean()


def mmd(x, y, bandwidth: float | Sequence[float] | None = None, kernel: Kernel | None = None) -> float:
    """Unbiased MMD^2 between samples x (n, d) and y (m, d).

    The kernel is ``kernel`` if given, else the Gaussian RBF :func:`rbf_kernel` with ``bandwidth``:
    a float, a list of floats (mean of kernels), or ``None`` for the median heuristic
    (:func:`median_bandwidth`). Passing both ``bandwidth`` and ``kernel`` is an error.
    """
    x, y = _features(x, "x"), _features(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"mmd: feature dimensions differ, {x.shape[1]} and {y.shape[1]}")
    if kernel is not None and bandwidth is not None:
        raise ValueError("mmd: pass either a bandwidth (RBF kernel) or a kernel, not both")
    if kernel is None:
        kernel = rbf_kernel(median_bandwidth(x, y) if bandwidth is None else bandwidth)
    return mmd2_unbiased(kernel(x, x), kernel(y, y), kernel(x, y)).item()


def kid(
    feat1, feat2, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance: mean and standard deviation over ``subsets`` subsets of MMD^2_u
    with k(x, y) = (x.y / d + 1)^3 (Binkowski et al. 2018).

    Each subset draws ``subset_size`` rows without replacement from each feature set, using a
    generator seeded with ``seed``. The standard deviation is that of the per-subset estimates
    (ddof = 1; 0 for a single subset).
    """
    x, y = _features(feat1, "feat1"), _features(feat2, "feat2")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"kid: feature dimensions differ, {x.shape[1]} and {y.shape[1]}")
    if subset_size < 2 or subset_size > min(len(x), len(y)):
        raise ValueError(
            f"kid: subset_size={subset_size} must be in [2, min(len(feat1), len(feat2))] = [2, {min(len(x), len(y))}]"
        )
    if subsets < 1:
        raise ValueError(f"kid: subsets must be >= 1, got {subsets}")
    k = polynomial_kernel(degree=3, coef0=1.0, gamma=None)
    g = torch.Generator().manual_seed(seed)
    vals = torch.empty(subsets, dtype=torch.float64)
    for s in range(subsets):
        xs = x[torch.randperm(len(x), generator=g)[:subset_size].to(x.device)]
        ys = y[torch.randperm(len(y), generator=g)[:subset_size].to(y.device)]
        vals[s] = mmd2_unbiased(k(xs, xs), k(ys, ys), k(xs, ys))
    std = vals.std().item() if subsets > 1 else 0.0
    return vals.mean().item(), std


def energy_distance(x, y) -> float:
    """Energy distance 2 E||X - Y|| - E||X - X'|| - E||Y - Y'|| (Szekely & Rizzo 2013) between
    samples x (n, d) and y (m, d), with the within-sample means over distinct pairs (unbiased;
    it is :func:`mmd2_unbiased` with the "kernel" -||x - y||). Zero in expectation for equal laws."""
    x, y = _features(x, "x"), _features(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"energy_distance: feature dimensions differ, {x.shape[1]} and {y.shape[1]}")

    def k(a, b):
        return -_sq_dists(a, b).sqrt()

    return mmd2_unbiased(k(x, x), k(y, y), k(x, y)).item()
