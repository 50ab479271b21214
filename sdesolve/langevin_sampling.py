"""Langevin dynamics for score models without a diffusion process: plain (unadjusted) Langevin
at one noise level, and annealed Langevin over the levels of a noise-conditional model.

Plain Langevin (ULA; Roberts & Tweedie 1996): x_{k+1} = x_k + eps s(x_k) + sqrt(2 eps) z_k
leaves exp(log p) invariant up to O(eps). Between well-separated modes its mixing time grows
like exp(barrier height) (Song & Ermon 2019, Sec. 3.2 and Fig. 3): started from a broad
distribution, chains settle in the mode whose basin they start in, and the fraction of chains
in each mode reflects basin areas, not the mode weights, for a very long time.

Annealed Langevin (NCSN; Song & Ermon 2019, Alg. 1): the same updates at decreasing noise
levels sigma_1 > ... > sigma_L with the score of p_sigma = p * N(0, sigma^2 I): at large sigma
the modes overlap and chains move between them, so the weights are restored before the levels
become small. :func:`noise_conditional` expresses a model ``model(x, sigma)`` trained at the
levels (e.g. by :mod:`sdesolve.train.score_matching`) as a :class:`~sdesolve.scores.Score` of a
variance-exploding process whose grid hits the levels exactly, so the project's
:class:`~sdesolve.solvers.AnnealedLangevin` runs it through :func:`sdesolve.sample`.
"""
from __future__ import annotations

import math

import torch

from .noise import Noise
from .processes import VESDE
from .scores import Score, labels

__all__ = ["langevin", "noise_conditional"]


def langevin(score, x: torch.Tensor, step_size: float, n_steps: int, *, seed=0, sigma=None,
             save_at=()) -> tuple[torch.Tensor, dict]:
    """``n_steps`` of unadjusted Langevin from x (B, ...): x += eps s + sqrt(2 eps) z.

    ``score(x)`` (or ``score(x, sigma)`` with sigma a (B,) tensor when ``sigma`` is given).
    Update k draws its normals from the counter-based :class:`~sdesolve.noise.Noise` of ``seed``
    at step k. ``save_at``: step counts after which to keep a copy of the state. Returns the
    final state and {k: state after k steps}."""
    if not (step_size > 0) or n_steps < 0:
        raise ValueError(f"langevin: need step_size > 0 and n_steps >= 0, got {step_size}, {n_steps}")
    noise = Noise.from_seed(seed, x.shape[0], device=x.device)
    sig = None if sigma is None else torch.full((x.shape[0],), float(sigma), device=x.device, dtype=x.dtype)
    saved = {0: x} if 0 in save_at else {}
    c = math.sqrt(2.0 * step_size)
    for k in range(n_steps):
        s = score(x) if sig is None else score(x, sig)
        x = x + step_size * s + c * noise.at(k).normal(x)
        if k + 1 in save_at:
            saved[k + 1] = x
    return x, saved


def noise_conditional(model, levels) -> tuple[VESDE, Score, torch.Tensor]:
    """(process, score, schedule) for annealed Langevin over ``levels`` (decreasing, L >= 2).

    The process is a VESDE with sigma_min = sigma_L and sigma_max = sigma_1 gamma (gamma =
    sigma_1 / sigma_2), so that the schedule, the L + 1 times t_0 = T, t_i = sigma^{-1}(sigma_i),
    puts :class:`~sdesolve.solvers.AnnealedLangevin`'s step i (which runs at t_{i+1}) at level
    sigma_{i+1}: every level once, largest first. The score calls ``model(x, sigma)`` with
    sigma = sigma(t) as a (B,) tensor in x's dtype."""
    lv = torch.as_tensor(levels, dtype=torch.float64).reshape(-1)
    if lv.numel() < 2 or not bool((lv[1:] < lv[:-1]).all()) or not bool((lv > 0).all()):
        raise ValueError(f"noise_conditional: need at least two positive decreasing levels, got {lv.tolist()}")
    gamma = float(lv[0] / lv[1])
    process = VESDE(sigma_min=float(lv[-1]), sigma_max=float(lv[0]) * gamma, t_min=0.0)
    ts = torch.log(lv / lv[-1]) / math.log(process.sigma_max / process.sigma_min)
    schedule = torch.cat([torch.ones(1, dtype=torch.float64), ts])
    schedule[-1] = 0.0
    return process, Score.from_score(model, process, time_label=labels.sigma), schedule
