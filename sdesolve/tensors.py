"""Small tensor conventions shared by processes, equations, scores and solvers."""
from __future__ import annotations

import torch

__all__ = ["per_sample", "rms", "shared_time"]


def shared_time(t):
    """Per-sample times ``t`` (B,) as the one value they share, a 0-d tensor, when they share it by
    construction: a view with stride 0 (a fixed grid's time, one grid point expanded to the batch,
    as the sampling loop hands it out). Otherwise ``t`` itself. Coefficients of the time computed
    on the result broadcast against the batch as the (B,) ones do and cost one evaluation instead
    of B (elementwise float64 functions of the same value: equal up to the last bit of the
    vectorised transcendental functions); a 0-d float64 coefficient meets a state of lower
    precision as a number does, rounded to the state's dtype (:func:`per_sample`)."""
    if isinstance(t, torch.Tensor) and t.dim() == 1 and t.shape[0] > 1 and t.stride(0) == 0:
        return t[0]
    return t


def per_sample(c, x: torch.Tensor):
    """A per-sample coefficient (B,) (or a scalar) broadcast against x of shape (B, ...), in x's
    dtype and on x's device: (B,) becomes (B, 1, ..., 1). A number, or a 0-d floating tensor on x's
    device or the CPU, is returned as it is: in arithmetic with x it is rounded to x's dtype first,
    as the conversion would (type promotion does not let a 0-d operand widen x), without the
    operations of a conversion."""
    if not isinstance(c, torch.Tensor):
        if isinstance(c, float):
            return c
        c = torch.as_tensor(c)
    if c.dim() == 0 and c.dtype.is_floating_point and (c.device == x.device or c.device.type == "cpu"):
        return c
    if c.dtype != x.dtype or c.device != x.device:
        c = c.to(device=x.device, dtype=x.dtype)
    return c.reshape(c.shape + (1,) * (x.dim() - c.dim())) if c.dim() else c


def rms(x: torch.Tensor) -> torch.Tensor:
    """Per-sample root mean square of x (B, ...): sqrt(mean over all but the batch dimension of
    x^2), in float64, shape (B,). The error norms of the adaptive solvers and controllers."""
    return x.reshape(x.shape[0], -1).to(torch.float64).pow(2).mean(1).sqrt()

