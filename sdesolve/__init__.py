"""sdesolve: score-based diffusion models as SDEs and ODEs, and the solvers that sample them.

    import sdesolve as sds
    process = sds.VPSDE()
    score = sds.Score.from_eps(model, process)
    x = sds.sample(process, score, sds.DPMSolverPP(order=2), shape=(64, 2), steps=20, seed=0).y
"""
from . import bench, metrics, schedules, train
from .equations import ODE, SDE, ProbabilityFlowODE, ReverseSDE
from .errors import MaxStepsError, NonFiniteError, SolverError, StepSizeError
from .mixtures import GaussianMixture
from .noise import Noise
from .processes import EDM, VESDE, VPSDE, Process, SubVPSDE
from .scores import Score, labels
from .solve import Solution, Stats, clear_cuda_graphs, sample, solve
from .controllers import PIController
from .solvers import AdaptiveSDE, Bosh3, Dopri5, Milstein, SRA1, Tsit5
from .discrete import DiscreteVP
from .solvers import DDIM, DPMSolver, DPMSolverPP, EDMHeun, UniPC, append_zero
from .solvers import (Ancestral, AnnealedLangevin, ButcherTableau, Euler, EulerMaruyama, Heun, Langevin,
                      Midpoint, PredictorCorrector, ReverseDiffusion, RK4, RungeKutta, Solver, Step)
from .likelihood import (BitsPerDim, ExactTrace, Hutchinson, LikelihoodResult, Trace, bits_per_dim, dequantize,
                         log_likelihood, pixel_levels)
from .external import (ExternalScore, ModelCheck, ModelCheckError, check_model, diffusers_schedule, from_diffusers,
                       from_edm, from_kdiffusion, from_score_sde, load_diffusers, load_model)
from .guidance import (AnnealedLangevinInpaint, ClassifierFreeGuidance, ClassifierGuidance, Colorize, Inpaint,
                       KnownReplacement, helmert_basis)

__version__ = "0.1.0"

__all__ = [
    "bench", "metrics", "schedules", "train", "ODE", "SDE", "ProbabilityFlowODE", "ReverseSDE", "MaxStepsError", "NonFiniteError",
    "SolverError", "StepSizeError", "GaussianMixture", "Noise", "EDM", "VESDE", "VPSDE", "Process", "SubVPSDE",
    "Score", "labels", "Solution", "Stats", "clear_cuda_graphs", "sample", "solve",
    "Ancestral", "AnnealedLangevin", "ButcherTableau", "Euler", "EulerMaruyama", "Heun", "Langevin", "Midpoint",
    "PredictorCorrector", "ReverseDiffusion", "RK4", "RungeKutta", "Solver", "Step",
]
__all__ += ["PIController", "Bosh3", "Dopri5", "Tsit5", "AdaptiveSDE", "Milstein", "SRA1"]
__all__ += ["DiscreteVP", "DDIM", "DPMSolver", "DPMSolverPP", "UniPC", "EDMHeun", "append_zero"]
__all__ += ["Trace", "ExactTrace", "Hutchinson", "LikelihoodResult", "log_likelihood", "BitsPerDim", "bits_per_dim",
            "pixel_levels", "dequantize"]
__all__ += ["from_diffusers", "from_edm", "from_kdiffusion", "from_score_sde", "load_model", "load_diffusers",
            "diffusers_schedule", "check_model", "ModelCheck", "ModelCheckError", "ExternalScore"]
__all__ += ["ClassifierGuidance", "ClassifierFreeGuidance", "Inpaint", "Colorize", "KnownReplacement",
            "AnnealedLangevinInpaint", "helmert_basis"]
