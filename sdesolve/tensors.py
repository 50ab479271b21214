"""Small tensor conventions shared by processes, equations, scores and solvers."""
from __future__ import annotations

import torch

__all__ = ["per_sample"]


def per_sample(c, x: torch.Tensor) -> torch.Tensor:
    """A per-sample coefficient (B,) (or a scalar) broadcast against x of shape (B, ...), in x's
    dtype and on x's device: (B,) becomes (B, 1, ..., 1)."""
    c = torch.as_tensor(c).to(device=x.device, dtype=x.dtype)
    return c.reshape(c.shape + (1,) * (x.dim() - c.dim())) if c.dim() else c
