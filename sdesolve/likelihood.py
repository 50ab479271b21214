"""Exact log-likelihoods through the probability-flow ODE, and bits per dimension.

The probability-flow ODE dx/dt = f~(x, t) = f(t) x - g(t)^2 s(x, t) / 2 carries p_{t_min} to
p_T. Along a trajectory, the instantaneous change of variables (Chen et al. 2018, "Neural
ODEs", Thm. 1; Song et al. 2021, "Score-based generative modeling through SDEs", App. D.2) is

    d/dt log p_t(x_t) = -div f~(x_t, t),

so, integrating from t_min to T,

    log p_{t_min}(x) = log p_T(x_T) + int_{t_min}^{T} div f~(x_t, t) dt,

with log p_T replaced by the process's prior (``process.prior_logp``). :func:`log_likelihood`
integrates the state augmented with that integral, [x, delta], from t_min to T with any ODE
solver, fixed-step or adaptive, and returns log p_{t_min}(x) = prior_logp(x_T) + delta.

The divergence is the trace of the drift's Jacobian, computed per call of the vector field by

* :class:`ExactTrace`: sum_i e_i^T J e_i, one vector-Jacobian product per basis vector,
  batched with ``torch.func.vmap`` (D backward passes: for small dimensions);
* :class:`Hutchinson`: (1/P) sum_p v_p^T J v_p with P probe vectors of zero mean and identity
  covariance (Hutchinson 1990), unbiased, one vector-Jacobian product per probe. The probes are
  drawn once per sample from its noise stream and held fixed over the whole solve (Grathwohl et
  al. 2019, FFJORD), so the estimate is a pure function of (seed, sample). For a symmetric
  Jacobian integral M = int J dt along the trajectory, Var = 2 sum_{i != j} M_ij^2 / P for
  Rademacher probes and 2 sum_{i, j} M_ij^2 / P for Gaussian ones.

Per-sample adaptive solvers evaluate the vector field on the unfinished samples only, so
everything per sample lives in the state: with probes, the state also carries the sample's row
index (a constant, whose derivative is zero, so every Runge-Kutta stage reproduces it exactly)
by which each call picks that sample's probes. The index is stored as 1/eps + row (eps the
dtype's machine epsilon): the column then weighs the same, to rounding, in every sample's
starting-step norm whatever its row, and adds one zero-error entry to the error norm.

Gradients flow: nothing here detaches, and ``torch.func.vjp`` records the trace's dependence on
the model's parameters and on x for the outer autograd, so ``log_likelihood(...).logp`` can be
trained on. Callers who want values only run it under ``torch.no_grad()`` (the trace is still
computed: ``torch.func`` transforms ignore an outer ``no_grad``).

:func:`bits_per_dim` scores 8-bit images with uniform dequantization (Theis et al. 2016;
Ho et al. 2019): with levels k in {0..255}^D, u ~ U[0, 1)^D and the model's data range
[lo, hi], the model sees y = lo + a (k + u), a = (hi - lo) / 256. The density of w = k + u on
[0, 256)^D is p_model(y) a^D, and by Jensen

    -log2 P(k) <= E_u[-log p_model(y)] / ln 2 - D log2 a,

so bits/dim = E_u[-log p_model(y)] / (D ln 2) - log2 a: 7 extra bits for [-1, 1], 8 for
[0, 1] (score_sde's offset ``7 - inverse_scaler(-1)``).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from .equations import ODE
from .errors import NonFiniteError, SolverError, _fmt
from .integrate import solve
from .noise import DEQUANTIZATION_STEP, PROBE_STEP, Noise, streams
from .solution import Stats
from .timeplan import plan_times
from .validation import check_seed

__all__ = ["Trace", "ExactTrace", "Hutchinson", "LikelihoodResult", "log_likelihood", "BitsPerDim",
           "bits_per_dim", "pixel_levels", "dequantize", "PROBE_STEP", "DEQUANTIZATION_STEP"]



# --- divergence estimators ---------------------------------------------------------------------
class Trace:
    """The divergence of a batched vector field. ``divergence(fn, x, probes)`` returns
    ``(fn(x), div)`` with div of shape (B,); ``fn`` maps (B, ...) to (B, ...) sample by sample."""

    #: whether the estimator needs per-sample probes (drawn by :meth:`draw`)
    needs_probes: bool = False

    def draw(self, noise: Noise, like: torch.Tensor) -> torch.Tensor | None:
        return None

    def divergence(self, fn, x: torch.Tensor, probes: torch.Tensor | None):
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


def _quadratic_forms(vjp_fn, vectors: torch.Tensor, chunk_size=None) -> torch.Tensor:
    """v_p^T J v_p per sample for vectors (P, B, ...): (P, B). One VJP per vector, batched."""
    P, B = vectors.shape[:2]
    if P == 1:
        rows = vjp_fn(vectors[0])[0].unsqueeze(0)
    else:
        rows = torch.func.vmap(vjp_fn, chunk_size=chunk_size)(vectors)[0]
    return (rows.reshape(P, B, -1) * vectors.reshape(P, B, -1)).sum(-1)


def _available_memory(device: torch.device) -> int:
    """Bytes free for new tensors on ``device``: the CUDA allocator's free memory, or the
    machine's MemAvailable (Linux) / available physical pages."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**28 else f"{n / 2**20:.3g} MiB"


class ExactTrace(Trace):
    """tr J = sum_i e_i^T J e_i: D vector-Jacobian products, batched with ``torch.func.vmap``
    over the basis, ``chunk_size`` of them at a time. Exact, and D times the backward cost of
    one Hutchinson probe: for small dimensions.

    ``chunk_size=None`` (default) chooses it from a memory budget: ``memory_budget`` bytes, by
    default half of the memory available on x's device when the first call is made. The cost of
    one basis vector for a batch of B is estimated as B (2 S + 2 D b), with S the bytes autograd
    saves per sample in a forward pass (measured once per sample shape, dtype and device by one
    extra call of the vector field on the batch, counting the saved tensors) and b the dtype's
    size. When a single basis vector does not fit the budget, the call is refused up front with
    both figures, rather than left to the operating system's out-of-memory killer. Chunks never
    hold the full (D, B, D) Jacobian: each chunk's diagonal entries are summed as it is done."""

    def __init__(self, chunk_size: int | None = None, memory_budget: int | None = None):
        if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool)
                                       or chunk_size < 1):
            raise ValueError(f"ExactTrace: chunk_size must be a positive integer or None, got {chunk_size!r}")
        if memory_budget is not None and not (isinstance(memory_budget, (int, float)) and memory_budget > 0):
            raise ValueError(f"ExactTrace: memory_budget must be a positive number of bytes or None, got "
                             f"{memory_budget!r}")
        self.chunk_size, self.memory_budget = chunk_size, memory_budget
        self._saved = {}  # (sample shape, dtype, device) -> bytes autograd saves per sample

    def _saved_per_sample(self, fn, x) -> int:
        key = (tuple(x.shape[1:]), x.dtype, str(x.device))
        if key not in self._saved:
            total = [0]

            def pack(t):
                total[0] += t.numel() * t.element_size()
                return t

            xr = x.detach().clone().requires_grad_(True)  # fn may close over per-sample times: whole batch
            try:
                with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    fn(xr)
                self._saved[key] = -(-total[0] // x.shape[0])
            except RuntimeError:  # torch.func transforms refuse saved-tensor hooks: a conservative guess
                self._saved[key] = 64 * x[0].numel() * x.element_size()
        return self._saved[key]

    def chunk_for(self, fn, x) -> int:
        """The number of basis vectors run at once for ``fn`` at ``x`` (see the class doc)."""
        B, D = x.shape[0], x[0].numel()
        if self.chunk_size is not None:
            return min(self.chunk_size, D)
        budget = self.memory_budget if self.memory_budget is not None else _available_memory(x.device) // 2
        per_vector = B * (2 * self._saved_per_sample(fn, x) + 2 * D * x.element_size())
        if per_vector > budget:
            raise MemoryError(f"ExactTrace: one basis vector of the trace needs about {_gib(per_vector)} for a "
                              f"batch of {B} samples of dimension {D}, more than the memory budget of "
                              f"{_gib(budget)}; use Hutchinson(), a smaller batch, or a larger memory_budget")
        return int(max(1, min(D, budget // per_vector)))

    def divergence(self, fn, x, probes=None):
        B, D = x.shape[0], x[0].numel()
        chunk = self.chunk_for(fn, x)
        out, vjp_fn = torch.func.vjp(fn, x)
        div = torch.zeros(B, dtype=out.dtype, device=x.device)
        for lo in range(0, D, chunk):
            idx = torch.arange(lo, min(D, lo + chunk), device=x.device)
            c = idx.numel()
            basis = torch.zeros((c, B, D), dtype=x.dtype, device=x.device)
            basis[torch.arange(c, device=x.device), :, idx] = 1
            basis = basis.reshape((c,) + x.shape)
            rows = vjp_fn(basis[0])[0].unsqueeze(0) if c == 1 else torch.func.vmap(vjp_fn)(basis)[0]
            div = div + rows.reshape(c, B, D)[torch.arange(c, device=x.device), :, idx].sum(0)
        return out, div


class Hutchinson(Trace):
    """Hutchinson's estimator (1/P) sum_p v_p^T J v_p with ``probes`` = P vectors per sample,
    ``noise`` "rademacher" (entries +-1: variance 2 sum_{i != j} J_ij^2 / P for symmetric J)
    or "gaussian" (variance 2 ||J||_F^2 / P). Probe p of sample b is draw p of the sample's
    noise stream at step :data:`PROBE_STEP`, fixed over the whole solve."""

    needs_probes = True
    noises = ("rademacher", "gaussian")

    def __init__(self, probes: int = 1, noise: str = "rademacher", chunk_size: int | None = None):
        if not isinstance(probes, int) or isinstance(probes, bool) or probes < 1:
            raise ValueError(f"Hutchinson: probes must be an integer >= 1, got {probes!r}")
        if noise not in self.noises:
            raise ValueError(f"Hutchinson: noise must be one of {self.noises}, got {noise!r}")
        self.probes, self.noise, self.chunk_size = probes, noise, chunk_size

    def draw(self, noise: Noise, like: torch.Tensor) -> torch.Tensor:
        """Probes (P, B, ...) shaped and typed like ``like`` (B, ...)."""
        zs = [noise.normal(like, draw=p) for p in range(self.probes)]
        z = torch.stack(zs)
        if self.noise == "rademacher":
            z = torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))
        return z

    def divergence(self, fn, x, probes):
        if probes is None or probes.shape[1:] != x.shape:
            raise ValueError(f"Hutchinson needs probes of shape (P, {', '.join(map(str, x.shape))}), got "
                             f"{None if probes is None else tuple(probes.shape)}")
        out, vjp_fn = torch.func.vjp(fn, x)
        return out, _quadratic_forms(vjp_fn, probes, self.chunk_size).mean(0)


# --- the likelihood ----------------------------------------------------------------------------
def check_differentiable(score, x: torch.Tensor, t: float) -> None:
    """Raise if ``score`` does not let gradients through to x (a model that runs under
    ``torch.no_grad()`` or detaches inside): the divergence would silently lose the score's part.

    One extra score call on the first sample, with gradients enabled whatever the caller's mode;
    the output must be connected to x in the autograd graph. (A network whose output layer is
    zero is connected: its parameters are in the graph even when the Jacobian is zero.)"""
    x1 = x[:1].detach().clone().requires_grad_(True)
    t1 = torch.full((1,), float(t), dtype=torch.float64, device=x.device)
    with torch.enable_grad():
        out = score(x1, t1)
    if not (isinstance(out, torch.Tensor) and out.requires_grad):
        raise ValueError("log_likelihood: the score's output does not depend on x through autograd (the model "
                         "runs under torch.no_grad() or detaches inside), so the divergence of the "
                         "probability-flow drift cannot be computed and the log-density would be wrong; "
                         "remove the no_grad/detach from the model (the caller may still wrap log_likelihood "
                         "in torch.no_grad())")


@dataclass
class LikelihoodResult:
    """logp: (B,) log p_{t_min}(x) in nats; z: the latent x_T, shaped like x; prior_logp: (B,)
    the prior's log-density at z; delta_logp: (B,) int_{t_min}^{T} div f~ dt; nfe: calls of the
    augmented vector field (one model evaluation each, plus the trace's backward passes);
    stats: the solver's statistics; t_min, T: the interval integrated."""

    logp: torch.Tensor
    z: torch.Tensor
    prior_logp: torch.Tensor
    delta_logp: torch.Tensor
    nfe: int
    stats: Stats
    t_min: float
    T: float


def _times(process, t_min, T, schedule, steps, solver, controller):
    """The interval [t_min, T] and, for fixed-step solvers, the increasing grid."""
    grid = None
    if isinstance(schedule, torch.Tensor):
        grid = schedule.detach().to(torch.float64).reshape(-1)
        if grid.numel() >= 2 and grid[0] > grid[-1]:
            grid = grid.flip(0)
        if t_min is not None or T is not None:
            raise ValueError("log_likelihood: give either an explicit schedule tensor or t_min/T, not both")
        t_min, T = float(grid[0]), float(grid[-1])
    t_min = process.t_min if t_min is None else float(t_min)
    T = process.T if T is None else float(T)
    tol = 1e-12 * max(1.0, process.T)
    if not (0.0 <= t_min < T <= process.T + tol):
        raise ValueError(f"log_likelihood: need 0 <= t_min < T <= process.T = {process.T}, got t_min={t_min}, T={T}")
    adaptive = solver.adaptive or controller is not None
    if adaptive and (schedule is not None or steps is not None):
        raise ValueError(f"{type(solver).__name__} chooses its own steps; do not pass steps or schedule")
    if not adaptive and grid is None and steps is None:
        raise ValueError(f"log_likelihood with the fixed-step {type(solver).__name__} needs steps= or "
                         "schedule= (or an adaptive solver such as Dopri5)")
    plan = plan_times(process, t_min, T, steps=steps, schedule=grid if grid is not None else schedule,
                      adaptive=adaptive, check_range=False)
    return t_min, T, plan.grid


def _default_solver():
    from .solvers import Dopri5
    return Dopri5(1e-5, 1e-5)


def log_likelihood(process, score, x: torch.Tensor, *, solver=None, trace: Trace | None = None, seed=None,
                   t_min=None, T=None, steps: int | None = None, schedule=None, noise: Noise | None = None,
                   controller=None) -> LikelihoodResult:
    """log p_{t_min}(x) under the model (process, score) by the probability-flow ODE.

    ``x``: (B, ...) floating point, in the model's data space. ``solver``: any ODE solver
    (default ``Dopri5(1e-5, 1e-5)``); fixed-step ones need ``steps`` or ``schedule`` (a
    schedule function, or an explicit tensor of times, in either order). ``trace``: a
    :class:`Trace` (default ``Hutchinson(probes=1, noise="rademacher")``). ``seed``: an int
    or (B,) tensor of per-sample seeds for the probes (see :mod:`sdesolve.noise`); ``noise``
    overrides it with a ready :class:`Noise` positioned at the probes' step. ``t_min``, ``T``:
    the interval (default the process's).
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"log_likelihood: x must be a tensor of shape (B, ...) with B >= 1, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"log_likelihood: x must be floating point, got {x.dtype} (8-bit images: use bits_per_dim)")
    solver = _default_solver() if solver is None else solver
    trace = Hutchinson() if trace is None else trace
    if not isinstance(trace, Trace):
        raise TypeError(f"trace must be a Trace object such as ExactTrace() or Hutchinson(), got {trace!r}")
    t_min, T, grid = _times(process, t_min, T, schedule, steps, solver, controller)

    B, shape, D = x.shape[0], x.shape[1:], x[0].numel()
    if noise is not None and len(noise) != B:
        raise ValueError(f"log_likelihood: noise for {len(noise)} samples given for a batch of {B}")
    if noise is None:  # an estimator that draws nothing leaves the global generator alone
        seed = 0 if seed is None and not trace.needs_probes else seed
        check_seed(seed)
        noise = Noise(streams(seed, B, device=x.device)).at(PROBE_STEP)
    probes = trace.draw(noise, x) if trace.needs_probes else None
    base = 1.0 / torch.finfo(x.dtype).eps  # row r is stored as base + r, exact while r < base
    if probes is not None and B > base:
        raise ValueError(f"log_likelihood: a batch of {B} is too large to index exactly in {x.dtype} "
                         f"(at most {int(base)} samples with probes); split it")

    check_differentiable(score, x, t_min)
    pf = process.probability_flow(score)
    flags = {"drift": torch.zeros((), dtype=torch.bool, device=x.device),
             "div": torch.zeros((), dtype=torch.bool, device=x.device)}

    def field(t, y):
        n = y.shape[0]
        xs = y[:, :D].reshape((n,) + shape)
        v = probes[:, (y[:, D + 1] - base).round().long()] if probes is not None else None
        dx, div = trace.divergence(lambda z: pf.drift(t, z), xs, v)
        flags["drift"] = flags["drift"] | ~torch.isfinite(dx).all()
        flags["div"] = flags["div"] | ~torch.isfinite(div).all()
        parts = [dx.reshape(n, D), div.reshape(n, 1).to(y.dtype)]
        if probes is not None:
            parts.append(torch.zeros_like(y[:, D + 1:]))
        return torch.cat(parts, 1)

    aug = ODE(field)
    cols = [x.reshape(B, D), torch.zeros(B, 1, dtype=x.dtype, device=x.device)]
    if probes is not None:
        cols.append((base + torch.arange(B, device=x.device, dtype=torch.float64)).to(x.dtype).unsqueeze(1))
    y0 = torch.cat(cols, 1)
    try:
        if grid is None:
            sol = solve(aug, y0, t_min, T, solver, controller=controller, noise=noise)
        else:
            sol = solve(aug, y0, None, None, solver, schedule=grid.to(x.device), noise=noise)
    except SolverError as e:
        if bool(flags["div"]) and not bool(flags["drift"]):
            raise NonFiniteError(
                f"log_likelihood: the divergence (trace of the probability-flow drift's Jacobian, by "
                f"{type(trace).__name__}) was non-finite while the drift was finite, near t = {e.t} in samples "
                f"{_fmt(e.samples)}: the score model's gradient with respect to x is NaN/Inf there",
                step=e.step, t=e.t, samples=e.samples) from e
        raise
    z = sol.y[:, :D].reshape(x.shape)
    delta = sol.y[:, D]
    prior = process.prior_logp(z)
    return LikelihoodResult(logp=prior + delta, z=z, prior_logp=prior, delta_logp=delta, nfe=sol.stats.nfe,
                            stats=sol.stats, t_min=t_min, T=T)


# --- 8-bit images ------------------------------------------------------------------------------
def _check_range(data_range):
    try:
        lo, hi = (float(v) for v in data_range)
    except (TypeError, ValueError):
        raise ValueError(f"data_range must be a pair (lo, hi), got {data_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"data_range must be finite with lo < hi, got {data_range!r}")
    return lo, hi


def _bad_samples(mask: torch.Tensor):
    return torch.nonzero(mask.reshape(mask.shape[0], -1).any(1)).flatten().tolist()


def pixel_levels(images: torch.Tensor, data_range=(-1.0, 1.0)) -> torch.Tensor:
    """The 8-bit levels k in {0..255} (int64, shaped like ``images``) of a batch (B, ...).

    Integer tensors (uint8 or any integer dtype) are the levels themselves and must lie in
    [0, 255]. Floating-point tensors are 8-bit images in ``data_range`` = (lo, hi), pixel k at
    lo + (hi - lo) k / 255 (``ToTensor`` then an affine map): they must lie in [lo, hi] and on
    that grid (within 1e-3 of a level)."""
    if not isinstance(images, torch.Tensor) or images.dim() < 2 or images.shape[0] == 0:
        raise ValueError(f"images must be a tensor of shape (B, ...) with at least one pixel per image, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    if images.dtype == torch.bool or images.is_complex():
        raise TypeError(f"images must be integer 8-bit levels or floats in data_range, got {images.dtype}")
    if not images.dtype.is_floating_point:
        bad = (images < 0) | (images > 255)
        if bad.any():
            raise ValueError(f"8-bit images must lie in [0, 255]; samples {_fmt(_bad_samples(bad))} have values in "
                             f"[{int(images.min())}, {int(images.max())}]")
        return images.to(torch.int64)
    lo, hi = _check_range(data_range)
    xf = images.to(torch.float64)
    bad = ~torch.isfinite(xf)
    if bad.any():
        raise ValueError(f"images have non-finite values in samples {_fmt(_bad_samples(bad))}")
    tol = 1e-6 * (hi - lo)
    bad = (xf < lo - tol) | (xf > hi + tol)
    if bad.any():
        raise ValueError(f"images outside their declared data_range [{lo}, {hi}]: samples {_fmt(_bad_samples(bad))} "
                         f"(values in [{float(xf.min()):.6g}, {float(xf.max()):.6g}])")
    k = (xf - lo) / (hi - lo) * 255.0
    kr = k.round()
    off = (k - kr).abs()
    bad = off > 1e-3
    if bad.any():
        raise ValueError(f"images are not 8-bit: values in samples {_fmt(_bad_samples(bad))} lie up to "
                         f"{float(off.max()):.3g} levels off the 256-level grid lo + (hi - lo) k / 255 of "
                         f"data_range [{lo}, {hi}] (non-integer 8-bit values)")
    return kr.clamp(0, 255).to(torch.int64)


def dequantize(levels: torch.Tensor, u: torch.Tensor, data_range=(-1.0, 1.0), dtype=torch.float32) -> torch.Tensor:
    """y = lo + (hi - lo) (k + u) / 256 for levels k and u in [0, 1): a point of [lo, hi)^D.
    Its density is the model's times ((hi - lo) / 256)^D on [0, 256)^D (see the module doc)."""
    if u.shape != levels.shape:
        raise ValueError(f"dequantize: u has shape {tuple(u.shape)}, the levels {tuple(levels.shape)}")
    lo, hi = _check_range(data_range)
    w = levels.to(torch.float64) + u.to(torch.float64)
    return (lo + (hi - lo) / 256.0 * w).to(dtype)


@dataclass
class BitsPerDim:
    """bpd: (B,) bits/dim per image, averaged over the dequantization draws; draws: (K, B)
    each draw's bits/dim; mean: the batch mean; dequantization_var: (B,) the variance across
    draws per image (unbiased; NaN for K = 1); stderr: the standard error of ``mean`` over the
    batch (images and draws together); offset: -log2((hi - lo) / 256), the bits/dim of the map
    from [0, 256) to the model range; nfe: total vector-field calls."""

    bpd: torch.Tensor
    draws: torch.Tensor
    mean: float
    dequantization_var: torch.Tensor
    stderr: float
    offset: float
    nfe: int
    #: images whose bits/dim is below 0, which no model of 8-bit data can give (see bits_per_dim)
    below_zero: list = None


def bits_per_dim(process, score, images: torch.Tensor, *, data_range=(-1.0, 1.0), dequantizations: int = 1,
                 seed=None, dtype=torch.float32, **likelihood_kwargs) -> BitsPerDim:
    """Bits per dimension of 8-bit images under the model, with uniform dequantization.

    ``images``: (B, ...) integer levels in [0, 255] or floats on the 8-bit grid of
    ``data_range`` (see :func:`pixel_levels`). ``data_range``: the (lo, hi) the model was trained
    on. ``dequantizations``: K draws of u ~ U[0, 1)^D per image (draw k of image b is a pure
    function of (seed, b, k)), averaged. The rest (solver, trace, t_min, T, steps, schedule) go
    to :func:`log_likelihood`; draw k's probes use the step ``PROBE_STEP + k``.

        bpd = E_u[-log p_model(lo + a (k + u))] / (D ln 2) - log2 a,   a = (hi - lo) / 256

    Known bound: by Jensen this is at least -log2 P(k) / D >= 0 for every image (P(k) <= 1), so a
    negative value is the solver's or the trace's error, not the model's quality (too few steps of a
    fixed-step solver, a loose tolerance): the images concerned are listed in ``below_zero`` and a
    ``UserWarning`` names them. (A single dequantization draw of an accurate likelihood is
    negative only when the model puts more than unit mass on one pixel bin, which it cannot.)
    """
    if not isinstance(dequantizations, int) or isinstance(dequantizations, bool) or dequantizations < 1:
        raise ValueError(f"dequantizations must be an integer >= 1, got {dequantizations!r}")
    for k in ("seed", "noise", "x"):
        if k in likelihood_kwargs:
            raise TypeError(f"bits_per_dim does not take {k!r} for the likelihood")
    lo, hi = _check_range(data_range)
    levels = pixel_levels(images, (lo, hi))
    B, D = levels.shape[0], levels[0].numel()
    check_seed(seed)
    stream = streams(seed, B, device=levels.device)
    a = (hi - lo) / 256.0
    offset = -math.log2(a)
    draws, nfe = [], 0
    for k in range(dequantizations):
        z = Noise(stream).at(DEQUANTIZATION_STEP).normal(torch.empty(levels.shape, dtype=torch.float64,
                                                                      device=levels.device), draw=k)
        u = (0.5 * torch.erfc(-z / math.sqrt(2.0))).clamp(0.0, 1.0 - 2.0**-53)  # Phi(z) ~ U(0, 1)
        y = dequantize(levels, u, (lo, hi), dtype=dtype)
        res = log_likelihood(process, score, y, noise=Noise(stream).at(PROBE_STEP + k), **likelihood_kwargs)
        nfe += res.nfe
        draws.append(-res.logp.to(torch.float64) / (D * math.log(2.0)) + offset)
    draws = torch.stack(draws)
    bpd = draws.mean(0)
    var = draws.var(0) if dequantizations > 1 else torch.full_like(bpd, float("nan"))
    stderr = float(bpd.std() / math.sqrt(B)) if B > 1 else float("nan")
    below = torch.nonzero(bpd < 0).flatten().tolist()
    if below:
        import warnings
        warnings.warn(f"bits_per_dim: images {_fmt(below)} have bits/dim below 0 (down to {float(bpd.min()):.3g}), "
                      f"impossible for 8-bit data: the likelihood was not computed accurately (use more steps or "
                      f"an adaptive solver with a tighter tolerance)", stacklevel=2)
    return BitsPerDim(bpd=bpd, draws=draws, mean=float(bpd.mean()), dequantization_var=var, stderr=stderr,
                      offset=offset, nfe=nfe, below_zero=below)
