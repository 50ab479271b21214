"""Fréchet distance between Gaussians fitted to features (FD; FID with Inception features).

For feature distributions summarised by their means and covariances,

    FD = ||mu_1 - mu_2||^2 + tr(C_1 + C_2 - 2 (C_1^{1/2} C_2 C_1^{1/2})^{1/2}),

the squared 2-Wasserstein distance between N(mu_1, C_1) and N(mu_2, C_2) (Dowson & Landau 1982;
used as FID by Heusel et al. 2017). ``tr((C_1^{1/2} C_2 C_1^{1/2})^{1/2})`` is computed from the
eigenvalues of the symmetric positive semi-definite matrix ``C_1^{1/2} C_2 C_1^{1/2}``, so only
symmetric eigendecompositions (``eigh``) are used, in float64; eigenvalues that rounding pushes
slightly below zero are clamped to zero. No non-symmetric matrix square root is ever taken.

Statistics are accumulated in float64 by :class:`GaussianStats`, which streams batches, merges
exactly (Chan, Golub & LeVeque 1979 pairwise update), and sums over ``torch.distributed`` ranks.
:class:`FeatureStats` pushes images through a feature extractor into such an accumulator.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch

__all__ = ["GaussianStats", "FeatureStats", "frechet_distance", "fd_from_features"]


def _as_float64(a) -> torch.Tensor:
    if not isinstance(a, torch.Tensor):
        a = torch.as_tensor(np.asarray(a, dtype=np.float64))
    return a.detach().to("cpu", torch.float64)


def _psd_sqrt(c: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigh, clamped)."""
    w, v = torch.linalg.eigh(c)
    return (v * w.clamp_min(0.0).sqrt()) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Fréchet distance between N(mu1, cov1) and N(mu2, cov2), in float64 on the CPU.

    ``mu*`` are (d,) and ``cov*`` (d, d) symmetric positive semi-definite (tensors or numpy
    arrays). The trace term uses ``tr((C1^{1/2} C2 C1^{1/2})^{1/2}) = sum_i sqrt(lambda_i)`` over
    the eigenvalues of the symmetrised ``C1^{1/2} C2 C1^{1/2}``, negative rounding residues clamped
    to zero. The distance is non-negative in exact arithmetic; a rounding residue below zero is
    returned as 0.
    """
    mu1, mu2 = _as_float64(mu1), _as_float64(mu2)
    cov1, cov2 = _as_float64(cov1), _as_float64(cov2)
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(
            f"frechet_distance: means must be 1-D of equal length, got {tuple(mu1.shape)} and {tuple(mu2.shape)}"
        )
    d = mu1.shape[0]
    for name, c in (("cov1", cov1), ("cov2", cov2)):
        if c.shape != (d, d):
            raise ValueError(f"frechet_distance: {name} must have shape ({d}, {d}), got {tuple(c.shape)}")
        if not torch.isfinite(c).all():
            raise ValueError(f"frechet_distance: {name} has non-finite entries")
    if not (torch.isfinite(mu1).all() and torch.isfinite(mu2).all()):
        raise ValueError("frechet_distance: a mean has non-finite entries")
    cov1 = 0.5 * (cov1 + cov1.T)
    cov2 = 0.5 * (cov2 + cov2.T)
    s1 = _psd_sqrt(cov1)
    m = s1 @ cov2 @ s1
    lam = torch.linalg.eigvalsh(0.5 * (m + m.T))
    tr_sqrt = lam.clamp_min(0.0).sqrt().sum()
    diff = mu1 - mu2
    fd = (diff @ diff + cov1.trace() + cov2.trace() - 2.0 * tr_sqrt).item()
    return max(fd, 0.0)


class GaussianStats:
    """Streaming float64 mean and covariance of feature vectors, mergeable across processes.

    Holds ``n``, ``mean`` (d,) and ``m2`` (d, d) = sum_i (x_i - mean)(x_i - mean)^T. A batch is
    folded in by the pairwise update of Chan, Golub & LeVeque (1979): for parts a, b with
    delta = mean_b - mean_a and n = n_a + n_b,

        mean = mean_a + delta n_b / n,   m2 = m2_a + m2_b + delta delta^T n_a n_b / n,

    which is exact and avoids the cancellation of raw sums of outer products. The raw sufficient
    statistics are available as :attr:`sum` = n mean and :attr:`sum_outer` = m2 + n mean mean^T.
    ``cov`` is the unbiased covariance m2 / (n - 1).

    Tensors live on the device of the first batch (or ``device``), always in float64.
    """

    def __init__(self, dim: int | None = None, device: torch.device | str | None = None):
        self.n = 0
        self._dim = dim
        self._device = torch.device(device) if device is not None else None
        self._mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None
        if dim is not None:
            self._allocate(dim, self._device or torch.device("cpu"))

    def _allocate(self, dim: int, device: torch.device) -> None:
        self._dim, self._device = dim, device
        self._mean = torch.zeros(dim, dtype=torch.float64, device=device)
        self._m2 = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    @property
    def dim(self) -> int | None:
        return self._dim

    @property
    def mean(self) -> torch.Tensor:
        self._require(1, "mean")
        return self._mean

    @property
    def m2(self) -> torch.Tensor:
        """Centred sum of outer products, sum_i (x_i - mean)(x_i - mean)^T."""
        self._require(0, "m2")
        return self._m2

    @property
    def cov(self) -> torch.Tensor:
        """Unbiased covariance m2 / (n - 1)."""
        self._require(2, "cov")
        return self._m2 / (self.n - 1)

    @property
    def sum(self) -> torch.Tensor:
        self._require(0, "sum")
        return self._mean * self.n

    @property
    def sum_outer(self) -> torch.Tensor:
        """Raw sum of outer products sum_i x_i x_i^T."""
        self._require(0, "sum_outer")
        return self._m2 + self.n * torch.outer(self._mean, self._mean)

    def _require(self, n_min: int, what: str) -> None:
        if self._mean is None:
            raise ValueError(f"GaussianStats.{what}: no features have been added yet")
        if self.n < n_min:
            raise ValueError(f"GaussianStats.{what} needs at least {n_min} samples, has {self.n}")

    def update(self, features) -> "GaussianStats":
        """Fold in a batch of feature vectors of shape (N, d)."""
        x = features if isinstance(features, torch.Tensor) else torch.as_tensor(np.asarray(features))
        if x.ndim != 2:
            raise ValueError(f"GaussianStats.update expects features of shape (N, d), got {tuple(x.shape)}")
        if self._mean is None:
            self._allocate(x.shape[1], self._device or x.device)
        if x.shape[1] != self._dim:
            raise ValueError(f"GaussianStats.update: feature dimension {x.shape[1]} != accumulated {self._dim}")
        if x.shape[0] == 0:
            return self
        x = x.detach().to(self._device, torch.float64)
        if not torch.isfinite(x).all():
            bad = (~torch.isfinite(x)).any(dim=1).nonzero().flatten().tolist()
            raise ValueError(f"GaussianStats.update: non-finite features in rows {bad[:10]}")
        nb = x.shape[0]
        mean_b = x.mean(dim=0)
        xc = x - mean_b
        self._combine(nb, mean_b, xc.T @ xc)
        return self

    def _combine(self, nb: int, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        na = self.n
        n = na + nb
        if n == 0:
            return
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (nb / n)
        self._m2 = self._m2 + m2_b + torch.outer(delta, delta) * (na * nb / n)
        self.n = n

    def merge(self, other: "GaussianStats") -> "GaussianStats":
        """Fold another accumulator's statistics into this one (exact; returns self)."""
        if other._mean is None:
            return self
        if self._mean is None:
            self._allocate(other._dim, self._device or other._device)
        if other._dim != self._dim:
            raise ValueError(f"GaussianStats.merge: dimension {other._dim} != {self._dim}")
        self._combine(other.n, other._mean.to(self._device), other._m2.to(self._device))
        return self

    def all_reduce(self, group=None) -> "GaussianStats":
        """Replace the statistics by those of the union over all ``torch.distributed`` ranks.

        A no-op unless ``torch.distributed`` is initialised. Every rank must have called
        :meth:`update` at least once (so that the dimension is known). Three sum-reductions:
        n, then n_r mean_r (giving the global mean), then m2_r + n_r (mean_r - mean)(mean_r - mean)^T,
        whose sum over ranks r is the global m2. With the NCCL backend the reductions run on the
        current CUDA device.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        self._require(0, "all_reduce")
        comm = self._device
        if dist.get_backend(group) == "nccl" and comm.type != "cuda":
            comm = torch.device("cuda", torch.cuda.current_device())
        n = torch.tensor([float(self.n)], dtype=torch.float64, device=comm)
        dist.all_reduce(n, group=group)
        n_tot = float(n.item())
        if n_tot == 0:
            return self
        mean_r = self._mean.to(comm)
        s = mean_r * self.n
        dist.all_reduce(s, group=group)
        mean = s / n_tot
        d = mean_r - mean
        m2 = self._m2.to(comm) + self.n * torch.outer(d, d)
        dist.all_reduce(m2, group=group)
        self.n = int(round(n_tot))
        self._mean, self._m2 = mean.to(self._device), m2.to(self._device)
        return self

    def frechet_distance(self, other: "GaussianStats | FeatureStats") -> float:
        """Fréchet distance between the Gaussians fitted to ``self`` and ``other``."""
        other = other.stats if isinstance(other, FeatureStats) else other
        return frechet_distance(self.mean, self.cov, other.mean, other.cov)

    def save(self, path: str | os.PathLike) -> None:
        """Write ``mu``, ``sigma`` (unbiased covariance) and ``n`` to an .npz file."""
        np.savez(path, mu=self.mean.cpu().numpy(), sigma=self.cov.cpu().numpy(), n=np.int64(self.n))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "GaussianStats":
        """Read statistics written by :meth:`save` (keys ``mu``, ``sigma``, ``n``)."""
        with np.load(path, allow_pickle=False) as f:
            missing = {"mu", "sigma", "n"} - set(f.files)
            if missing:
                raise ValueError(f"GaussianStats.load: {os.fspath(path)!r} lacks keys {sorted(missing)}")
            mu, sigma, n = f["mu"], f["sigma"], int(f["n"])
        d = mu.shape[0]
        if mu.ndim != 1 or sigma.shape != (d, d) or n < 2:
            raise ValueError(
                f"GaussianStats.load: {os.fspath(path)!r} has mu {mu.shape}, sigma {sigma.shape}, n={n}; "
                "expected (d,), (d, d) and n >= 2"
            )
        st = cls(dim=d)
        st.n = n
        st._mean = torch.from_numpy(mu.astype(np.float64))
        st._m2 = torch.from_numpy(sigma.astype(np.float64)) * (n - 1)
        return st

    def __repr__(self) -> str:
        return f"GaussianStats(n={self.n}, dim={self._dim})"


def fd_from_features(feat_a, feat_b) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets of shapes (N, d), (M, d)."""
    return GaussianStats().update(feat_a).frechet_distance(GaussianStats().update(feat_b))


class FeatureStats:
    """Streams images through a feature extractor into a :class:`GaussianStats`.

    ``extractor`` maps images (B, C, H, W) in the data range [-1, 1] to features (B, d) (see
    :mod:`sdesolve.metrics.features`). :meth:`update` is an evaluation tool: it runs the extractor
    under ``torch.inference_mode`` in chunks of ``batch_size`` on the extractor's device.
    """

    def __init__(self, extractor: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 256):
        self.extractor = extractor
        self.batch_size = int(batch_size)
        self.stats = GaussianStats()

    def _device(self) -> torch.device | None:
        if isinstance(self.extractor, torch.nn.Module):
            p = next(self.extractor.parameters(), None)
            if p is not None:
                return p.device
        return None

    def update(self, images: torch.Tensor) -> "FeatureStats":
        """Extract features of a batch of images (B, C, H, W) and fold them in."""
        if images.ndim != 4:
            raise ValueError(f"FeatureStats.update expects images (B, C, H, W), got {tuple(images.shape)}")
        device = self._device()
        with torch.inference_mode():
            for chunk in images.split(self.batch_size):
                if device is not None:
                    chunk = chunk.to(device)
                self.stats.update(self.extractor(chunk))
        return self

    @property
    def n(self) -> int:
        return self.stats.n

    @property
    def mean(self) -> torch.Tensor:
        return self.stats.mean

    @property
    def cov(self) -> torch.Tensor:
        return self.stats.cov

    def merge(self, other: "FeatureStats | GaussianStats") -> "FeatureStats":
        self.stats.merge(other.stats if isinstance(other, FeatureStats) else other)
        return self

    def all_reduce(self, group=None) -> "FeatureStats":
        self.stats.all_reduce(group)
        return self

    def frechet_distance(self, other: "FeatureStats | GaussianStats") -> float:
        return self.stats.frechet_distance(other)

    def save(self, path: str | os.PathLike) -> None:
        self.stats.save(path)
