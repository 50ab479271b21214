"""A residual MLP for low-dimensional data (2-D toys, small vectors).

    h_0     = W_in x + W_t e(l)                        e: sinusoidal embedding of the label
    h_{k+1} = h_k + W_2 silu(W_1 silu(h_k) + U_k e(l))  ``depth`` residual blocks
    out     = W_out silu(h_depth)                       W_out starts at zero

Samples of any shape are flattened to ``prod(shape)`` features and reshaped back, so the output
has the input's shape. Called as ``model(x, label)`` with ``label`` of shape (B,).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .embedding import SinusoidalEmbedding

__all__ = ["MLP"]


class _Block(nn.Module):
    def __init__(self, hidden: int, emb: int):
        super().__init__()
        self.fc1, self.fc2, self.temb = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(emb, hidden)

    def forward(self, h, e):
        return h + self.fc2(nn.functional.silu(self.fc1(nn.functional.silu(h)) + self.temb(e)))


class MLP(nn.Module):
    def __init__(self, shape=(2,), hidden: int = 128, depth: int = 3, emb_dim: int = 64,
                 max_freq: float = 100.0):
        super().__init__()
        shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
        if depth < 1 or hidden < 1:
            raise ValueError(f"MLP: need depth >= 1 and hidden >= 1, got depth={depth}, hidden={hidden}")
        self.config = dict(shape=list(shape), hidden=hidden, depth=depth, emb_dim=emb_dim, max_freq=max_freq)
        self.shape, d = shape, math.prod(shape)
        self.embed = SinusoidalEmbedding(emb_dim, max_freq)
        self.temb = nn.Sequential(nn.Linear(emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(d, hidden)
        self.blocks = nn.ModuleList(_Block(hidden, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, d)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"MLP built for samples of shape {self.shape}, got a batch of shape {tuple(x.shape)}")
        e = self.temb(self.embed(label))
        h = self.inp(x.reshape(x.shape[0], -1)) + e
        for block in self.blocks:
            h = block(h, e)
        return self.out(nn.functional.silu(h)).reshape(x.shape)
