"""What every solver is: one step of an equation, stateless between calls.

``solver.step(eq, t0, t1, y0, state, noise) -> Step(y, error, state)``

* ``t0``, ``t1``: float64 tensors of shape (B,) (per-sample times; on a fixed grid all equal).
  ``t1 < t0`` for reverse-time integration.
* ``state``: whatever the solver carries from step to step (multistep history, an FSAL stage),
  created by ``solver.init(eq, t0, y0, t_end)``; the solver keeps nothing on itself.
* ``noise``: a :class:`sdesolve.noise.Noise` positioned at this step (``noise.normal(like,
  draw)``); deterministic solvers ignore it.
* ``Step.error``: for embedded methods, the per-sample error norm (B,) that the controller
  compares with 1; ``None`` otherwise.

A solver declares ``order`` (ODE order, or strong order for SDE methods), ``weak_order`` where
it matters, ``stochastic`` (it integrates the reverse SDE rather than the probability-flow
ODE), ``adaptive``, ``nfe_per_step`` and the noise types it supports; ``check(eq)`` raises if it
cannot solve ``eq``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..schedules import uniform
from ..tensors import per_sample

__all__ = ["Solver", "Step", "per_sample"]


@dataclass
class Step:
    y: torch.Tensor
    error: torch.Tensor | None = None
    state: Any = None


class Solver:
    order: float = 1.0
    weak_order: float | None = None
    stochastic: bool = False
    adaptive: bool = False
    nfe_per_step: int = 1
    noise_types: tuple = ("diagonal", "scalar", "additive")
    #: needs ``eq.process`` and ``eq.denoised`` (the diffusion-specific samplers)
    needs_process: bool = False
    #: solvers that plan over the whole fixed grid (churn per step count, lower-order final
    #: steps) set this and receive ``init(..., grid=times)``
    uses_grid: bool = False
    #: the grid a solver is usually run on, when ``sample`` is given only ``steps``
    default_schedule = staticmethod(uniform)

    def check(self, eq) -> None:
        name = type(self).__name__
        if self.stochastic and not eq.is_sde:
            raise TypeError(f"{name} integrates SDEs; {type(eq).__name__} is an ODE")
        if not self.stochastic and eq.is_sde:
            raise TypeError(f"{name} integrates ODEs; {type(eq).__name__} is an SDE (use an SDE solver, "
                            "or the process's probability_flow)")
        if eq.is_sde and eq.noise_type not in self.noise_types:
            raise TypeError(f"{name} supports {self.noise_types} noise, the equation has {eq.noise_type!r} noise")
        if self.needs_process and getattr(eq, "process", None) is None:
            raise TypeError(f"{name} needs a diffusion equation (process.reverse(score) or "
                            f"process.probability_flow(score)), got {type(eq).__name__}")

    def init(self, eq, t0: torch.Tensor, y0: torch.Tensor, t_end: torch.Tensor | None = None):
        """The state before the first step; ``t_end`` is where the whole solve ends."""
        return None

    def step(self, eq, t0: torch.Tensor, t1: torch.Tensor, y0: torch.Tensor, state, noise) -> Step:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"
