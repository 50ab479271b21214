"""What every solver is: one step of an equation, stateless between calls.

``solver.step(eq, t0, t1, y0, state, noise, at) -> Step(y, error, state)``

* ``t0``, ``t1``: float64 tensors of shape (B,) (per-sample times; on a fixed grid all equal).
  ``t1 < t0`` for reverse-time integration.
* ``state``: whatever the solver carries from step to step (multistep history, an FSAL stage),
  created by ``solver.init(eq, t0, y0)``; the solver keeps nothing on itself.
* ``noise``: a :class:`sdesolve.noise.Noise` positioned at this step (``noise.normal(like,
  draw)``, draws 0..15 for the solver's own normals, see :class:`sdesolve.noise.Draw`);
  deterministic solvers ignore it.
* ``at``: a :class:`~sdesolve.timeplan.Position`, where the step is (index, number of steps, the
  grid, whether it is the last step and whether it ends where the model is not evaluated). Under
  step-size control it knows no grid.
* ``Step.error``: for embedded methods, the per-sample error norm (B,) that the controller
  compares with 1; ``None`` otherwise.

Adding a solver
---------------
Subclass :class:`Solver`, declare what it is (``order``, ``stochastic``, ``nfe_per_step``, the
``equation`` type it needs, ``default_schedule``) and write ``step``; write ``init`` when it
carries a state. The loop, the grid, the controller, the noise and the error reporting are not
the solver's business. Build ``step`` from the shared pieces:

* a Runge-Kutta method is a tableau: ``class Ralston(RungeKutta): tableau = ButcherTableau(...)``
  (the tableau checks its order conditions when it is made);
* diffusion solvers (``equation = DiffusionEquation``) work in the half log-SNR with
  :func:`sdesolve.solvers.exponential.point` and the first-order steps ``data_step`` /
  ``noise_step`` / ``ancestral``; a multistep method keeps its history in ``state`` and reads its
  warm-up and final orders from ``at``. DDIM is ``data_step`` with the denoised prediction::

      class DDIM0(Solver):
          equation = DiffusionEquation
          def step(self, eq, t0, t1, y0, state, noise, at):
              a, b = point(eq.process, t0), point(eq.process, t1)
              return Step(data_step(a, b, y0, eq.denoised(t0, y0)))

* an SDE method draws its normals from ``noise`` and uses the fused updates of
  :mod:`sdesolve.kernels` (``em_step(y, f, g, dt, **kernel_noise(noise, y, 0))``);
* a step that is affine in the state and the model's output, with coefficients that depend on
  the step's times only, computes them for the whole grid at once and decides how to do the
  update once per solve (:class:`AffineSteps` made in ``init``; the equation states its form
  through :meth:`~sdesolve.Equation.score_linear`), as Euler, Euler-Maruyama and reverse
  diffusion do on a fixed grid.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from ..equations import DiffusionEquation, Equation
from ..kernels import affine_noise_step, held_affine_step, kernel_mode
from ..kernels.common import compute_dtype
from ..noise import kernel_noise
from ..schedules import uniform
from ..tensors import per_sample
from ..timeplan import CONTROLLED, Position

__all__ = ["Solver", "Step", "Position", "CONTROLLED", "per_sample", "linear_step_table", "AffineSteps"]


@dataclass
class Step:
    """The result of one step: the new state ``y``, the per-sample error norm (embedded methods,
    else None) and the solver's state for the next step."""

    y: torch.Tensor
    error: torch.Tensor | None = None
    state: Any = None


class Solver:
    """Base class of every solver; it declares every hook the loop calls (see the module
    docstring, "Adding a solver")."""

    #: order of accuracy (ODE order, or strong order for SDE methods); weak order where it matters
    order: float = 1.0
    weak_order: float | None = None
    #: integrates the reverse SDE (True) or the probability-flow ODE (False)
    stochastic: bool = False
    #: step-size controlled when no grid is given (embedded pairs)
    adaptive: bool = False
    #: model evaluations per step
    nfe_per_step: int = 1
    #: the SDE noise structures it handles
    noise_types: tuple = ("diagonal", "scalar", "additive")
    #: the equation type it needs: a DiffusionEquation for solvers that use the process and the
    #: denoised prediction (:class:`sdesolve.equations.DiffusionEquation`)
    equation: type = Equation
    #: the grid a solver is usually run on, when ``sample`` is given only ``steps``
    default_schedule = staticmethod(uniform)
    #: tolerances of an adaptive solver's error norm (None: the solver has no error norm)
    rtol: float | None = None
    atol: float | None = None
    #: the step-size law the method's authors use (:meth:`PIController.for_solver` applies it)
    controller_options: dict = {}
    #: dense output of an adaptive Runge-Kutta pair (None: the loop stops at save times instead)
    dense = None

    @property
    def error_order(self) -> float:
        """The exponent k of the error estimate O(h^k) that the controller's law uses."""
        return self.order + 1

    @property
    def needs_process(self) -> bool:
        """Whether the solver needs a diffusion equation (its process and denoised prediction)."""
        return issubclass(self.equation, DiffusionEquation)

    def check(self, eq) -> None:
        """Raise if this solver cannot integrate ``eq``."""
        name = type(self).__name__
        if self.stochastic and not eq.is_sde:
            raise TypeError(f"{name} integrates SDEs; {type(eq).__name__} is an ODE")
        if not self.stochastic and eq.is_sde:
            raise TypeError(f"{name} integrates ODEs; {type(eq).__name__} is an SDE (use an SDE solver, "
                            "or the process's probability_flow)")
        if eq.is_sde and eq.noise_type not in self.noise_types:
            raise TypeError(f"{name} supports {self.noise_types} noise, the equation has {eq.noise_type!r} noise")
        if not isinstance(eq, self.equation):
            raise TypeError(f"{name} needs a diffusion equation ({self.equation.__name__}: process.reverse(score) or "
                            f"process.probability_flow(score)), got {type(eq).__name__}")

    def init(self, eq, t0: torch.Tensor, y0: torch.Tensor):
        """The state before the first step (default: none)."""
        return None

    def start(self, eq, t0: torch.Tensor, y0: torch.Tensor):
        """(state, f(t0, y0) or None) before the first step of a step-size controlled solve; a solver
        that evaluates the drift at the start anyway (FSAL pairs) hands it to the controller's
        initial step-size selection."""
        return self.init(eq, t0, y0), None

    def step(self, eq, t0: torch.Tensor, t1: torch.Tensor, y0: torch.Tensor, state, noise,
             at: Position = CONTROLLED) -> Step:
        raise NotImplementedError

    def interpolate(self, y0, y1, ks, h, theta):
        """Dense output y(t0 + theta h) within an accepted step (solvers with ``dense``)."""
        raise TypeError(f"{type(self).__name__} has no dense output")

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


def linear_step_table(eq, noise: bool) -> AffineSteps | None:
    """For an equation linear in the score (:meth:`~sdesolve.Equation.score_linear`), with a
    diffusion g when ``noise`` and without one otherwise: the Euler(-Maruyama) steps over a fixed
    grid, x1 = (1 + f h) x + c h score (+ g sqrt|h| z), h = t1 - t0, as :class:`AffineSteps`; None
    for any other equation."""
    parts = eq.score_linear()
    if parts is None or (parts[2] is not None) != noise:
        return None
    return AffineSteps(functools.partial(_linear_coefficients, *parts))


def _linear_coefficients(f, c, g, t0, t1):
    h = t1 - t0
    a, b = 1.0 + f(t0) * h, c(t0) * h
    return (a, b) if g is None else (a, b, g(t0) * h.abs().sqrt())


class AffineSteps:
    """The steps x1 = a x + b s (+ c z) of a solver whose coefficients depend on the step's times
    only (s: the model's output at (t0, x); z: the step's standard normal, draw 0), on the fixed
    grid that the loop's positions name: ``fn(t0, t1)`` (float64, elementwise in the (n,) starts
    and ends of the steps) gives (a, b[, c]) for every step at once, at the first step, in the
    state's compute dtype; step i reads row i (its :class:`~sdesolve.timeplan.Position`'s index,
    whose grid points i and i + 1 are t0 and t1). How the update is done is decided then too:
    float32 and float64 states on the reference path of the kernels take the arithmetic of
    :func:`~sdesolve.kernels.held_affine_step` (two or three full-size operations, nothing else),
    others :func:`~sdesolve.kernels.affine_noise_step` (its checks and dispatch) with the row.

    Made per solve (the solver's state, from ``init``). Only host grids that carry no gradient
    are tabulated (as by :class:`sdesolve.tensors.PointTable`), for CPU states: ``row`` is None for
    any other step (no grid, a grid with a gradient or on a device, times with a gradient, a CUDA
    state), where the solver computes its coefficients per call; a state of another dtype than the
    table's, or a position on another grid, has the table made again. A step reads its row by the
    position alone: whoever hands a step a position with a grid hands it that grid's times."""

    __slots__ = ("fn", "grid", "dtype", "columns", "plain")

    def __init__(self, fn):
        self.fn = fn
        self.grid = self.dtype = self.columns = None
        self.plain = False

    def row(self, at: Position, t0: torch.Tensor, y: torch.Tensor):
        """(a, b[, c]) of step ``at`` from ``t0`` for state ``y``, one-element tensors of y's compute
        dtype, or None (also where t0 carries a gradient, which the grid's table would not pass on)."""
        if t0.requires_grad:
            return None
        if at.grid is not self.grid or y.dtype is not self.dtype:
            if not self._tabulate(at.grid, y):
                return None
        i, c = at.index, self.columns
        return (c[0][i], c[1][i]) if len(c) == 2 else (c[0][i], c[1][i], c[2][i])

    def _tabulate(self, grid, y) -> bool:
        if (grid is None or grid.requires_grad or grid.device.type != "cpu" or y.device.type != "cpu"
                or grid.dim() != 1 or grid.dtype != torch.float64):
            return False
        ct = compute_dtype(y.dtype, "a fixed-grid step")
        n = grid.shape[0] - 1
        columns = self.fn(grid[:-1], grid[1:])
        self.columns = [torch.as_tensor(c, dtype=torch.float64).broadcast_to((n,)).to(ct) for c in columns]
        self.grid, self.dtype = grid, y.dtype
        self.plain = y.dtype == ct and kernel_mode() != "triton"
        return True

    def update(self, x: torch.Tensor, row, s: torch.Tensor, noise) -> torch.Tensor:
        """x1 = a x + b s (+ c z) with the ``row`` of this step, z drawn from ``noise`` (draw 0)."""
        plain = self.plain and s.dtype is x.dtype  # else the checked path converts s to x's compute dtype
        if len(row) == 2:
            return held_affine_step(x, row[0], s, row[1]) if plain else affine_noise_step(x, row[0], s, row[1])
        if plain and noise is not None:
            return held_affine_step(x, row[0], s, row[1], row[2], noise.normal(x, 0))
        return affine_noise_step(x, row[0], s, row[1], row[2], **kernel_noise(noise, x, 0))
