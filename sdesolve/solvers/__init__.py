"""Solvers: objects with ``step(eq, t0, t1, y0, state, noise) -> Step``."""
from .base import Solver, Step
from .langevin import AnnealedLangevin, Langevin, PredictorCorrector
from .rk import Euler, Heun, Midpoint, RK4Solver as RK4, RungeKutta
from .sde import Ancestral, EulerMaruyama, ReverseDiffusion
from .tableaus import ButcherTableau

__all__ = ["Solver", "Step", "ButcherTableau", "RungeKutta", "Euler", "Heun", "Midpoint", "RK4",
           "EulerMaruyama", "ReverseDiffusion", "Ancestral", "Langevin", "PredictorCorrector", "AnnealedLangevin"]
