"""What a solve returns: the final state, the saved states, and what the solve cost."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["Solution", "Stats"]


@dataclass
class Stats:
    """The cost of one solve.

    nfe: calls of the model (or of the drift, for a plain equation); sample_nfe: per-sample
    evaluations, the summed batch sizes of those calls (an adaptive solve evaluates only the
    samples still running, so sample_nfe < nfe * B there); steps: iterations of the loop (on a
    fixed grid the number of steps; under step-size control the batched step calls, i.e. the most
    attempts, accepted or rejected, of any sample); accepted / rejected: per-sample counts,
    (B,) int64 tensors under step-size control, ints on a fixed grid; wall_time: seconds spent in
    the loop (step-size controlled solves).
    """

    nfe: int = 0
    sample_nfe: int = 0
    steps: int = 0
    accepted: object = 0
    rejected: object = 0
    wall_time: float | None = None


@dataclass
class Solution:
    """The result of :func:`sdesolve.solve` / :func:`sdesolve.sample`.

    y: the state at the end time, shape (B, ...), in the dtype of y0. ts: the times at which
    states were saved (float64; every grid point for ``save_at=True`` on a fixed grid, the
    requested times under step-size control), or None. ys: the saved states, shape
    (len(ts), B, ...), or None. stats: :class:`Stats`.
    """

    y: torch.Tensor
    ts: torch.Tensor | None = None
    ys: torch.Tensor | None = None
    stats: Stats = field(default_factory=Stats)
