"""diffusers' flow-matching models: a velocity network on the linear path.

diffusers' flow-matching schedulers (``FlowMatchEulerDiscreteScheduler``,
``FlowMatchHeunDiscreteScheduler``, and ``DPMSolverMultistepScheduler`` /
``UniPCMultistepScheduler`` with ``use_flow_sigmas=True`` and ``prediction_type="flow_prediction"``)
all use x_sigma = (1 - sigma) x_0 + sigma z, a model called as ``model(x, timestep)`` with
timestep = N sigma (N = ``num_train_timesteps``) and predicting the velocity u = z - x_0
(FlowMatchEuler's step is x <- x + (sigma_next - sigma) u; the multistep schedulers store their
timesteps as int64, so their model sees floor(N sigma), and so does ours). So the process is
:class:`~sdesolve.paths.RectifiedFlow` with t = sigma, the score is
``Score.from_velocity(model, process)`` with the label N t, and the scheduler's shift (``shift``,
``flow_shift``), resolution-dependent dynamic shifting (``mu``), ``shift_terminal`` and the
karras/exponential/beta sigma spacings are properties of the *grid* that the scheduler builds:
:func:`flow_schedule` returns it (the scheduler's own ``sigmas``, t = sigma) for ``schedule=``.
(A time shift can also be put into the process, ``TimeShift(RectifiedFlow(), s)``: the same
marginals on another clock, for solvers that take their default grids; the velocity model is then
evaluated at its own time, see :mod:`sdesolve.scores`.)

The process: ``RectifiedFlow(T=1.0)``, the whole path (the FlowMatch schedulers start at
sigma = 1 exactly, where lambda = -inf, which Euler/Heun on the probability-flow ODE and DDIM
handle; the multistep ones start just below 1: 1 - 1/N shifted for DPM-Solver, 1 - 1e-6 for
UniPC), t_min = min(1, shift) / N. Since lambda(T) = -inf, sample on the scheduler's grid
(``diffusers_schedule``), as diffusers does, rather than a default grid uniform in the log-SNR.
"""
from __future__ import annotations

import copy

import torch

from .paths import RectifiedFlow

__all__ = ["is_flow_scheduler", "from_diffusers_flow", "flow_schedule"]


def _cfg(obj) -> dict:
    cfg = getattr(obj, "config", None)
    return {} if cfg is None else dict(cfg)


def is_flow_scheduler(scheduler) -> bool:
    """A FlowMatch* scheduler, or a multistep one with ``use_flow_sigmas`` (without it, a
    multistep scheduler steps a DDPM schedule, and ``flow_prediction`` there is refused)."""
    cfg = _cfg(scheduler)
    return type(scheduler).__name__.startswith("FlowMatch") or bool(cfg.get("use_flow_sigmas"))


def _flow_timestep(N: int, truncate: bool = False):
    """The label N t (diffusers' flow-matching timestep, t = sigma), or floor(N t): the multistep
    schedulers with ``use_flow_sigmas`` store their timesteps as int64, truncated."""
    def label(process, t):
        return torch.floor(t * N) if truncate else t * N
    label.__name__ = f"flow_timestep({N}{', truncated' if truncate else ''})"
    return label


def from_diffusers_flow(unet, scheduler, *, check: bool = True, check_tol: float = 0.5, **model_kwargs):
    """``(RectifiedFlow, velocity score)`` for a flow-matching diffusers model (module docstring)."""
    from .external import ExternalScore, _Call, _config, _finish

    cfg = _cfg(scheduler)
    ptype = cfg.get("prediction_type", "flow_prediction")
    if not type(scheduler).__name__.startswith("FlowMatch") and ptype != "flow_prediction":
        raise ValueError(f"from_diffusers: {type(scheduler).__name__} uses flow sigmas with prediction_type "
                         f"{ptype!r}; a flow-matching model needs prediction_type='flow_prediction'")
    N = int(cfg.get("num_train_timesteps", 1000))
    shift = float(cfg.get("shift", cfg.get("flow_shift", 1.0)))
    t_min = min(1.0 / N, shift / N)
    process = RectifiedFlow(T=1.0, t_min=t_min)
    label = _flow_timestep(N, truncate=not type(scheduler).__name__.startswith("FlowMatch"))
    score = ExternalScore(_Call(unet, type(unet).__name__), process, "velocity", label, model=unet,
                          check=check, check_tol=check_tol, label_dtype=torch.float32, **model_kwargs)
    ucfg = _config(unet)
    shape = None
    if ucfg.get("in_channels") is not None and ucfg.get("sample_size") is not None:
        size = ucfg["sample_size"]
        shape = (ucfg["in_channels"], *((size, size) if isinstance(size, int) else tuple(size)))
    return process, _finish(score, shape, unet, check)


def flow_schedule(scheduler, steps: int, mu: float | None = None) -> torch.Tensor:
    """The grid of a flow-matching scheduler's loop with ``steps`` steps: its ``sigmas`` after
    ``set_timesteps(steps)`` (``mu=`` with dynamic shifting) on a copy, as float64 times t = sigma,
    ending at 0. FlowMatchHeun's interleaved sigmas are reduced to the step boundaries."""
    sched = copy.deepcopy(scheduler)
    kw = {} if mu is None else {"mu": mu}
    sched.set_timesteps(steps, **kw)
    s = torch.as_tensor(sched.sigmas).to(torch.float64).cpu()
    if s.numel() == 2 * steps:  # Heun: s0, s1, s1, s2, s2, ..., 0
        s = torch.cat([s[:1], s[1::2]])
    if s.numel() != steps + 1 or not bool((s[1:] < s[:-1]).all()):
        raise ValueError(f"flow_schedule: {type(scheduler).__name__}'s sigmas are not {steps + 1} decreasing times: "
                         f"{s.tolist()[:8]}")
    return s
