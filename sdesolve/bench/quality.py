"""How a benchmark judges samples: a :class:`Quality` turns each row's samples into a per-sample
representation (features of a frozen network for images, the vectors themselves otherwise) and
scores it with paired metrics (:mod:`sdesolve.bench.paired`), each named by what computed it.

* :func:`feature_quality`: images, in the features of frozen networks (the digits classifier
  for 8x8 digits, the MNIST classifier for 28x28, InceptionV3 from a user's weights file): FD
  (``fd_<network>``, FID for Inception) against Gaussian statistics of held-out real data
  (computed once and cached, :func:`reference_stats`) and KID (``kid_<network>``) against the
  held-out features. A network that does not fit the data (size, channels, range) is refused
  (:func:`sdesolve.metrics.features.check_fits`).
* :func:`mixture_quality`: a Gaussian mixture with exact density: SW_2 to exact samples of
  p_{t_min} (averaged over sets of directions), MMD^2 (Gaussian kernel, bandwidth by the median
  heuristic on the reference set), energy distance, the exact negative log-likelihood
  -log p_{t_min}(x) and the total variation of the component proportions.
* :func:`vector_quality`: vectors of unknown density (a checkpoint trained on a .npy file): SW,
  MMD^2 and energy distance to held-out points of the data.

``floor(n)``: the same metrics for n samples of real or exact data (sets of them, mean and
standard deviation): what a perfect sampler reaches at that sample size.

Feature extraction runs under ``torch.inference_mode`` (evaluation code).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..metrics import GaussianStats
from . import distributed as dist
from .paired import (ComponentTV, FrechetDistance, KernelDistance, MeanOf, PairedMetric, SlicedWasserstein, cubic,
                     negative_distance, rbf)

__all__ = ["Quality", "Columns", "feature_quality", "mixture_quality", "vector_quality", "reference_stats",
           "cache_dir", "IMAGE_METRICS", "VECTOR_METRICS", "MIXTURE_METRICS"]

IMAGE_METRICS = ("fd", "kid")
VECTOR_METRICS = ("sw", "mmd", "energy")
MIXTURE_METRICS = ("sw", "mmd", "energy", "nll", "tv")
KERNEL_REFERENCE = 2000  # points of the reference set used by the kernel metrics


def cache_dir() -> Path:
    """Where reference statistics are cached: ``$SDESOLVE_CACHE`` or ``~/.cache/sdesolve``."""
    return Path(os.environ.get("SDESOLVE_CACHE", Path.home() / ".cache" / "sdesolve"))


def _fingerprint(x: torch.Tensor) -> str:
    from ..train.data import fingerprint
    return fingerprint(x)


def _features_of(extractor, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    p = next(extractor.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    with torch.inference_mode():
        parts = [extractor(c.to(device)).to("cpu", torch.float64) for c in images.split(batch_size)]
    return torch.cat(parts)


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
        st = GaussianStats().update(_features_of(extractor, images))
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        with open(tmp, "wb") as f:
            st.save(f)
        os.replace(tmp, path)
    dist.barrier()
    return GaussianStats.load(path)


class Columns(PairedMetric):
    """A metric computed on the columns ``lo:hi`` of the representation (one feature network's
    part of a concatenation)."""

    def __init__(self, metric: PairedMetric, lo: int, hi: int):
        self.metric, self.lo, self.hi = metric, int(lo), int(hi)
        self.name, self.label = metric.name, metric.label

    def evaluate(self, rep, w):
        return self.metric.evaluate(rep[:, self.lo:self.hi], w)


class Quality:
    """``prepare(x)``: data-space samples (b, ...) -> (b, d) float64 representation on the CPU;
    ``metrics``: :class:`~sdesolve.bench.paired.PairedMetric` objects (lower is better), the
    first the primary one unless ``primary`` names another; ``floor_data(n, generator)``: n
    samples of real or exact data in data space (for :meth:`floor`), ``floor_kind`` words for
    them."""

    lower_is_better = True

    def __init__(self, metrics, prepare=None, primary: str | None = None, floor_data=None, floor_kind: str = "",
                 info: dict | None = None):
        self.metrics = list(metrics)
        if not self.metrics:
            raise ValueError("a Quality needs at least one metric")
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"metric names must be distinct, got {names}")
        self.primary = primary or names[0]
        if self.primary not in names:
            raise ValueError(f"primary metric {self.primary!r} is not one of {names}")
        self._prepare = prepare
        self.floor_data, self.floor_kind, self.info = floor_data, floor_kind, dict(info or {})

    @property
    def label(self) -> str:
        return next(m.label for m in self.metrics if m.name == self.primary)

    @property
    def names(self) -> list:
        return [m.name for m in self.metrics]

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self._prepare is None:
            return x.detach().reshape(x.shape[0], -1).to("cpu", torch.float64)
        return self._prepare(x)

    def values(self, x: torch.Tensor) -> dict:
        """{metric name: value} of data-space samples x."""
        rep = self.prepare(x)
        return {m.name: m.value(rep) for m in self.metrics}

    def floor(self, n: int, sets: int = 8, seed: int = 0) -> dict:
        """Mean and standard deviation over ``sets`` sets of n real/exact samples (fewer if the
        data hold fewer: then the one set of all of them)."""
        if self.floor_data is None:
            return {}
        vals = {m.name: [] for m in self.metrics}
        m_used = None
        for s in range(sets):
            x = self.floor_data(n, torch.Generator().manual_seed(seed + 1000 + s))
            if x is None or x.shape[0] < 2:
                return {}
            m_used = x.shape[0]
            for k, v in self.values(x).items():
                vals[k].append(v)
            if m_used < n:  # all the data there is: one set
                break
        out = {"n": int(m_used), "sets": len(next(iter(vals.values()))), "kind": self.floor_kind}
        for k, v in vals.items():
            t = torch.tensor(v, dtype=torch.float64)
            out[k] = float(t.mean())
            out[k + "_std"] = float(t.std()) if t.numel() > 1 else 0.0
        return out

    def describe(self) -> dict:
        return {"primary": self.primary, "label": self.label, "metrics": self.names,
                "labels": {m.name: m.label for m in self.metrics}, **self.info}


def _subset(x: torch.Tensor, m: int, seed: int = 0) -> torch.Tensor:
    if x.shape[0] <= m:
        return x
    return x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:m]]


def _median_bandwidth(x: torch.Tensor) -> float:
    from ..metrics.kernel import median_bandwidth
    half = x.shape[0] // 2
    return median_bandwidth(x[:half], x[half:], max_points=1000)


def _vector_metrics(names, reference: torch.Tensor) -> list:
    ref = reference.reshape(reference.shape[0], -1).to(torch.float64)
    kref = _subset(ref, KERNEL_REFERENCE)
    out = []
    for name in names:
        if name == "sw":
            out.append(SlicedWasserstein(ref))
        elif name == "mmd":
            h = _median_bandwidth(kref)
            out.append(KernelDistance("mmd", rbf(h), kref,
                                      label=f"MMD^2 (Gaussian kernel, bandwidth {h:.3g} by the median heuristic; "
                                            "lower is better)"))
        elif name == "energy":
            out.append(KernelDistance("energy", negative_distance, kref,
                                      label="energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'| (lower is better)"))
    return out


def _check_names(names, allowed, what):
    names = list(names)
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise ValueError(f"metrics {bad or names} do not apply to {what}; choose among {', '.join(allowed)}")
    return names


def mixture_quality(mixture, process, metrics=MIXTURE_METRICS, reference_n: int = 10000,
                    reference_seed: int = 0) -> Quality:
    """Metrics of samples of ``mixture`` at ``process.t_min``, against ``reference_n`` exact
    samples drawn with ``reference_seed``; NLL and TV from the exact density and posterior."""
    names = _check_names(metrics, MIXTURE_METRICS, "a Gaussian mixture")
    t = process.t_min

    def exact(n, g):
        return mixture.sample(n, g, t=t, process=process, dtype=torch.float64)

    reference = exact(reference_n, torch.Generator().manual_seed(reference_seed))
    ms = _vector_metrics([n for n in names if n in VECTOR_METRICS], reference)
    for name in names:
        if name == "nll":
            ms.append(MeanOf("nll", lambda x: -mixture.log_prob(x, t, process),
                             label="NLL (exact -log p_{t_min}, nats per sample; lower is better)"))
        elif name == "tv":
            ms.append(ComponentTV(lambda x: mixture.posterior(x, t, process).argmax(1), mixture.weights))
    ms.sort(key=lambda m: names.index(m.name))
    return Quality(ms, floor_data=exact, floor_kind="exact samples",
                   info={"kind": "mixture", "reference_n": int(reference_n), "components": mixture.K,
                         "dim": mixture.D})


def vector_quality(data: torch.Tensor, metrics=VECTOR_METRICS, seed: int = 0, reference_max: int = 10000) -> Quality:
    """Metrics of vector samples against held-out points of ``data`` (N, D): the data are
    shuffled (seeded), up to half of them (at most ``reference_max``) form the reference set, the
    rest the floor pool."""
    names = _check_names(metrics, VECTOR_METRICS,
                         "vectors of unknown density (nll needs a known density: use --gmm FILE.json)")
    data = data.reshape(data.shape[0], -1).to(torch.float64)
    if data.shape[0] < 4:
        raise ValueError(f"need at least 4 data points to hold some out, got {data.shape[0]}")
    perm = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(seed))
    m = min(data.shape[0] // 2, reference_max)
    reference, pool = data[perm[:m]], data[perm[m:]]

    def floor_data(n, g):
        return pool[torch.randperm(pool.shape[0], generator=g)[:n]]

    return Quality(_vector_metrics(names, reference), floor_data=floor_data, floor_kind="held-out data points",
                   info={"kind": "vectors", "reference_n": int(m), "dim": int(data.shape[1])})


def feature_quality(extractors: dict, reference: torch.Tensor, data_range, metrics=IMAGE_METRICS,
                    floor_images: torch.Tensor | None = None, cache: Path | None = None, source: str = "data",
                    batch_size: int = 256) -> Quality:
    """FD and/or KID in each of ``extractors`` ({network tag: FeatureExtractor}, e.g.
    {"digits": DigitsClassifierFeatures()}) of images in ``data_range`` against held-out
    ``reference`` images (same range). Metric names: ``fd_<tag>`` (``fid`` for tag "inception"),
    ``kid_<tag>``."""
    names = _check_names(metrics, IMAGE_METRICS, "images (in a feature network)")
    lo, hi = float(data_range[0]), float(data_range[1])

    def to_unit(x):
        return (x.float() - lo) * (2.0 / (hi - lo)) - 1.0

    unit_ref = to_unit(reference)
    ms, width = [], 0
    nets = list(extractors.items())
    for tag, ex in nets:
        d = int(ex.dim)
        what = {"digits": "digits-classifier", "mnist": "MNIST-classifier", "inception": "InceptionV3"}.get(tag, tag)
        for kind in names:
            if kind == "fd":
                st = reference_stats(ex, f"fd_{tag}-{source.replace('/', '_')}", unit_ref, cache)
                name = "fid" if tag == "inception" else f"fd_{tag}"
                m = FrechetDistance(name, st.mean, st.cov,
                                    label=f"{name}: Fréchet distance in {what} features to held-out data (lower is better)")
            else:
                feats = _features_of(ex, _subset(unit_ref, KERNEL_REFERENCE), batch_size)
                m = KernelDistance(f"kid_{tag}", cubic, feats,
                                   label=f"kid_{tag}: KID (unbiased MMD^2, cubic kernel) in {what} features to "
                                         "held-out data (lower is better)")
            ms.append(Columns(m, width, width + d))
        width += d

    def prepare(x):
        u = to_unit(x)
        return torch.cat([_features_of(ex, u, batch_size) for _, ex in nets], 1)

    def floor_data(n, g):
        if floor_images is None:
            return None
        if floor_images.shape[0] <= n:
            return floor_images
        return floor_images[torch.randperm(floor_images.shape[0], generator=g)[:n]]

    return Quality(ms, prepare=prepare, floor_data=floor_data if floor_images is not None else None,
                   floor_kind="real training images",
                   info={"kind": "images", "networks": [t for t, _ in nets], "reference_n": int(reference.shape[0]),
                         "data_range": [lo, hi]})
