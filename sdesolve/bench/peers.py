"""Samplers of other libraries, run on the same model, from the same x_T, in the same benchmark.

Each peer wraps one sampler of a library behind one method,
``peer.sample(process, score, x_T, steps=... | tol=..., seed=..., offset=...) -> (y, calls)``,
with y the sample at ``process.t_min`` (the end point of sdesolve's samplers) and ``calls`` the
model evaluations it made (counted by wrapping the model). A peer that cannot run raises
:class:`PeerUnavailable` from :meth:`Peer.check` with the reason, so a benchmark skips its rows.

* :class:`KDiffusion`: a sampler of k-diffusion's ``sampling.py`` (Karras et al. 2022), loaded on
  its own from the k-diffusion wheel in ``.cache/peers`` (``$SDESOLVE_PEERS``; the package
  itself needs torchvision). k-diffusion works in the variance-exploding variable
  x_k = x / alpha(t) with noise level sigma = sigma(t) / alpha(t) and a denoiser D(x_k; sigma);
  for any process the model is given to it as D(x_k; sigma) = E[x_0 | x_t = alpha(t) x_k] with
  t = t(sigma), x_k(T) = x_T / alpha(T), and its result is multiplied by alpha(t_min). Grid:
  Karras et al.'s rho = 7 spacing in sigma, from sigma(T) to sigma(t_min) (not to 0).
  Samplers that take a ``noise_sampler`` are given the per-sample counter-based noise of
  :mod:`sdesolve.noise` (draw 0 of step i), so their samples do not depend on the batch either.
* :class:`Diffusers`: a diffusers scheduler (DDIM, DPM-Solver multistep, UniPC) stepping a
  discrete DDPM schedule of N = 1000 timesteps that samples the continuous variance-preserving
  process at t_k = t_min + k (T - t_min) / (N - 1): alphas_cumprod[k] = alpha(t_k)^2 (given as
  ``trained_betas``); the model is called at time t_k for timestep k (epsilon prediction), and
  the final step goes to timestep 0 = t_min. Only for variance-preserving processes.
* :class:`DiffusersFlow`: diffusers' FlowMatchEuler / FlowMatchHeun scheduler on a linear-path
  (rectified-flow) process, x_t = (1 - t) x_0 + t z, sigma = t, given the model's velocity; its
  sigmas are set to the uniform grid from T to t_min (Heun's interleaved), so its counterpart
  is ``Euler`` / ``Heun`` on ``uniform``. Only for linear paths.
* :class:`Torchdiffeq`: ``torchdiffeq.odeint`` on the probability-flow ODE from T to t_min (one
  step size for the whole batch, its error norm taken over the whole batch), told to step onto
  the end points (``step_t``) rather than past t_min.
* :class:`Torchsde`: ``torchsde.sdeint`` on the reverse SDE, in the forward time s = T - t
  (dx = -[f x - g^2 score] ds + g dW_s), fixed steps, with torchsde's own Brownian motion
  (``BrownianInterval`` seeded from the run's seed and the shard's first index: these rows depend
  on the split of a sharded run).
"""
from __future__ import annotations

import glob
import importlib.util
import inspect
import os
import sys
import types
import zipfile
from pathlib import Path

import torch

from ..noise import Noise, streams

__all__ = ["PeerUnavailable", "Peer", "KDiffusion", "Diffusers", "DiffusersFlow", "Torchdiffeq", "Torchsde", "Unavailable",
           "kdiffusion_sampling",
           "peers_dir", "default_peers"]

_ROOT = Path(__file__).resolve().parents[2]


class PeerUnavailable(RuntimeError):
    """A peer sampler that cannot run here (library missing, or the process does not suit it)."""


def peers_dir() -> Path:
    """Where peer wheels are looked for: ``$SDESOLVE_PEERS`` or ``<repository>/.cache/peers``."""
    return Path(os.environ.get("SDESOLVE_PEERS", _ROOT / ".cache" / "peers"))


def _append_dims(x, target_dims):
    return x[(...,) + (None,) * (target_dims - x.ndim)]


def kdiffusion_sampling():
    """The module ``k_diffusion.sampling``, read from the k-diffusion wheel in :func:`peers_dir`.

    Only that file is loaded; its one in-package import, ``utils``, gets the one function it
    uses (``append_dims``), written here. Raises :class:`PeerUnavailable` if no wheel is there
    or the file's own imports (scipy, torchdiffeq, torchsde, tqdm) are missing."""
    name = "k_diffusion.sampling"
    if name in sys.modules:
        return sys.modules[name]
    wheels = sorted(glob.glob(os.path.join(peers_dir(), "k_diffusion-*.whl")))
    if not wheels:
        raise PeerUnavailable(f"no k-diffusion wheel in {peers_dir()} (the set-up step downloads it)")
    with zipfile.ZipFile(wheels[-1]) as zf:
        source = zf.read("k_diffusion/sampling.py").decode()
    pkg = sys.modules.get("k_diffusion")
    if pkg is None:
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = []
        sys.modules["k_diffusion"] = pkg
    utils = sys.modules.get("k_diffusion.utils")
    if utils is None:
        utils = types.ModuleType("k_diffusion.utils")
        utils.append_dims = _append_dims
        sys.modules["k_diffusion.utils"] = utils
    pkg.utils = utils
    spec = importlib.util.spec_from_loader(name, loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "k_diffusion"
    try:
        exec(compile(source, f"{wheels[-1]}/k_diffusion/sampling.py", "exec"), mod.__dict__)
    except ImportError as e:
        raise PeerUnavailable(f"k-diffusion's sampling.py cannot be imported: {e}") from None
    sys.modules[name] = mod
    return mod


def _require(module: str, what: str):
    if importlib.util.find_spec(module) is None:
        raise PeerUnavailable(f"{what} needs the {module} package, which is not installed")


class _Counted:
    """A callable that counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def _vec(t, x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64, device=x.device).reshape(-1).expand(x.shape[0]).contiguous()


class Peer:
    """A sampler of another library. ``library`` and ``label`` name it; ``counterpart`` names
    the sdesolve solver that does the same thing (for the report); ``adaptive`` peers take a
    tolerance instead of a number of steps; ``stochastic`` ones sample the reverse SDE."""

    library = ""
    label = ""
    counterpart = ""
    adaptive = False
    stochastic = False

    def check(self, process) -> None:
        """Raise :class:`PeerUnavailable` if this peer cannot sample ``process`` here."""

    def sample(self, process, score, x_T: torch.Tensor, *, steps: int | None = None, tol: float | None = None,
               seed: int = 0, offset: int = 0) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.label


class KDiffusion(Peer):
    """``k_diffusion.sampling.sample_<name>`` on the Karras grid from sigma(T) to sigma(t_min)."""

    library = "k-diffusion"
    _counterparts = {"euler": "DDIM", "heun": "EDMHeun", "dpmpp_2m": "DPMSolverPP(order=2)", "dpm_2": "DPMSolver(order=2)",
                     "euler_ancestral": "Ancestral", "dpmpp_2m_sde": "DPMSolverPP(order=2, sde=True)"}

    def __init__(self, sampler: str = "dpmpp_2m", rho: float = 7.0, zero: bool = False, **kwargs):
        self.sampler = sampler[len("sample_"):] if sampler.startswith("sample_") else sampler
        self.rho, self.kwargs, self.zero = float(rho), kwargs, bool(zero)
        self.label = f"k-diffusion {self.sampler}" + (" (to 0)" if self.zero else "")
        self.counterpart = self._counterparts.get(self.sampler, "")
        self.stochastic = self.sampler in ("euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde",
                                           "dpmpp_2m_sde", "dpmpp_3m_sde")

    def _fn(self):
        kd = kdiffusion_sampling()
        fn = getattr(kd, f"sample_{self.sampler}", None)
        if fn is None:
            raise PeerUnavailable(f"k-diffusion has no sampler sample_{self.sampler}")
        return fn

    def check(self, process) -> None:
        self._fn()

    def sample(self, process, score, x_T, *, steps=None, tol=None, seed=0, offset=0):
        from ..schedules import karras
        fn = self._fn()
        # zero: k-diffusion's own get_sigmas_karras(steps, ...), steps noise levels then 0 (its
        # samplers' default use); the result is then the sample at t = 0
        grid = (karras(self.rho)(process, int(steps) - 1) if self.zero else karras(self.rho)(process, int(steps)))
        if self.zero:
            grid = torch.cat([grid, grid.new_zeros(1)])
        grid = grid.to(x_T.device)
        # sigmas in the state's dtype, as k-diffusion makes them (float64 sigmas would promote a
        # float32 state to float64 through its append_dims)
        sigmas = process.sigma_edm(grid).to(x_T.dtype)
        if self.zero:
            sigmas[-1] = 0.0
        lo, hi = float(process.t_min), float(process.T)

        def denoiser(xk, sigma):
            t = process.t_of_sigma_edm(_vec(sigma, xk)).clamp(lo, hi)  # undo float32 rounding past the ends
            return score.denoised_of(xk * process.alpha(t).to(xk.dtype).reshape((-1,) + (1,) * (xk.dim() - 1)), t,
                                     process)

        model = _Counted(denoiser)
        kw = dict(self.kwargs)
        if "noise_sampler" in inspect.signature(fn).parameters:
            noise = Noise(streams(seed, x_T.shape[0], offset=offset, device=x_T.device))
            logs = torch.log(sigmas[:-1].double().clamp_min(1e-300))
            calls = {}

            def noise_sampler(sigma, sigma_next):  # call c of step i (nearest sigma_i) gets draw c of step i
                i = int(torch.argmin((logs - torch.log(torch.as_tensor(sigma, dtype=torch.float64))).abs()))
                calls[i] = calls.get(i, -1) + 1
                return noise.at(i).normal(x_T, calls[i])
            kw["noise_sampler"] = noise_sampler
        xk = x_T / process.alpha(torch.tensor(process.T, dtype=torch.float64)).item()
        out = fn(model, xk, sigmas, disable=True, **kw)
        if self.zero:
            return out, model.calls
        return out * process.alpha(torch.tensor(process.t_min, dtype=torch.float64)).item(), model.calls


class Diffusers(Peer):
    """A diffusers scheduler on the DDPM discretisation of a variance-preserving process (see the
    module). ``scheduler``: the scheduler class; ``config``: its settings."""

    library = "diffusers"
    N = 1000

    def __init__(self, scheduler, counterpart: str = "", label: str | None = None, **config):
        self.scheduler_cls, self.config = scheduler, config
        self.label = label or f"diffusers {scheduler.__name__}"
        self.counterpart = counterpart
        self.stochastic = float(config.get("eta", 0.0)) > 0

    @classmethod
    def ddim(cls) -> "Diffusers":
        from diffusers import DDIMScheduler
        return cls(DDIMScheduler, "DDIM", "diffusers DDIM", set_alpha_to_one=False, clip_sample=False,
                   timestep_spacing="trailing")

    @classmethod
    def dpm_solver_multistep(cls, order: int = 2) -> "Diffusers":
        from diffusers import DPMSolverMultistepScheduler
        return cls(DPMSolverMultistepScheduler, f"DPMSolverPP(order={order})", f"diffusers DPMSolverMultistep({order})",
                   solver_order=order, algorithm_type="dpmsolver++", final_sigmas_type="sigma_min",
                   timestep_spacing="linspace")

    @classmethod
    def unipc(cls, order: int = 2) -> "Diffusers":
        from diffusers import UniPCMultistepScheduler
        return cls(UniPCMultistepScheduler, f"UniPC(order={order})", f"diffusers UniPCMultistep({order})",
                   solver_order=order, final_sigmas_type="sigma_min", timestep_spacing="linspace")

    def times(self, process) -> torch.Tensor:
        """t_k for the N timesteps."""
        return process.t_min + torch.arange(self.N, dtype=torch.float64) * ((process.T - process.t_min) / (self.N - 1))

    def check(self, process) -> None:
        _require("diffusers", self.label)
        t = self.times(process)[:: self.N // 8]
        a, s = process.marginal(t)
        if float((a * a + s * s - 1.0).abs().max()) > 1e-6:
            raise PeerUnavailable(f"{self.label} steps a variance-preserving schedule; {process!r} is not one")

    def _scheduler(self, process):
        acp = process.alpha(self.times(process)) ** 2
        betas = 1.0 - acp / torch.cat([torch.ones(1, dtype=torch.float64), acp[:-1]])
        return self.scheduler_cls(num_train_timesteps=self.N, trained_betas=betas.tolist(),
                                  prediction_type="epsilon", **self.config)

    def sample(self, process, score, x_T, *, steps=None, tol=None, seed=0, offset=0):
        sched = self._scheduler(process)
        sched.set_timesteps(int(steps), device=x_T.device)
        dt = (process.T - process.t_min) / (self.N - 1)
        eps = _Counted(lambda x, k: score.eps_of(x, _vec(process.t_min + float(k) * dt, x), process))
        noise = Noise(streams(seed, x_T.shape[0], offset=offset, device=x_T.device))
        x = x_T
        for i, k in enumerate(sched.timesteps):
            kw = {"variance_noise": noise.at(i).normal(x, 0)} if self.stochastic else {}
            x = sched.step(eps(x, k), k, x, **kw).prev_sample
        return x, eps.calls


class DiffusersFlow(Peer):
    """diffusers' FlowMatchEuler or (``second_order``) FlowMatchHeun scheduler on a linear path (see
    the module). ``steps`` steps on the uniform grid T -> t_min; NFE = steps, or 2 steps (Heun)."""

    library = "diffusers"
    N = 1000

    def __init__(self, second_order: bool = False):
        self.second_order = bool(second_order)
        self.counterpart = "Heun" if second_order else "Euler"
        self.label = f"diffusers FlowMatch{self.counterpart}Discrete"

    @classmethod
    def euler(cls) -> "DiffusersFlow":
        return cls(False)

    @classmethod
    def heun(cls) -> "DiffusersFlow":
        return cls(True)

    def check(self, process) -> None:
        _require("diffusers", self.label)
        t = torch.linspace(process.t_min, process.T, 9, dtype=torch.float64)
        a, s = process.marginal(t)
        if float((a + s - 1.0).abs().max()) > 1e-9 or float((s - t).abs().max()) > 1e-9:
            raise PeerUnavailable(f"{self.label} steps the linear path x = (1 - t) x0 + t z; {process!r} is not one")

    def sample(self, process, score, x_T, *, steps=None, tol=None, seed=0, offset=0):
        import diffusers
        n = int(steps)
        grid = torch.linspace(float(process.T), float(process.t_min), n + 1, dtype=torch.float64)
        if self.second_order:  # s0, s1, s1, ..., sn, sn: each step evaluates at its start and its end
            times = torch.cat([grid[:1], grid[1:].repeat_interleave(2)])
            sched = diffusers.FlowMatchHeunDiscreteScheduler(num_train_timesteps=self.N, shift=1.0)
        else:
            times = grid
            sched = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=self.N, shift=1.0)
        sched.set_timesteps(n)  # its state; the sigmas are replaced by the grid
        sigmas = torch.cat([times, times.new_zeros(1)]).to(torch.float32)
        sched.sigmas = sigmas.to(x_T.device)
        sched.timesteps = (sigmas[:-1] * self.N).to(x_T.device)
        u = _Counted(lambda x, t: score.velocity_of(x, _vec(t, x), process))
        x = x_T
        for i in range(len(times) - 1):  # stop at t_min (not diffusers' final step to 0)
            k = sched.timesteps[i]
            x = sched.step(u(x, float(times[i])), k, x).prev_sample.to(x_T.dtype)
        return x, u.calls


class Unavailable(Peer):
    """Stands for a peer whose library could not even be imported; ``check`` says why."""

    def __init__(self, label: str, reason: str):
        self.label, self.reason = label, reason

    def check(self, process) -> None:
        raise PeerUnavailable(self.reason)


class Torchdiffeq(Peer):
    """``torchdiffeq.odeint(method=...)`` on the probability-flow ODE, rtol = atol = tol."""

    library = "torchdiffeq"
    adaptive = True

    def __init__(self, method: str = "dopri5"):
        self.method = method
        self.label = f"torchdiffeq {method}"
        self.counterpart = {"dopri5": "Dopri5", "bosh3": "Bosh3", "tsit5": "Tsit5"}.get(method, "")

    def check(self, process) -> None:
        _require("torchdiffeq", self.label)

    def sample(self, process, score, x_T, *, steps=None, tol=None, seed=0, offset=0):
        from torchdiffeq import odeint
        eq = process.probability_flow(score)
        lo, hi = float(process.t_min), float(process.T)
        # torchdiffeq passes t in the state's dtype: clamp its rounding back into [t_min, T]
        f = _Counted(lambda t, x: eq.drift(_vec(t, x).clamp(lo, hi), x))
        ts = torch.tensor([hi, lo], dtype=torch.float64, device=x_T.device)
        # step_t: land on the end points instead of stepping past t_min and interpolating back
        # (stages past the end would evaluate the model at t < t_min, where the process may not exist)
        y = odeint(f, x_T, ts, method=self.method, rtol=float(tol), atol=float(tol), options={"step_t": ts})[-1]
        return y, f.calls


class Torchode(Peer):
    """``torchode`` (Lienen & Günnemann 2022, per-sample step sizes) on the probability-flow ODE:
    its ``method`` ("dopri5" or "tsit5") with an ``IntegralController``, rtol = atol = tol.
    Samples are flattened to (B, D); the model calls are counted as function evaluations of
    the batch (torchode evaluates all samples at every call)."""

    library = "torchode"
    adaptive = True

    def __init__(self, method: str = "dopri5"):
        self.method = method
        self.label = f"torchode {method}"
        self.counterpart = {"dopri5": "Dopri5", "tsit5": "Tsit5"}.get(method, "")

    def check(self, process) -> None:
        _require("torchode", self.label)
        if self.method not in ("dopri5", "tsit5"):
            raise PeerUnavailable(f"{self.label}: torchode's adaptive methods here are dopri5 and tsit5")

    def sample(self, process, score, x_T, *, steps=None, tol=None, seed=0, offset=0):
        import torchode
        eq = process.probability_flow(score)
        lo, hi = float(process.t_min), float(process.T)
        shape, B = x_T.shape, x_T.shape[0]

        def field(t, y):
            x = y.reshape(shape[0] if y.shape[0] == B else y.shape[0], *shape[1:])
            tt = t.to(torch.float64).clamp(lo, hi)
            return eq.drift(tt, x).reshape(y.shape)

        f = _Counted(field)
        term = torchode.ODETerm(f)
        method = {"dopri5": torchode.Dopri5, "tsit5": torchode.Tsit5}[self.method](term=term)
        controller = torchode.IntegralController(atol=float(tol), rtol=float(tol), term=term)
        solver = torchode.AutoDiffAdjoint(method, controller)
        y0 = x_T.reshape(B, -1)
        t0 = torch.full((B,), hi, dtype=y0.dtype, device=y0.device)
        t1 = torch.full((B,), lo, dtype=y0.dtype, device=y0.device)
        sol = solver.solve(torchode.InitialValueProblem(y0=y0, t_start=t0, t_end=t1))
        if not bool((sol.status == 0).all()):
            raise RuntimeError(f"{self.label}: torchode stopped with status {sol.status.unique().tolist()}")
        return sol.ys[:, -1].reshape(shape), f.calls


class Torchsde(Peer):
    """``torchsde.sdeint(method=...)`` on the reverse SDE with ``steps`` equal steps."""

    library = "torchsde"
    stochastic = True

    def __init__(self, method: str = "euler"):
        self.method = method
        self.label = f"torchsde {method}"
        self.counterpart = {"euler": "EulerMaruyama", "milstein": "Milstein", "srk": "SRA1"}.get(method, "")

    def check(self, process) -> None:
        _require("torchsde", self.label)

    def sample(self, process, score, x_T, *, steps=None, tol=None, seed=0, offset=0):
        import torchsde
        eq = process.reverse(score)
        shape, T = x_T.shape, float(process.T)
        span = T - float(process.t_min)

        class _Reverse(torch.nn.Module):
            noise_type, sde_type = "diagonal", "ito"

            def f(self, s, y):
                x = y.reshape(shape)
                return -eq.drift(_vec(T - float(s), x), x).reshape(y.shape)

            def g(self, s, y):
                t = torch.tensor([T - float(s)], dtype=torch.float64, device=y.device)
                return torch.sqrt(process.g2(t)).to(y.dtype).expand_as(y)

        sde = _Reverse()
        sde.f = _Counted(sde.f)
        y0 = x_T.reshape(shape[0], -1)
        ts = torch.tensor([0.0, span], dtype=torch.float64, device=y0.device)
        bm = torchsde.BrownianInterval(t0=0.0, t1=span, size=y0.shape, dtype=y0.dtype, device=y0.device,
                                       entropy=(int(seed) * 1_000_003 + int(offset)) % (2**63))
        y = torchsde.sdeint(sde, y0, ts, method=self.method, dt=span / int(steps), bm=bm)[-1]
        return y.reshape(shape), sde.f.calls


def default_peers(tolerances=True) -> list:
    """The peers a benchmark runs unless told otherwise: k-diffusion's euler, heun and dpmpp_2m,
    diffusers' DPM-Solver++(2M), torchdiffeq's dopri5 (when tolerances are benchmarked) and
    torchsde's Euler-Maruyama. diffusers' scheduler is built lazily by its factory."""
    out = [KDiffusion("euler"), KDiffusion("heun"), KDiffusion("dpmpp_2m")]
    try:
        out.append(Diffusers.dpm_solver_multistep(2))
    except ImportError as e:
        out.append(Unavailable("diffusers DPMSolverMultistep(2)", f"diffusers cannot be imported: {e}"))
    if tolerances:
        out.append(Torchdiffeq("dopri5"))
    out.append(Torchsde("euler"))
    return out
