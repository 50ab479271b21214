"""Score models trained elsewhere: diffusers UNets, EDM and k-diffusion denoisers, score_sde
networks, TorchScript files and state dicts.

Each adapter returns ``(process, score)``: the forward process the model was trained on and a
:class:`~sdesolve.scores.Score` that calls the model with its own time label and converts its
native prediction (see :mod:`sdesolve.scores`):

    from_diffusers(unet, scheduler)   DiscreteVP(scheduler.alphas_cumprod); the model is called
                                      as unet(x, timestep) with timestep = t (N - 1), a float
                                      between the integer training steps; prediction_type
                                      epsilon / sample / v_prediction -> eps / x0 / v
    from_edm(denoiser)                EDM(sigma_min, sigma_max); D(x, sigma) -> x0 (Karras et al.
                                      2022), on the variance-exploding scale: with another
                                      process it is called as D(x / alpha, sigma / alpha)
    from_kdiffusion(model)            the same for k-diffusion's model(x, sigma) denoisers; the
                                      noise range comes from model.sigma_min / sigma_max
    from_score_sde(model, process, parametrization=..., label=...)
                                      any process, parametrization (an object with ``kind``:
                                      sdesolve.train's EpsPrediction(), ... ) and time label
                                      (labels.discrete(1000) for score_sde's VP models,
                                      labels.sigma for its VE models)
    load_model(path, constructor=None)  a TorchScript file, or a state dict (weights_only=True)
                                      loaded into ``constructor()``

The model check. A model used with the wrong parametrization, time label or input scale still
returns finite numbers, and sampling silently produces noise. So every adapter probes the model
once, on a small batch, before its first use (``check=False`` skips it; :func:`check_model` runs
it by hand). At t = T the input x_T = sigma_T z is pure noise, and whatever the data
distribution, the posterior of x_0 given x_T is nearly its prior: the exact noise prediction is
E[z | x_T] = z - (alpha_T / sigma_T) E[x_0 | x_T], within alpha_T / sigma_T (0.006 for VP, 1/50 for
VE, 1/80 for EDM) of z in units of the data's scale, and the exact denoised prediction
E[x_0 | x_T] barely depends on z. What the network outputs is then checked where it is
well-conditioned:

    eps and score models:  the implied noise prediction reproduces z,
                           |eps_hat - z| / |z| < tol
    x0, v and denoisers:   the implied denoised prediction does not follow the noise,
                           |<x0_hat, z>| / |z|^2 < tol

(an eps-model's denoised prediction, (x - sigma eps_hat) / alpha, amplifies its error by
sigma_T / alpha_T, and an x0-model's noise prediction is dominated by x itself: each kind is
judged by its own output). This catches an eps-model declared as x0 / v / denoiser (its "x0"
follows z: slope ~ +1 or -1) and the reverse (its "eps" is the data mean, off by ~1), a model
returning sigma * score or score / sigma, inputs on another scale (a VE model on VP inputs), and
untrained networks. It cannot tell an x0-model from a v-model (both output roughly the data mean
at T), nor, on VE and EDM processes (alpha = 1, sigma_T far above the data's scale, where the
score -x / sigma_T^2 is as nearly constant in z as the denoised prediction), a score model
declared as x0, v or denoiser, or an eps model declared as v; and it does not prove the time
label right. The output is also checked for its shape and for
NaN/Inf at T and at a middle noise level.

``clip_sample`` and ``thresholding`` of a diffusers scheduler are sampler-side post-processing of
the denoised prediction; sdesolve's samplers do not apply them.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .discrete import DiscreteVP
from .paths import RectifiedFlow
from .processes import EDM
from .model_check import ModelCheck, ModelCheckError, _Call, _output, check_model
from .scores import ExternalScore, Score, labels

__all__ = ["from_diffusers", "from_edm", "from_kdiffusion", "from_score_sde", "load_model", "load_diffusers",
           "diffusers_schedule", "check_model", "ModelCheck", "ModelCheckError", "ExternalScore"]

_DIFFUSERS_KINDS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}


def _module_place(model):
    """(device, dtype) of a module's first floating parameter, or (None, float32)."""
    params = getattr(model, "parameters", None)
    if params is not None:
        for p in params():
            if p.is_floating_point():
                return p.device, p.dtype
    return None, torch.float32


def _finish(score: ExternalScore, shape, model, check: bool):
    if check and shape is not None:
        device, dtype = _module_place(model)
        score.check(shape, device=device, dtype=dtype)
    return score


# --- diffusers ----------------------------------------------------------------------------------------
def _config(obj) -> dict:
    cfg = getattr(obj, "config", None)
    if cfg is None:
        return {}
    return dict(cfg) if not isinstance(cfg, dict) else cfg


def _rounded_timestep(N: int):
    """t (N - 1) rounded to the nearest training step: for learned (table) time embeddings."""
    def label(process, t):
        return torch.round(t * (N - 1))
    label.__name__ = f"rounded_discrete({N})"
    return label


def from_diffusers(unet, scheduler, *, check: bool = True, check_tol: float = 0.5, **model_kwargs):
    """``(process, score)`` for a diffusers ``UNet2DModel`` (or any module called as
    ``model(sample, timestep, **kwargs)`` returning a tensor or an object with ``.sample``) and its
    DDPM-type scheduler (any scheduler with ``alphas_cumprod`` and ``config.prediction_type``:
    DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler, ... with linear, scaled_linear or
    squaredcos_cap_v2 betas).

    The process is ``DiscreteVP(scheduler.alphas_cumprod)``: timestep k sits at t = k / (N - 1)
    and the marginals match ``alphas_cumprod`` exactly there. The model receives the (float)
    timestep t (N - 1); a model with a learned (table) time embedding receives it rounded.
    ``prediction_type`` epsilon, sample and v_prediction map to eps, x0 and v. ``model_kwargs``
    (e.g. ``class_labels=...``) are passed on every call. The model check (module docstring) runs
    at once on ``(in_channels, sample_size, sample_size)`` from the UNet's config; an untrained
    network fails it, so pass ``check=False`` for one.

    To reproduce a diffusers sampling loop, run on :func:`diffusers_schedule`'s grid.

    Flow-matching schedulers (FlowMatch*, or ``use_flow_sigmas``): a velocity model on
    ``RectifiedFlow`` with t = sigma, see the flow-matching section of this module.
    """
    if is_flow_scheduler(scheduler):
        return from_diffusers_flow(unet, scheduler, check=check, check_tol=check_tol, **model_kwargs)
    if not hasattr(scheduler, "alphas_cumprod"):
        raise TypeError(f"from_diffusers: the scheduler {type(scheduler).__name__} has no alphas_cumprod; only "
                        f"discrete variance-preserving (DDPM-type) schedulers are supported (for a score_sde "
                        f"VE model use from_score_sde)")
    process = DiscreteVP.from_scheduler(scheduler)
    cfg = _config(scheduler)
    ptype = cfg["prediction_type"] if "prediction_type" in cfg else getattr(scheduler, "prediction_type", "epsilon")
    if ptype not in _DIFFUSERS_KINDS:
        raise ValueError(f"from_diffusers: prediction_type {ptype!r} of {type(scheduler).__name__} is not supported; "
                         f"supported: {', '.join(_DIFFUSERS_KINDS)}")
    n_cfg = cfg.get("num_train_timesteps")
    if n_cfg is not None and int(n_cfg) != process.N:
        raise ValueError(f"from_diffusers: the scheduler's num_train_timesteps = {n_cfg} but it has "
                         f"{process.N} alphas_cumprod")
    ucfg = _config(unet)
    learned = ucfg.get("time_embedding_type") == "learned"
    if ucfg.get("time_embedding_type") == "fourier":
        raise ValueError("from_diffusers: this UNet has a Fourier time embedding (a score_sde VE model labelled by "
                         "sigma); use from_score_sde(model, VESDE(...), parametrization=..., label=labels.sigma)")
    label = _rounded_timestep(process.N) if learned else labels.discrete(process.N)
    score = ExternalScore(_Call(unet, type(unet).__name__), process, _DIFFUSERS_KINDS[ptype], label, model=unet,
                          check=check, check_tol=check_tol, label_dtype=torch.int64 if learned else torch.float32,
                          **model_kwargs)
    shape = None
    if ucfg.get("in_channels") is not None and ucfg.get("sample_size") is not None:
        size = ucfg["sample_size"]
        hw = (size, size) if isinstance(size, int) else tuple(size)
        shape = (ucfg["in_channels"], *hw)
    return process, _finish(score, shape, unet, check)


def diffusers_schedule(scheduler, steps: int, mu: float | None = None) -> torch.Tensor:
    """The time grid of a diffusers scheduler's sampling loop with ``steps`` steps: its
    ``timesteps`` (after ``set_timesteps(steps)``, on a copy: the scheduler is not changed) mapped
    to t = timestep / (N - 1), followed by t = 0 (timestep 0) unless they end there.

    This is exactly the loop of a scheduler whose every step goes to the next timestep of its list
    and whose last step goes to timestep 0: DDIMScheduler with "leading" or "trailing" spacing and
    ``set_alpha_to_one=False``; DPMSolverMultistepScheduler / UniPCMultistepScheduler with
    ``final_sigmas_type="sigma_min"``. With ``set_alpha_to_one=True`` or ``final_sigmas_type="zero"``
    diffusers' last step goes to alpha = 1, sigma = 0, which the discrete process does not contain
    (its last knot, timestep 0, has sigma_0^2 = 1 - alphas_cumprod[0] > 0); this grid stops at
    timestep 0 instead. DDIM with "linspace" spacing steps from each timestep t to
    t - N // steps rather than to the next timestep of its list; that loop is not one grid.

    For a flow-matching scheduler: its sigmas (t = sigma; ``mu`` for dynamic shifting), see
    :func:`flow_schedule`.
    """
    if is_flow_scheduler(scheduler):
        return flow_schedule(scheduler, steps, mu)
    sched = copy.deepcopy(scheduler)
    sched.set_timesteps(steps)
    ts = torch.as_tensor(sched.timesteps).to(torch.float64).cpu()
    N = len(sched.alphas_cumprod)
    if ts.dim() != 1 or ts.numel() < 1 or not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError(f"diffusers_schedule: {type(scheduler).__name__}'s timesteps are not strictly decreasing: "
                         f"{ts.tolist()[:10]}")
    if float(ts[-1]) != 0.0:
        ts = torch.cat([ts, ts.new_zeros(1)])
    return ts / (N - 1)


def load_diffusers(path, unet_class=None, scheduler_class=None):
    """``(unet, scheduler)`` from a local ``save_pretrained`` folder, offline
    (``local_files_only=True``): either a pipeline folder with ``unet/`` and ``scheduler/``
    subfolders, or one folder holding both the UNet's files and ``scheduler_config.json``.
    Default classes: ``UNet2DModel`` and ``DDPMScheduler`` (any DDPM-type scheduler config loads
    into it: only the betas and prediction_type are used)."""
    import diffusers

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"load_diffusers: {path} is not a folder")
    unet_dir = path / "unet" if (path / "unet").is_dir() else path
    sched_dir = path / "scheduler" if (path / "scheduler").is_dir() else path
    if not (unet_dir / "config.json").is_file():
        raise FileNotFoundError(f"load_diffusers: no UNet config.json in {unet_dir}")
    if not (sched_dir / "scheduler_config.json").is_file():
        raise FileNotFoundError(f"load_diffusers: no scheduler_config.json in {sched_dir}")
    unet_class = unet_class or diffusers.UNet2DModel
    scheduler_class = scheduler_class or diffusers.DDPMScheduler
    unet = unet_class.from_pretrained(unet_dir, local_files_only=True)
    scheduler = scheduler_class.from_pretrained(sched_dir, local_files_only=True)
    return unet.eval(), scheduler


# --- EDM, k-diffusion, score_sde -------------------------------------------------------------------
def from_edm(denoiser, process=None, *, sigma_min: float = 0.002, sigma_max: float = 80.0, shape=None,
             check: bool = True, check_tol: float = 0.5, **model_kwargs):
    """``(process, score)`` for an EDM-preconditioned denoiser ``D(x, sigma) -> x0`` (Karras et al.
    2022) trained on x = x_0 + sigma z: by default the EDM process with its noise range
    [sigma_min, sigma_max]; with another ``process`` the denoiser is called on the equivalent
    variance-exploding input D(x / alpha, sigma / alpha). ``shape`` (one sample's shape) runs the
    model check at once; otherwise it runs at the first call."""
    process = process if process is not None else EDM(sigma_min, sigma_max)
    score = ExternalScore(_Call(denoiser, type(denoiser).__name__), process, "denoiser", labels.sigma,
                          model=denoiser, check=check, check_tol=check_tol, **model_kwargs)
    return process, _finish(score, shape, denoiser, check)


def from_kdiffusion(model, process=None, *, sigma_min: float | None = None, sigma_max: float | None = None,
                    shape=None, check: bool = True, check_tol: float = 0.5, **model_kwargs):
    """``(process, score)`` for a k-diffusion-style denoiser ``model(x, sigma, **extra_args) -> x0``
    (its sigma is sigma / alpha, its x is x / alpha: k-diffusion's variance-exploding convention).
    The noise range defaults to the model's ``sigma_min`` / ``sigma_max`` attributes (k-diffusion's
    wrappers have them), else EDM's 0.002 and 80."""
    def attr(name, given, default):
        if given is not None:
            return float(given)
        v = getattr(model, name, None)
        return float(v) if v is not None else default
    lo, hi = attr("sigma_min", sigma_min, 0.002), attr("sigma_max", sigma_max, 80.0)
    return from_edm(model, process, sigma_min=lo, sigma_max=hi, shape=shape, check=check, check_tol=check_tol,
                    **model_kwargs)


def from_score_sde(model, process, *, parametrization, label, shape=None, check: bool = True,
                   check_tol: float = 0.5, label_dtype=None, **model_kwargs):
    """``(process, score)`` for a network ``model(x, label, **kwargs)`` trained on ``process``.

    ``parametrization``: what the network predicts, an object with a ``kind`` in
    ``Score.kinds`` (``sdesolve.train``'s ``EpsPrediction()``, ``X0Prediction()``,
    ``VPrediction()``, ``ScorePrediction()``). ``label``: how it reads time, a function
    (process, t) -> label from :class:`~sdesolve.scores.labels`: score_sde's VP and sub-VP models
    take ``labels.discrete(1000)`` (t * 999) and predict eps (their ``get_score_fn`` divides by
    -sigma), its VE models (NCSN++) take ``labels.sigma`` and predict the score itself."""
    kind = getattr(parametrization, "kind", None)
    if kind not in Score.kinds:
        raise TypeError(f"from_score_sde: parametrization must be an object with a kind in {Score.kinds} "
                        f"(e.g. sdesolve.train.EpsPrediction()), got {parametrization!r}")
    score = ExternalScore(_Call(model, type(model).__name__), process, kind, label, model=model, check=check,
                          check_tol=check_tol, label_dtype=label_dtype, **model_kwargs)
    return process, _finish(score, shape, model, check)


# --- files ---------------------------------------------------------------------------------------------
def load_model(path, constructor=None, *, map_location="cpu", strict: bool = True) -> torch.nn.Module:
    """A module from ``path``, in eval mode: a TorchScript file (``torch.jit.load``) when no
    ``constructor`` is given; otherwise a state dict read with ``torch.load(weights_only=True)``
    (plain, or under a ``"state_dict"`` key) and loaded into ``constructor()``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_model: no such file {path}")
    if constructor is None:
        try:
            return torch.jit.load(str(path), map_location=map_location).eval()
        except RuntimeError as e:
            raise ValueError(f"load_model: {path} is not a TorchScript file ({str(e).splitlines()[0]}); for a state "
                             f"dict pass constructor= (a function building the module)") from None
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle, zip or weights-only refusals
        raise ValueError(f"load_model: cannot read {path} as a weights-only state dict "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"load_model: {path} holds a {type(state).__name__}, not a state dict")
    module = constructor()
    try:
        module.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        raise ValueError(f"load_model: the state dict in {path} does not fit {type(module).__name__}: {e}") from None
    return module.eval()


# --- flow-matching models ------------------------------------------------------------------------
# diffusers' flow-matching models: a velocity network on the linear path.
#
# diffusers' flow-matching schedulers (``FlowMatchEulerDiscreteScheduler``,
# ``FlowMatchHeunDiscreteScheduler``, and ``DPMSolverMultistepScheduler`` /
# ``UniPCMultistepScheduler`` with ``use_flow_sigmas=True`` and ``prediction_type="flow_prediction"``)
# all use x_sigma = (1 - sigma) x_0 + sigma z, a model called as ``model(x, timestep)`` with
# timestep = N sigma (N = ``num_train_timesteps``) and predicting the velocity u = z - x_0
# (FlowMatchEuler's step is x <- x + (sigma_next - sigma) u; the multistep schedulers store their
# timesteps as int64, so their model sees floor(N sigma), and so does ours). So the process is
# :class:`~sdesolve.paths.RectifiedFlow` with t = sigma, the score is
# ``Score.from_velocity(model, process)`` with the label N t, and the scheduler's shift (``shift``,
# ``flow_shift``), resolution-dependent dynamic shifting (``mu``), ``shift_terminal`` and the
# karras/exponential/beta sigma spacings are properties of the *grid* that the scheduler builds:
# :func:`flow_schedule` returns it (the scheduler's own ``sigmas``, t = sigma) for ``schedule=``.
# (A time shift can also be put into the process, ``TimeShift(RectifiedFlow(), s)``: the same
# marginals on another clock, for solvers that take their default grids; the velocity model is then
# evaluated at its own time, see :mod:`sdesolve.scores`.)
#
# The process: ``RectifiedFlow(T=1.0)``, the whole path (the FlowMatch schedulers start at
# sigma = 1 exactly, where lambda = -inf, which Euler/Heun on the probability-flow ODE and DDIM
# handle; the multistep ones start just below 1: 1 - 1/N shifted for DPM-Solver, 1 - 1e-6 for
# UniPC), t_min = min(1, shift) / N. To reproduce diffusers, sample on the scheduler's grid
# (``diffusers_schedule``); the default grids spaced in the log-SNR start at t = 0.999 on this
# path (``schedules.SIGMA_EDM_MAX``), those spaced in t at t = 1.


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
