"""The sampler benchmark: samplers x NFE budgets (adaptive ones x tolerances) on one model, the
same x_T for every row, peers of other libraries in the same run; a table, a Pareto plot and a
JSON record. ``sdesolve bench`` is its command line; under ``torchrun`` the samples are sharded
over the ranks."""
from . import distributed
from .peers import (Diffusers, KDiffusion, Peer, PeerUnavailable, Torchdiffeq, Torchode, Torchsde, Unavailable, default_peers,
                    kdiffusion_sampling)
from . import paired
from .problems import Problem, checkpoint_problem, gmm8d, held_out_images, mixture_from_json, mixture_problem, ring8
from .quality import Quality, feature_quality, mixture_quality, reference_stats, vector_quality
from .report import analyse, markdown, pareto_front, plot, summary, write
from .runner import Entry, environment, fit_steps, grid, initial_noise, run, solver_label, with_tolerance

__all__ = ["distributed", "Peer", "PeerUnavailable", "KDiffusion", "Diffusers", "Torchdiffeq", "Torchode", "Torchsde", "Unavailable",
           "default_peers", "kdiffusion_sampling", "Problem", "checkpoint_problem", "mixture_problem", "ring8", "gmm8d",
           "held_out_images", "mixture_from_json", "Quality", "feature_quality", "mixture_quality", "vector_quality",
           "reference_stats", "paired", "summary", "analyse", "markdown",
           "pareto_front", "plot", "write", "Entry", "grid", "run", "initial_noise", "solver_label", "with_tolerance",
           "fit_steps", "environment"]
