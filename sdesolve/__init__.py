"""sdesolve: score-based diffusion models as SDEs and ODEs, and the solvers that sample them.

    import sdesolve as sds
    process = sds.VPSDE()
    score = sds.Score.from_eps(model, process)
    x = sds.sample(process, score, sds.DPMSolverPP(order=2), shape=(64, 2), steps=20, seed=0).y
"""
from . import bench, grid_optimization, labels, langevin_sampling, latent, metrics, ndp, repaint, schedules, train
from .controllers import FixedGrid, PIController
from .discrete import DiscreteVP
from .equations import ODE, SDE, DiffusionEquation, ProbabilityFlowODE, ReverseSDE
from .errors import MaxStepsError, NonFiniteError, SolverError, StepSizeError
from .external import (ExternalScore, ModelCheck, ModelCheckError, check_model, diffusers_schedule, from_diffusers,
                       from_edm, from_kdiffusion, from_score_sde, load_diffusers, load_model)
from .guidance import (AnnealedLangevinInpaint, ClassifierFreeGuidance, ClassifierGuidance, Colorize, Inpaint,
                       KnownReplacement, helmert_basis)
from .likelihood import (BitsPerDim, ExactTrace, Hutchinson, LikelihoodResult, Trace, bits_per_dim, dequantize,
                         log_likelihood, pixel_levels)
from .mixtures import GaussianMixture
from .noise import Noise
from .paths import CosinePath, GaussianPath, RectifiedFlow, TimeShift, dynamic_shift
from .processes import EDM, VESDE, VPSDE, Process, SubVPSDE
from .integrate import clear_cuda_graphs, sample, solve
from .scores import Score
from .solution import Solution, Stats
from .timeplan import Position
from .solvers import (DDIM, RK4, SRA1, AdaptiveSDE, Ancestral, AnnealedLangevin, Bosh3, ButcherTableau, Dopri5,
                      DPMSolver, DPMSolverPP, EDMHeun, Euler, EulerMaruyama, Heun, Langevin, Midpoint, Milstein,
                      PredictorCorrector, ReverseDiffusion, RungeKutta, Solver, Step, Tsit5, UniPC, append_zero)
from .solvers import DEIS, IPNDM, LMS, DPMSolverPP3MSDE, DPMSolverPPSDE, Restart, SASolver  # few-step samplers

#: sds.schedules.optimize: grids optimized for a model (set here: schedules must not import what samples)
schedules.optimize = grid_optimization.optimize

__version__ = "0.1.0"

__all__ = [
    # modules
    "bench", "metrics", "schedules", "train", "langevin_sampling", "latent", "ndp", "repaint",
    # processes, equations, scores
    "Process", "VPSDE", "SubVPSDE", "VESDE", "EDM", "DiscreteVP",
    "GaussianPath", "RectifiedFlow", "CosinePath", "TimeShift", "dynamic_shift", "SDE", "ODE", "DiffusionEquation",
    "ReverseSDE", "ProbabilityFlowODE",
    "Score", "labels", "GaussianMixture", "Noise",
    # solving
    "solve", "sample", "Solution", "Stats", "Position", "clear_cuda_graphs", "PIController", "FixedGrid",
    "SolverError", "NonFiniteError", "StepSizeError", "MaxStepsError",
    # solvers
    "Solver", "Step", "ButcherTableau", "RungeKutta", "Euler", "Heun", "Midpoint", "RK4", "Bosh3", "Dopri5", "Tsit5",
    "EulerMaruyama", "Milstein", "SRA1", "AdaptiveSDE", "ReverseDiffusion", "Ancestral", "Langevin",
    "PredictorCorrector", "AnnealedLangevin", "DDIM", "DPMSolver", "DPMSolverPP", "UniPC", "EDMHeun", "append_zero",
    "IPNDM", "DEIS", "LMS", "DPMSolverPP3MSDE", "DPMSolverPPSDE", "SASolver", "Restart",
    # likelihood
    "log_likelihood", "LikelihoodResult", "Trace", "ExactTrace", "Hutchinson", "bits_per_dim", "BitsPerDim",
    "dequantize", "pixel_levels",
    # models trained elsewhere, and conditioning
    "from_diffusers", "load_diffusers", "diffusers_schedule", "from_edm", "from_kdiffusion", "from_score_sde",
    "load_model", "check_model", "ModelCheck", "ModelCheckError", "ExternalScore",
    "ClassifierGuidance", "ClassifierFreeGuidance", "Inpaint", "Colorize", "KnownReplacement",
    "AnnealedLangevinInpaint", "helmert_basis",
]
