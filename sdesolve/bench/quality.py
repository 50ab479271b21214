"""How a benchmark judges samples: metric objects that stream batches and reduce over ranks.

A quality measure has ``primary`` (the key of its headline figure, lower is better), ``label``
(words for tables and plots) and ``accumulator()``, a fresh per-row collector with
``update(x)`` (a batch of this rank's samples, in data space) and ``result()`` (collective over
the ranks of a ``torchrun`` job: every rank calls it and gets the same dict). ``floor(n)`` gives
the same figures for n samples of real or exact data: what a perfect sampler reaches at that
sample size.

* :class:`FrechetQuality`: Fréchet distances in the features of frozen networks (the digits
  classifier for 8x8 images, the MNIST classifier for 28x28, Inception for FID) against Gaussian
  statistics of held-out real data, computed once and cached (:func:`reference_stats`). Images
  are mapped from the data range to [-1, 1], the extractors' input range. Per-rank statistics
  are merged exactly with :meth:`GaussianStats.all_reduce`.
* :class:`MixtureQuality`: for a Gaussian mixture with exact density, the sliced Wasserstein-2
  distance to exact samples of p_{t_min} (fixed reference set and directions), the exact
  negative log-likelihood -log p_{t_min}(x) averaged over the samples, and the total variation
  between the samples' component proportions (most probable component) and the weights.
  Samples are gathered in global-index order, so the figures of a sharded run are those of one
  process.

Feature extraction and the metrics are evaluation code: they run under ``torch.inference_mode``.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..metrics import GaussianStats, sliced_wasserstein
from . import distributed as dist

__all__ = ["FrechetQuality", "MixtureQuality", "reference_stats", "cache_dir"]


def cache_dir() -> Path:
    """Where reference statistics are cached: ``$SDESOLVE_CACHE`` or ``~/.cache/sdesolve``."""
    return Path(os.environ.get("SDESOLVE_CACHE", Path.home() / ".cache" / "sdesolve"))


def _fingerprint(x: torch.Tensor) -> str:
    from ..train.data import fingerprint
    return fingerprint(x)


def _stats_of(extractor, images: torch.Tensor, batch_size: int = 256) -> GaussianStats:
    p = next(extractor.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    st = GaussianStats()
    with torch.inference_mode():
        for chunk in images.split(batch_size):
            st.update(extractor(chunk.to(device)))
    return st


def reference_stats(extractor, name: str, images: torch.Tensor, cache: Path | None = None) -> GaussianStats:
    """Gaussian statistics of ``extractor``'s features of ``images`` ((N, C, H, W) in [-1, 1]),
    cached under ``cache/reference_stats/<name>-<fingerprint of the images>.npz``.

    In a ``torchrun`` job rank 0 computes and writes the file while the others wait, then read it.
    Writes are atomic (a temporary file renamed into place)."""
    cache = Path(cache) if cache is not None else cache_dir()
    path = cache / "reference_stats" / f"{name}-{_fingerprint(images)}.npz"
    rank, _ = dist.rank_world()
    if rank == 0 and not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        st = _stats_of(extractor, images)
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        with open(tmp, "wb") as f:
            st.save(f)
        os.replace(tmp, path)
    dist.barrier()
    return GaussianStats.load(path)


class _FrechetAccumulator:
    def __init__(self, quality: "FrechetQuality"):
        self.q = quality
        self.stats = {name: GaussianStats() for name in quality.features}

    def update(self, x: torch.Tensor) -> None:
        images = self.q.to_unit(x)
        with torch.inference_mode():
            for name, (extractor, _) in self.q.features.items():
                p = next(extractor.parameters(), None)
                dev = p.device if p is not None else images.device
                for chunk in images.split(self.q.batch_size):
                    self.stats[name].update(extractor(chunk.to(dev)))

    def result(self) -> dict:
        out = {}
        for name, (_, ref) in self.q.features.items():
            st = self.stats[name]
            if st.dim is None:  # a rank without samples still takes part in the reduction
                st = GaussianStats(dim=ref.dim)
            st.all_reduce()
            out[name] = st.frechet_distance(ref) if st.n >= 2 else float("nan")
        return out


class FrechetQuality:
    """Fréchet distances in frozen feature spaces against held-out reference statistics.

    ``features``: {metric name: (extractor, reference GaussianStats)}; the first is the primary
    one unless ``primary`` names another. ``data_range`` is (lo, hi) of the samples in data space
    (mapped linearly to [-1, 1]). ``floor_images``: real images (same data range) not in the
    reference set, for :meth:`floor`."""

    lower_is_better = True

    def __init__(self, features: dict, data_range=(-1.0, 1.0), primary: str | None = None, label: str | None = None,
                 floor_images: torch.Tensor | None = None, batch_size: int = 256):
        if not features:
            raise ValueError("FrechetQuality needs at least one (extractor, reference statistics) pair")
        self.features = dict(features)
        self.primary = primary or next(iter(self.features))
        if self.primary not in self.features:
            raise ValueError(f"FrechetQuality: primary {self.primary!r} is not one of {list(self.features)}")
        self.label = label or f"{self.primary} (Fréchet distance to held-out data; lower is better)"
        self.data_range = (float(data_range[0]), float(data_range[1]))
        self.floor_images = floor_images
        self.batch_size = int(batch_size)

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.data_range
        return (x.float() - lo) * (2.0 / (hi - lo)) - 1.0

    def accumulator(self) -> _FrechetAccumulator:
        return _FrechetAccumulator(self)

    def floor(self, n: int, sets: int = 8, seed: int = 0) -> dict:
        """The distances to the reference of m = min(n, available) real images (``floor_images``,
        not the reference set): what a sampler of the true distribution reaches at that size. With
        m below the number available, ``sets`` random subsets (without replacement, seeded) give
        a mean and standard deviation; otherwise the one set of all of them."""
        if self.floor_images is None:
            return {}
        N = self.floor_images.shape[0]
        m = max(2, min(n, N))
        sets = sets if m < N else 1
        g = torch.Generator().manual_seed(seed)
        vals = {name: [] for name in self.features}
        for _ in range(sets):
            idx = torch.randperm(N, generator=g)[:m] if m < N else torch.arange(N)
            images = self.to_unit(self.floor_images[idx])
            for name, (extractor, ref) in self.features.items():
                vals[name].append(_stats_of(extractor, images, self.batch_size).frechet_distance(ref))
        out = {"n": int(m), "sets": sets}
        for name, v in vals.items():
            t = torch.tensor(v, dtype=torch.float64)
            out[name] = float(t.mean())
            if sets > 1:
                out[name + "_std"] = float(t.std())
        return out

    def describe(self) -> dict:
        return {"kind": "frechet", "primary": self.primary, "label": self.label, "metrics": list(self.features),
                "reference_n": {k: ref.n for k, (_, ref) in self.features.items()}}


class _MixtureAccumulator:
    def __init__(self, quality: "MixtureQuality"):
        self.q = quality
        self.parts = []

    def update(self, x: torch.Tensor) -> None:
        self.parts.append(x.detach().reshape(x.shape[0], -1).to("cpu", torch.float64))

    def result(self) -> dict:
        mine = torch.cat(self.parts) if self.parts else torch.zeros(0, self.q.mixture.D, dtype=torch.float64)
        return self.q.figures(dist.gather(mine))


class MixtureQuality:
    """Sliced Wasserstein to exact samples, exact NLL and component proportions for a
    :class:`~sdesolve.GaussianMixture` sampled through ``process`` down to ``process.t_min``.

    The reference set holds ``reference_n`` exact samples of p_{t_min} drawn with seed
    ``reference_seed``; the ``n_proj`` directions of the sliced distance are fixed by
    ``reference_seed`` too, so every row (and every run) is measured alike."""

    lower_is_better = True
    primary = "sw"
    label = "SW (sliced Wasserstein-2 to exact samples; lower is better)"

    def __init__(self, mixture, process, reference_n: int = 10000, reference_seed: int = 0, n_proj: int = 256):
        self.mixture, self.process = mixture, process
        self.reference_seed, self.n_proj = int(reference_seed), int(n_proj)
        g = torch.Generator().manual_seed(self.reference_seed)
        self.reference = self.exact(reference_n, g)

    def exact(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n exact samples of p_{t_min}, float64."""
        return self.mixture.sample(n, generator, t=self.process.t_min, process=self.process, dtype=torch.float64)

    def accumulator(self) -> _MixtureAccumulator:
        return _MixtureAccumulator(self)

    def figures(self, x: torch.Tensor) -> dict:
        """sw, nll (nats per sample), tv and the component proportions of samples x (N, D)."""
        x = x.to(torch.float64)
        if x.shape[0] == 0 or not torch.isfinite(x).all():
            return {"sw": float("nan"), "nll": float("nan"), "tv": float("nan"), "proportions": []}
        proj = torch.Generator().manual_seed(self.reference_seed + 1)
        with torch.inference_mode():
            sw = sliced_wasserstein(x, self.reference, self.n_proj, proj)
            nll = float(-self.mixture.log_prob(x, self.process.t_min, self.process).mean())
            k = self.mixture.posterior(x, self.process.t_min, self.process).argmax(1)
        props = torch.bincount(k, minlength=self.mixture.K).to(torch.float64) / x.shape[0]
        tv = float(0.5 * (props - self.mixture.weights).abs().sum())
        return {"sw": sw, "nll": nll, "tv": tv, "proportions": [round(float(p), 6) for p in props]}

    def floor(self, n: int, sets: int = 8) -> dict:
        """Mean and standard deviation of the figures of ``sets`` sets of n exact samples."""
        vals = {"sw": [], "nll": [], "tv": []}
        for s in range(sets):
            f = self.figures(self.exact(n, torch.Generator().manual_seed(self.reference_seed + 1000 + s)))
            for k in vals:
                vals[k].append(f[k])
        out = {"n": int(n), "sets": sets}
        for k, v in vals.items():
            t = torch.tensor(v, dtype=torch.float64)
            out[k], out[k + "_std"] = float(t.mean()), float(t.std()) if sets > 1 else 0.0
        return out

    def describe(self) -> dict:
        return {"kind": "mixture", "primary": self.primary, "label": self.label, "metrics": ["sw", "nll", "tv"],
                "reference_n": int(self.reference.shape[0]), "n_proj": self.n_proj, "components": self.mixture.K,
                "dim": self.mixture.D}
