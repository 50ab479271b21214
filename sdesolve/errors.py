"""Errors that say what went wrong, when, and for which samples."""
from __future__ import annotations

__all__ = ["SolverError", "NonFiniteError", "StepSizeError", "MaxStepsError"]


def _fmt(samples, limit: int = 10) -> str:
    samples = list(samples)
    more = f" and {len(samples) - limit} more" if len(samples) > limit else ""
    return f"{samples[:limit]}{more}"


class SolverError(RuntimeError):
    """Base class; ``step``, ``t`` and ``samples`` say where it happened."""

    def __init__(self, message: str, step=None, t=None, samples=()):
        super().__init__(message)
        self.step, self.t, self.samples = step, t, list(samples)


class NonFiniteError(SolverError, FloatingPointError):
    """The state became NaN or Inf: the score, drift or diffusion returned non-finite values."""


class StepSizeError(SolverError):
    """An adaptive step size fell below the smallest representable step."""


class MaxStepsError(SolverError):
    """An adaptive solve could not meet its tolerance within ``max_steps``."""
