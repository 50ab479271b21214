"""Sinusoidal embedding of a scalar time label.

A label l (whatever the time convention: t, sigma, log(sigma) / 4, ...) becomes

    [sin(w_1 l), ..., sin(w_K l), cos(w_1 l), ..., cos(w_K l)],   w_k = max_freq^((k - 1) / (K - 1))

with K = dim / 2 frequencies spaced geometrically from 1 to ``max_freq`` (radians per unit of the
label): the positional encoding of Vaswani et al. 2017 as used by DDPM (Ho et al. 2020) with the
frequency range stated in the label's own units. It has no parameters and no randomness, so a
model is a pure function of its weights.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["SinusoidalEmbedding"]


class SinusoidalEmbedding(nn.Module):
    def __init__(self, dim: int, max_freq: float = 100.0):
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"SinusoidalEmbedding: dim must be even and >= 4, got {dim}")
        if max_freq <= 1:
            raise ValueError(f"SinusoidalEmbedding: max_freq must be > 1, got {max_freq}")
        self.dim, self.max_freq = dim, float(max_freq)
        k = torch.arange(dim // 2, dtype=torch.float64) / (dim // 2 - 1)
        self.register_buffer("freqs", torch.exp(k * math.log(max_freq)).float(), persistent=False)

    def forward(self, label: torch.Tensor) -> torch.Tensor:
        if label.dim() != 1:
            raise ValueError(f"the time label must have shape (B,), got {tuple(label.shape)}")
        arg = label.to(self.freqs.dtype)[:, None] * self.freqs[None, :]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)
