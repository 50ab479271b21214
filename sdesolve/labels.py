"""Time labels: how a model trained elsewhere reads time. Each is a function
``label(process, t) -> (B,)`` of per-sample float64 times t, passed to :class:`sdesolve.Score`.

    continuous      t itself (score_sde's continuous-time models, flow-matching models)
    discrete(N)     t (N - 1): the index of a model trained on N discrete steps 0..N-1 (DDPM,
                    score_sde's discrete models; diffusers' timesteps with t = index / (N - 1))
    sigma           sigma / alpha, the variance-exploding noise level (k-diffusion, EDM denoisers)
    edm_c_noise     log(sigma / alpha) / 4, EDM's c_noise (Karras et al. 2022, Table 1)
"""
from __future__ import annotations

import torch

__all__ = ["continuous", "discrete", "sigma", "edm_c_noise"]


def continuous(process, t):
    """The time t itself."""
    return t


def discrete(N: int):
    """t (N - 1): the label of a model trained on N discrete steps indexed 0..N-1."""
    def label(process, t):
        return t * (N - 1)
    label.__name__ = f"discrete({N})"
    return label


def sigma(process, t):
    """sigma(t) / alpha(t), the noise level of the equivalent variance-exploding process."""
    return process.sigma_edm(t)


def edm_c_noise(process, t):
    """EDM's c_noise = log(sigma / alpha) / 4."""
    return torch.log(process.sigma_edm(t)) / 4.0
