"""sdesolve: score-based diffusion models as SDEs and ODEs, and the solvers that sample them.

    import sdesolve as sds
    process = sds.VPSDE()
    score = sds.Score.from_eps(model, process)
    x = sds.sample(process, score, sds.DPMSolverPP(order=2), shape=(64, 2), steps=20, seed=0).y
"""
from . import metrics, schedules
from .equations import ODE, SDE, ProbabilityFlowODE, ReverseSDE
from .errors import MaxStepsError, NonFiniteError, SolverError, StepSizeError
from .mixtures import GaussianMixture
from .noise import Noise
from .processes import EDM, VESDE, VPSDE, Process, SubVPSDE
from .scores import Score, labels
from .solve import Solution, Stats, sample, solve
from .solvers import (Ancestral, AnnealedLangevin, ButcherTableau, Euler, EulerMaruyama, Heun, Langevin,
                      Midpoint, PredictorCorrector, ReverseDiffusion, RK4, RungeKutta, Solver, Step)

__version__ = "0.1.0"

__all__ = [
    "metrics", "schedules", "ODE", "SDE", "ProbabilityFlowODE", "ReverseSDE", "MaxStepsError", "NonFiniteError",
    "SolverError", "StepSizeError", "GaussianMixture", "Noise", "EDM", "VESDE", "VPSDE", "Process", "SubVPSDE",
    "Score", "labels", "Solution", "Stats", "sample", "solve",
    "Ancestral", "AnnealedLangevin", "ButcherTableau", "Euler", "EulerMaruyama", "Heun", "Langevin", "Midpoint",
    "PredictorCorrector", "ReverseDiffusion", "RK4", "RungeKutta", "Solver", "Step",
]
