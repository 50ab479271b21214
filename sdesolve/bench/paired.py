"""Paired bootstrap intervals for sample-quality metrics.

Every row of a benchmark starts sample i from the same x_T[i] (and the same noise streams), so
rows are *paired* by sample index. A metric of a row is a functional of the row's empirical
distribution; resampling the sample *indices* (Efron's bootstrap; Efron & Tibshirani 1993,
ch. 13) with the same indices for every row gives, for each replicate b, the metric of every row
on the same resampled x_T's. Intervals of a difference between two rows come from the
replicates of the difference, so the noise the two rows share (the same x_T) cancels and the
interval is tighter than one built from the two rows' own intervals.

A resample is stored as counts: w[b, i] = how often index i was drawn among n draws with
replacement (sum_i w[b, i] = n); replicate 0 is the sample itself (w = 1). Every metric here is
written as a function of (per-sample representation, counts), so that one (B, n) count matrix,
shared by all rows, is the whole resampling scheme. Intervals are percentile intervals at level
1 - alpha (the alpha/2 and 1 - alpha/2 quantiles of the replicates, linear interpolation).

Metrics (each a :class:`PairedMetric` with a ``name`` that says what computed it):

* :class:`FrechetDistance`: ||mu - mu_r||^2 + tr C + tr C_r - 2 tr (C_r^{1/2} C C_r^{1/2})^{1/2}
  (Heusel et al. 2017) of the features' weighted mean and covariance against fixed reference
  statistics; the square-root term is the sum of the square roots of the (clamped) eigenvalues
  of the symmetric matrix C_r^{1/2} C C_r^{1/2}.
* :class:`KernelDistance`: unbiased MMD^2 (Gretton et al. 2012) against a fixed reference set;
  for a resample with counts w the within-sample term sums the kernel over ordered pairs of
  distinct draws: (w^T K w - sum_i w_i K_ii) / (n (n - 1)). With the cubic polynomial kernel on
  features it is KID (Binkowski et al. 2018), with the distance "kernel" k(x, y) = -||x - y|| the
  energy distance 2 E||X - Y|| - E||X - X'|| - E||Y - Y'|| (Szekely & Rizzo 2013).
* :class:`SlicedWasserstein`: SW_2 averaged over ``sets`` independent sets of ``n_proj`` random
  directions (each set's SW_2 = RMS over directions and levels of the difference of quantile
  functions; the resample's quantile at level (k + 1/2)/n is its k-th order statistic).
* :class:`MeanOf`: the mean of a per-sample value (an exact negative log-likelihood).
* :class:`ComponentTV`: total variation between the proportions of samples per mixture
  component (most probable component) and the mixture's weights.
"""
from __future__ import annotations

import math

import torch

__all__ = ["Bootstrap", "PairedMetric", "FrechetDistance", "KernelDistance", "SlicedWasserstein", "MeanOf",
           "ComponentTV", "percentile_interval", "compare"]


class Bootstrap:
    """``replicates`` resamples (with replacement) of the indices 0..n-1, as counts, seeded; row 0
    of :attr:`weights` is the sample itself. ``level`` is the confidence level of intervals."""

    def __init__(self, n: int, replicates: int = 400, seed: int = 0, level: float = 0.95):
        if n < 2:
            raise ValueError(f"a bootstrap needs n >= 2 samples, got {n}")
        if replicates < 0:
            raise ValueError(f"replicates must be >= 0, got {replicates}")
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must lie in (0, 1), got {level}")
        self.n, self.replicates, self.seed, self.level = int(n), int(replicates), int(seed), float(level)
        g = torch.Generator().manual_seed(self.seed)
        idx = torch.randint(0, n, (self.replicates, n), generator=g)
        w = torch.zeros(self.replicates, n, dtype=torch.float64).scatter_add_(
            1, idx, torch.ones(self.replicates, n, dtype=torch.float64))
        self.weights = torch.cat([torch.ones(1, n, dtype=torch.float64), w])

    def evaluate(self, metric: "PairedMetric", rep: torch.Tensor) -> torch.Tensor:
        """(1 + replicates,) values of ``metric``: the estimate, then the replicates."""
        if rep.shape[0] != self.n:
            raise ValueError(f"{metric.name}: {rep.shape[0]} samples for a bootstrap over {self.n}")
        return metric.evaluate(rep.to(torch.float64), self.weights)

    def describe(self) -> dict:
        return {"replicates": self.replicates, "seed": self.seed, "level": self.level, "n": self.n,
                "method": "paired percentile bootstrap over sample indices (shared by all rows)"}


def percentile_interval(replicates: torch.Tensor, level: float = 0.95, estimate: float | None = None
                        ) -> tuple[float, float]:
    """(lo, hi): the (1 -/+ level)/2 quantiles of the finite replicates (NaN if none); with an
    ``estimate``, shifted by estimate - median (re-centred on the estimate)."""
    r = replicates[torch.isfinite(replicates)].to(torch.float64)
    if r.numel() == 0:
        return float("nan"), float("nan")
    a = (1.0 - level) / 2.0
    q = torch.quantile(r, torch.tensor([a, 1.0 - a, 0.5], dtype=torch.float64))
    shift = 0.0 if estimate is None else float(estimate) - float(q[2])
    return float(q[0]) + shift, float(q[1]) + shift


def compare(a: torch.Tensor, b: torch.Tensor, level: float = 0.95, margin: float = 0.0) -> dict:
    """The paired difference a - b (each (1 + B,) from the same :class:`Bootstrap`), with its
    interval; ``resolved``: the interval excludes ``margin`` (default 0) — the sign of
    a - b - margin is known at this n; ``sign``: -1, +1 or 0 (not resolved)."""
    d = a - b
    est = float(d[0])
    lo, hi = percentile_interval(d[1:], level, est) if d.numel() > 1 else (float("nan"), float("nan"))
    sign = -1 if hi < margin else (1 if lo > margin else 0)
    return {"diff": est, "lo": lo, "hi": hi, "resolved": sign != 0, "sign": sign}


class PairedMetric:
    """A metric of a row's samples (their per-sample representation ``rep``, (n, d) float64)
    under resampling counts ``w`` ((B, n), each row summing to n): ``evaluate(rep, w) -> (B,)``.
    ``name`` says what computed it (e.g. ``fd_digits``); lower is better."""

    name = "metric"
    label = ""

    def evaluate(self, rep: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def value(self, rep: torch.Tensor) -> float:
        """The metric of the samples themselves."""
        return float(self.evaluate(rep.to(torch.float64), torch.ones(1, rep.shape[0], dtype=torch.float64))[0])

    def describe(self) -> dict:
        return {"name": self.name, "label": self.label, "kind": type(self).__name__}


def _psd_sqrt(c: torch.Tensor) -> torch.Tensor:
    e, v = torch.linalg.eigh(c)
    return (v * e.clamp_min(0).sqrt()) @ v.T


class FrechetDistance(PairedMetric):
    """Fréchet distance of weighted feature statistics to reference statistics (mean (d,),
    covariance (d, d)). Cost per call O(B n d^2 + B d^3), in chunks of ``chunk`` replicates."""

    def __init__(self, name: str, mean: torch.Tensor, cov: torch.Tensor, label: str = "", chunk: int = 32):
        self.name, self.label, self.chunk = name, label or f"{name} (Fréchet distance; lower is better)", int(chunk)
        self.mu_r = mean.to(torch.float64).reshape(-1)
        cov = cov.to(torch.float64)
        self.tr_r = float(cov.diagonal().sum())
        self.sqrt_r = _psd_sqrt(cov)

    def evaluate(self, rep, w):
        n, d = rep.shape
        # second moments sum_i w_i x_i x_i^T: one product with the per-sample outer products for
        # small d, batched products otherwise
        outer = (rep[:, :, None] * rep[:, None, :]).reshape(n, d * d) if d <= 128 else None
        out = []
        for wc in w.split(self.chunk if outer is None else 256):
            mu = wc @ rep / n  # (b, d)
            if outer is not None:
                second = (wc @ outer).reshape(-1, d, d)
            else:
                second = torch.matmul((wc[:, :, None] * rep).transpose(1, 2), rep)
            cov = (second - n * mu[:, :, None] * mu[:, None, :]) / (n - 1)
            m = self.sqrt_r @ cov @ self.sqrt_r
            ev = torch.linalg.eigvalsh(0.5 * (m + m.transpose(1, 2))).clamp_min(0)
            fd = ((mu - self.mu_r) ** 2).sum(1) + cov.diagonal(dim1=1, dim2=2).sum(1) + self.tr_r - 2 * ev.sqrt().sum(1)
            out.append(fd)
        return torch.cat(out)


def rbf(bandwidth: float):
    def k(x, y):
        d2 = ((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T).clamp_min(0)
        return torch.exp(-d2 / (2.0 * bandwidth * bandwidth))
    return k


def cubic(x, y):
    """KID's kernel (x.y / d + 1)^3."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def negative_distance(x, y):
    """-||x - y||: MMD^2 with this conditionally negative definite "kernel" is the energy distance."""
    d2 = ((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T).clamp_min(0)
    return -d2.sqrt()


class KernelDistance(PairedMetric):
    """Unbiased MMD^2 with ``kernel`` against a fixed ``reference`` set (m, d). Cost per call
    O(n^2 d + n m d) for the Gram matrices, O(B n^2) for the replicates."""

    def __init__(self, name: str, kernel, reference: torch.Tensor, label: str = ""):
        self.name, self.kernel, self.label = name, kernel, label or f"{name} (unbiased MMD^2; lower is better)"
        self.reference = reference.to(torch.float64)
        m = self.reference.shape[0]
        if m < 2:
            raise ValueError(f"{name}: the reference set needs at least 2 points")
        kyy = kernel(self.reference, self.reference)
        self.syy = float((kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)))

    def evaluate(self, rep, w):
        n = rep.shape[0]
        kxx = self.kernel(rep, rep)
        kxy = self.kernel(rep, self.reference.to(rep.device)).mean(1)  # (n,)
        quad = ((w @ kxx) * w).sum(1)
        sxx = (quad - w @ kxx.diagonal()) / (n * (n - 1))
        return sxx + self.syy - 2.0 * (w @ kxy) / n


class SlicedWasserstein(PairedMetric):
    """SW_2 to a fixed reference set, averaged over ``sets`` sets of ``n_proj`` directions drawn
    from a generator seeded with ``seed`` (the same directions for every row)."""

    def __init__(self, reference: torch.Tensor, sets: int = 4, n_proj: int = 64, seed: int = 1, name: str = "sw",
                 label: str = "", chunk: int = 16):
        self.name, self.chunk = name, int(chunk)
        self.label = label or f"SW_2 to exact samples ({sets} sets of {n_proj} directions; lower is better)"
        self.reference = reference.reshape(reference.shape[0], -1).to(torch.float64)
        g = torch.Generator().manual_seed(int(seed))
        theta = torch.randn(self.reference.shape[1], sets * n_proj, generator=g, dtype=torch.float64)
        self.theta = theta / theta.norm(dim=0, keepdim=True)
        self.sets, self.n_proj = int(sets), int(n_proj)
        self._ref_q = {}

    def _reference_quantiles(self, n):
        if n not in self._ref_q:
            from ..metrics.sliced import _quantiles
            self._ref_q[n] = _quantiles(self.reference @ self.theta, n).T.contiguous()  # (P, n)
        return self._ref_q[n]

    def evaluate(self, rep, w):
        # With counts w in sorted order, the resample's sorted values are s_j repeated w_j times,
        # occupying levels [C_{j-1}, C_j) (C the cumulative counts), so
        #   sum_k (q_k - r_k)^2 = sum_j w_j s_j^2 - 2 sum_j s_j (R(C_j) - R(C_{j-1})) + sum_k r_k^2
        # with R the prefix sums of the reference quantiles r: no sort or search per replicate.
        n = rep.shape[0]
        proj = rep.reshape(n, -1) @ self.theta  # (n, P)
        s, order = proj.sort(0)
        ref = self._reference_quantiles(n)  # (P, n)
        s_t, order_t = s.T.contiguous(), order.T.contiguous()  # (P, n)
        prefix = torch.cat([torch.zeros(ref.shape[0], 1, dtype=ref.dtype), ref.cumsum(1)], 1)  # (P, n + 1)
        r2 = (ref * ref).sum(1)  # (P,)
        out = []
        for wc in w.split(self.chunk):
            ws = wc[:, order_t]  # (b, P, n) counts in sorted order
            c = ws.cumsum(-1).long()
            hi = torch.gather(prefix.expand(wc.shape[0], -1, -1), 2, c)
            lo = torch.cat([torch.zeros_like(hi[..., :1]), hi[..., :-1]], -1)
            sq = (ws * s_t * s_t).sum(-1) - 2.0 * (s_t * (hi - lo)).sum(-1) + r2  # (b, P)
            per_set = (sq.clamp_min(0) / n).reshape(wc.shape[0], self.sets, self.n_proj).mean(-1).sqrt()
            out.append(per_set.mean(1))
        return torch.cat(out)


class MeanOf(PairedMetric):
    """The mean over samples of a per-sample value ``fn(rep) -> (n,)``."""

    def __init__(self, name: str, fn, label: str = ""):
        self.name, self.fn, self.label = name, fn, label or name

    def evaluate(self, rep, w):
        return w @ self.fn(rep).to(torch.float64) / rep.shape[0]


class ComponentTV(PairedMetric):
    """0.5 sum_k |p_k - weight_k|, p_k the weighted fraction of samples whose most probable
    component is k; ``assign(rep) -> (n,)`` component indices."""

    def __init__(self, assign, weights: torch.Tensor, name: str = "tv", label: str = ""):
        self.assign, self.weights = assign, weights.to(torch.float64)
        self.name, self.label = name, label or "TV of component proportions to the weights"

    def evaluate(self, rep, w):
        k = self.assign(rep)
        onehot = torch.nn.functional.one_hot(k, self.weights.numel()).to(torch.float64)
        return 0.5 * ((w @ onehot / rep.shape[0]) - self.weights).abs().sum(1)


def interval_record(values: torch.Tensor, level: float) -> dict:
    """{"value", "lo", "hi"} of a metric's (1 + B,) values (no interval without replicates)."""
    v = float(values[0])
    if values.numel() > 1:
        lo, hi = percentile_interval(values[1:], level, v)
    else:
        lo = hi = float("nan")
    return {"value": v if math.isfinite(v) else float("nan"), "lo": lo, "hi": hi}
