"""Negative log-likelihood of a data set under a trained model, sharded over ``torchrun`` ranks:
what ``sdesolve likelihood`` computes.

For each data point x_i (in data space) and each of K dequantization draws, the probability-flow
ODE gives log p_{t_min} in the model's space (:func:`sdesolve.log_likelihood`, exact trace or
Hutchinson); the model's space is an affine map of the data space, model = (data - offset) *
scale, so

    log p_data(x) = log p_model((x - offset) * scale) + D log scale.

Quantized images (L levels evenly spaced over the data range [lo, hi], e.g. 256 for 8-bit
images, 17 for scikit-learn's digits) are dequantized uniformly (Theis et al. 2016; Ho et al.
2019): level k becomes y = lo + a (k + u), a = (hi - lo) / L, u ~ U[0, 1)^D, and

    bits/dim = E_u[-log p_data(y)] / (D ln 2) - log2 a,

an upper bound on the discrete model's -log2 P(k) / D. Continuous data (vectors) are scored as
they are: NLL in nats per point (and per dimension).

Every random draw is a pure function of (seed, global data index, draw): the dequantization
noise at step ``DEQUANTIZATION_STEP`` draw k, the Hutchinson probes at ``PROBE_STEP + k`` — the
same streams :func:`sdesolve.bits_per_dim` uses, with the data point's global index. Points are
processed in batches of global indices [j B, (j + 1) B) cut to each rank's shard, so a W-process
run sees the same batches as one process wherever the shard boundaries fall on multiples of B,
and gives the same numbers to the last bit there (to rounding elsewhere). The only collective is
the gather at the end: ranks whose adaptive solves take different numbers of steps never wait
on each other mid-solve.

Interval: the per-point mean over draws m_i has variance Var(m_i) = between-point variance +
(dequantization and probe variance) / K, so mean_i m_i +- z sd(m_i) / sqrt(N) covers both
sources of noise; the report also gives the within-point standard deviation across draws.
"""
from __future__ import annotations

import math
import time

import torch

from ..likelihood import DEQUANTIZATION_STEP, PROBE_STEP, log_likelihood
from ..noise import Noise, streams
from . import distributed as dist

__all__ = ["dataset_nll", "quantization_levels"]


def quantization_levels(x: torch.Tensor, data_range, max_levels: int = 256) -> int | None:
    """The smallest L in 2..max_levels such that every value of x lies on the grid of L levels
    evenly spaced over data_range (to 1e-4 of a step), or None if none does."""
    lo, hi = float(data_range[0]), float(data_range[1])
    k = ((x.to(torch.float64) - lo) / (hi - lo)).reshape(-1)
    if k.min() < -1e-6 or k.max() > 1 + 1e-6:
        return None
    for L in range(2, max_levels + 1):
        kk = k * (L - 1)
        if (kk - kk.round()).abs().max() < 1e-4:
            return L
    return None


def dataset_nll(trained, data: torch.Tensor, *, solver, trace, levels: int | None = None, dequantizations: int = 1,
                seed: int = 0, batch_size: int = 64, device="cpu", level: float = 0.95, log=print) -> dict:
    """NLL of ``data`` (N, ...) in data space under ``trained`` (a
    :class:`~sdesolve.train.checkpoint.TrainedModel`), sharded over the ranks of a torchrun job;
    ``levels``: the number of quantization levels of image data (None: continuous data, no
    dequantization). Returns, on every rank, the per-point values and the summary (see the
    module's docstring)."""
    device = torch.device(device)
    N = data.shape[0]
    if N < 2:
        raise ValueError(f"need at least 2 data points, got {N}")
    shape = tuple(trained.sample_shape)
    if tuple(data.shape[1:]) != shape:
        raise ValueError(f"data points of shape {tuple(data.shape[1:])} for a model of samples of shape {shape}")
    K = int(dequantizations) if levels else 1
    D = int(torch.Size(shape).numel())
    scaling = trained.scaling
    scale = float(scaling.scale)
    if levels:
        lo, hi = scaling.data_range
        a = (hi - lo) / levels
    process, score = trained.process, trained.score()
    trained.model.to(device)
    r_lo, r_hi = dist.shard(N)
    values, nfe, start = [], 0, time.perf_counter()
    first = (r_lo // batch_size) * batch_size
    for b_lo in range(first, r_hi, batch_size):
        s_lo, s_hi = max(b_lo, r_lo), min(b_lo + batch_size, r_hi)
        if s_hi <= s_lo:
            continue
        x = data[s_lo:s_hi].to(device, torch.float64)
        B = s_hi - s_lo
        stream = streams(seed, B, offset=s_lo, device=device)
        draws = []
        for k in range(K):
            if levels:
                kq = ((x - lo) / (hi - lo) * (levels - 1)).round()
                z = Noise(stream).at(DEQUANTIZATION_STEP).normal(torch.empty_like(x), draw=k)
                u = (0.5 * torch.erfc(-z / math.sqrt(2.0))).clamp(0.0, 1.0 - 2.0**-53)
                y = lo + a * (kq + u)
            else:
                y = x
            xm = scaling.to_model(y.float()).to(torch.float32)
            with torch.no_grad():
                res = log_likelihood(process, score, xm, solver=solver, trace=trace,
                                     noise=Noise(stream).at(PROBE_STEP + k))
            nfe += int(res.nfe)
            logp = res.logp.to(torch.float64).cpu() + D * math.log(scale)
            draws.append(-logp)
        values.append(torch.stack(draws, 1))  # (B, K) nats
    mine = torch.cat(values) if values else torch.zeros(0, K, dtype=torch.float64)
    nats = dist.gather(mine)  # (N, K), global order
    nfe = float(dist.all_sum(torch.tensor([float(nfe)], dtype=torch.float64))[0])
    wall = dist.all_max(time.perf_counter() - start)
    z = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + level / 2.0, dtype=torch.float64)))

    def summary(per_draw):
        m = per_draw.mean(1)
        mean, sd = float(m.mean()), float(m.std())
        se = sd / math.sqrt(m.numel())
        within = float(per_draw.std(1).mean()) if per_draw.shape[1] > 1 else float("nan")
        return {"mean": mean, "lo": mean - z * se, "hi": mean + z * se, "stderr": se, "sd_points": sd,
                "sd_within_point": within}

    out = {"n": N, "dim": D, "dequantizations": K, "levels": levels, "seed": seed, "level": level,
           "solver": repr(solver), "trace": repr(trace), "nfe_total": nfe, "seconds": wall,
           "nll_nats": summary(nats), "nll_nats_per_dim": summary(nats / D), "per_point_nats": nats.mean(1).tolist()}
    if levels:
        bpd = nats / (D * math.log(2.0)) - math.log2(a)
        out["bits_per_dim"] = summary(bpd)
        out["dequantization_offset_bits"] = -math.log2(a)
    return out
