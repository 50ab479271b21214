"""Small tensor conventions shared by processes, equations, scores and solvers."""
from __future__ import annotations

import torch

__all__ = ["per_sample", "rms"]


def per_sample(c, x: torch.Tensor) -> torch.Tensor:
    """A per-sample coefficient (B,) (or a scalar) broadcast against x of shape (B, ...), in x's
    dtype and on x's device: (B,) becomes (B, 1, ..., 1)."""
    c = torch.as_tensor(c).to(device=x.device, dtype=x.dtype)
    return c.reshape(c.shape + (1,) * (x.dim() - c.dim())) if c.dim() else c


def rms(x: torch.Tensor) -> torch.Tensor:
    """Per-sample root mean square of x (B, ...): sqrt(mean over all but the batch dimension of
    x^2), in float64, shape (B,). The error norms of the adaptive solvers and controllers."""
    return x.reshape(x.shape[0], -1).to(torch.float64).pow(2).mean(1).sqrt()

