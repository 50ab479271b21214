"""Solvers: objects with ``step(eq, t0, t1, y0, state, noise, at) -> Step`` (see :mod:`.base`)."""
from .base import Solver, Step
from .langevin import AnnealedLangevin, Langevin, PredictorCorrector
from .rk import RK4, Euler, Heun, Midpoint, RungeKutta
from .sde import Ancestral, EulerMaruyama, ReverseDiffusion
from .tableaus import ButcherTableau
from .adaptive import AdaptiveSDE, Bosh3, DenseOutput, Dopri5, EmbeddedRungeKutta, Tsit5
from .srk import SRA1, Milstein
from .diffusion import DDIM, DiffusionSolver, EDMHeun, append_zero
from .dpm import DPMSolver, DPMSolverPP
from .unipc import UniPC
from .multistep import DEIS, IPNDM, LMS
from .dpm_sde import DPMSolverPP3MSDE, DPMSolverPPSDE
from .sa_solver import SASolver, tau_band
from .restart import Restart

__all__ = ["Solver", "Step", "ButcherTableau", "RungeKutta", "Euler", "Heun", "Midpoint", "RK4",
           "EulerMaruyama", "ReverseDiffusion", "Ancestral", "Langevin", "PredictorCorrector", "AnnealedLangevin"]
__all__ += ["Bosh3", "Dopri5", "Tsit5", "EmbeddedRungeKutta", "DenseOutput", "AdaptiveSDE", "Milstein", "SRA1"]
__all__ += ["DiffusionSolver", "DDIM", "DPMSolver", "DPMSolverPP", "UniPC", "EDMHeun", "append_zero"]
__all__ += ["IPNDM", "LMS", "DEIS", "DPMSolverPP3MSDE", "DPMSolverPPSDE", "SASolver", "tau_band", "Restart"]
