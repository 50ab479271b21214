"""``solve`` integrates any equation with any solver; ``sample`` draws from a diffusion model.

On a fixed grid the loop is::

    y = y0
    for i, (t_i, t_{i+1}) in enumerate(grid):
        y, state = solver.step(eq, t_i, t_{i+1}, y, state, noise.at(i))

with ``t`` passed as (B,) float64 tensors and the noise of step i a pure function of (seed,
sample, i). The loop makes no data-dependent host synchronisation: non-finite values are
recorded per sample on the device and reported once, after the loop, with the first step,
time and samples at fault. Adaptive solvers (or an explicit ``controller``) hand the solve to
the controller, which keeps a step size per sample.

CUDA graphs (``cuda_graph=True``, fixed grids on CUDA). Since the grid fixes the number of
steps, the whole loop is captured once in a ``torch.cuda.CUDAGraph``: every kernel of every
step, with the step index, the times and the noise counters of each step recorded as they were
launched. The first call with a given (equation, solver, grid, shape, dtype, device) runs the
loop eagerly (a warm-up that compiles the kernels; its result is the call's result) and then
captures it; later calls with the same ones copy x_T (y0) and the noise streams into the
graph's static inputs and replay it: one launch for the whole loop, no Python per step. The
captured loops are kept in a small least-recently-used cache (:data:`GRAPH_CACHE_SIZE` entries,
emptied by :func:`clear_cuda_graphs`); each holds the GPU memory of one loop's working set.

What a replay does is exactly what the captured loop did. Tensors are read where they were at
capture, so a model's weights may change in place (``load_state_dict``, an optimizer step)
but must not be replaced by new tensors, and Python-level changes to the score function or the
solver are not seen unless they change the cache key (a solver's or process's ``repr``, a new
score function or model object). The loop must be capturable: no host synchronisation
(``.item()``, ``bool(tensor)``, ``nonzero``), no host-to-device copies (tensors kept on the
CPU and moved at each call), no autograd (call under ``torch.no_grad()`` or
``torch.inference_mode()``). A capture that fails says so and names the solver.
On a CPU state, or for an adaptive solve, ``cuda_graph=True`` is an error (nothing to capture).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from .errors import NonFiniteError, _fmt
from .kernels import kernel_mode
from .noise import PRIOR_STEP, Noise, streams
from .schedules import validate
from .validation import check_interval, check_sample_args, check_seed

__all__ = ["solve", "sample", "Solution", "Stats", "clear_cuda_graphs", "GRAPH_CACHE_SIZE"]

#: how many captured sampling loops ``cuda_graph=True`` keeps (least recently used dropped first)
GRAPH_CACHE_SIZE = 4


@dataclass
class Stats:
    """nfe: model (or drift) calls; sample_nfe: per-sample evaluations (summed batch sizes);
    steps: steps taken (for adaptive solves: batched step calls, the most attempts, accepted or
    rejected, of any sample); accepted / rejected: per sample (tensors of shape (B,)) for adaptive
    solves, ints on a fixed grid; wall_time: seconds (adaptive solves)."""

    nfe: int = 0
    sample_nfe: int = 0
    steps: int = 0
    accepted: object = 0
    rejected: object = 0
    wall_time: float | None = None


@dataclass
class Solution:
    y: torch.Tensor
    ts: torch.Tensor | None = None
    ys: torch.Tensor | None = None
    stats: Stats = field(default_factory=Stats)


class _ZeroNoise(Noise):
    """Noise that is all zeros: the last step of a sampler without its noise (score_sde's
    noise removal)."""

    def normal(self, like, draw=0):
        return torch.zeros_like(like)


def _progress(iterable, enabled, total, desc):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress is a nicety, never a requirement
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False)


def _make_noise(seed, batch, device, offset=0) -> Noise:
    check_seed(seed)
    return Noise(streams(seed, batch, offset=offset, device=device))


def _grid(eq, t0, t1, steps, schedule):
    process = getattr(eq, "process", None)
    if schedule is not None:
        if callable(schedule):
            if process is None:
                raise ValueError("a schedule function needs a diffusion equation; pass an explicit tensor of times")
            if steps is None:
                raise ValueError("a schedule function needs steps")
            kw = {}
            if t0 is not None:
                kw["t_start"] = float(t0)
            if t1 is not None:
                kw["t_end"] = float(t1)
            schedule = schedule(process, steps, **kw)
        return validate(schedule, process)
    if steps is None:
        raise ValueError("a fixed-step solve needs steps or a schedule")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if t0 is None or t1 is None:
        if process is None:
            raise ValueError("solve needs t0 and t1")
        t0 = process.T if t0 is None else t0
        t1 = process.t_min if t1 is None else t1
    return validate(torch.linspace(float(t0), float(t1), steps + 1, dtype=torch.float64), process)


def solve(eq, y0: torch.Tensor, t0=None, t1=None, solver=None, *, steps: int | None = None, schedule=None,
          controller=None, seed=None, save_at=None, progress: bool = False, final_noise: bool = True,
          check_finite: bool = True, noise: Noise | None = None, cuda_graph: bool = False) -> Solution:
    """Integrate ``eq`` from ``t0`` to ``t1`` starting at ``y0`` (shape (B, ...)).

    ``steps`` / ``schedule`` fix the grid (a schedule function of (process, steps) or an explicit
    1-D tensor of times). An explicit ``controller`` makes the solve adaptive; otherwise an
    adaptive solver (``solver.adaptive``) is step-size controlled when neither ``steps`` nor
    ``schedule`` is given (default controller: the per-sample PI controller with the solver's
    tolerances, :meth:`sdesolve.controllers.PIController.for_solver`), and runs on the fixed grid
    when one is. ``seed`` is an int or a (B,) tensor of
    per-sample seeds (see :mod:`sdesolve.noise`); ``noise`` overrides it with a ready Noise.
    ``save_at``: on a fixed grid, ``True`` saves every grid point; adaptive solves take a tensor
    of times. ``final_noise=False`` makes the last step add no noise. ``cuda_graph=True`` (fixed
    grids, CUDA states, counter-based noise) captures the whole loop in a CUDA graph once and
    replays it on later calls with the same equation, solver, grid and shapes (see the module
    docstring).
    """
    if solver is None:
        raise ValueError("solve needs a solver object, e.g. sdesolve.Heun() or sdesolve.EulerMaruyama()")
    if not isinstance(y0, torch.Tensor) or y0.dim() < 1:
        raise ValueError("y0 must be a tensor of shape (B, ...)")
    solver.check(eq)
    B, device = y0.shape[0], y0.device
    if noise is None:
        noise = _make_noise(seed, B, device)
    eq.reset_counts()

    if controller is not None or (solver.adaptive and steps is None and schedule is None):
        if cuda_graph:
            raise ValueError(f"solve: cuda_graph=True captures a fixed-step loop, but this solve with "
                             f"{type(solver).__name__} is adaptive (its controller decides each step on the host); "
                             "give steps or a schedule, or leave cuda_graph off")
        if controller is None:
            from .controllers import PIController
            controller = PIController.for_solver(solver)
        check_interval(eq, t0, t1)
        return controller.solve(eq, y0, t0, t1, solver, noise=noise, save_at=save_at, progress=progress,
                                check_finite=check_finite)

    grid_host = _grid(eq, t0, t1, steps, schedule).cpu()
    grid = grid_host.to(device)
    n = grid.numel() - 1
    options = dict(final_noise=final_noise, check_finite=check_finite, save=save_at is not None)
    if cuda_graph:
        y, ys, first_bad, nfe, sample_nfe = _graphed(eq, solver, y0, grid_host, grid, noise, options, progress)
    else:
        state = _init(solver, eq, y0, grid_host, grid)
        y, ys, first_bad = _fixed_loop(eq, solver, y0, grid, noise, state, progress=progress, **options)
        nfe, sample_nfe = eq.nfe, eq.sample_nfe
    if check_finite:
        _raise_nonfinite(first_bad, grid, eq)
    stats = Stats(nfe=nfe, sample_nfe=sample_nfe, steps=n, accepted=n, rejected=0)
    return Solution(y=y, ts=grid if ys is not None else None, ys=ys, stats=stats)


def _init(solver, eq, y0, grid_host, grid):
    """The solver's state before the first step; solvers that plan from the grid get the host
    copy of it (their planning reads it, on the host, without a device synchronisation)."""
    B, n = y0.shape[0], grid.numel() - 1
    plan = {"grid": grid_host} if getattr(solver, "uses_grid", False) else {}
    return solver.init(eq, grid[0].expand(B), y0, grid[n].expand(B), **plan)


def _fixed_loop(eq, solver, y0, grid, noise, state, *, final_noise, check_finite, save, progress=False):
    """The fixed-grid loop: (y, ys or None, first_bad or None).

    Free of host synchronisation (this is what ``cuda_graph=True`` captures): times are views
    of the device grid, step i's noise counter is a fill, and a non-finite state is recorded in
    ``first_bad`` (the first step at which each sample went non-finite, -1 if none)."""
    B, n = y0.shape[0], grid.numel() - 1
    tvec = lambda i: grid[i].expand(B)
    y = y0
    first_bad = torch.full((B,), -1, dtype=torch.int64, device=y0.device) if check_finite else None
    ys = [y0] if save else None
    zero = None if final_noise else _ZeroNoise(noise.stream, noise.step)
    for i in _progress(range(n), progress, n, type(solver).__name__):
        nz = noise.at(i) if (final_noise or i < n - 1) else zero
        out = solver.step(eq, tvec(i), tvec(i + 1), y, state, nz)
        y, state = out.y, out.state
        if check_finite:
            bad = ~torch.isfinite(y.reshape(B, -1)).all(1)
            first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, i), first_bad)
        if ys is not None:
            ys.append(y)
    return y, (torch.stack(ys) if ys is not None else None), first_bad


# --- CUDA graphs ----------------------------------------------------------------------------------

@dataclass
class _GraphedLoop:
    """A captured loop: the graph, its static inputs (y0, noise streams) and outputs, the device
    grid it reads, the evaluation counts of one run, and the objects it depends on (those its
    key names by id, the equation and the initial state), kept alive with it."""

    graph: object
    y0: torch.Tensor
    stream: torch.Tensor
    outputs: tuple
    grid: torch.Tensor
    nfe: int
    sample_nfe: int
    refs: tuple


_GRAPHS: "OrderedDict[tuple, _GraphedLoop]" = OrderedDict()


def clear_cuda_graphs() -> None:
    """Drops every captured sampling loop (and the GPU memory their graphs hold)."""
    _GRAPHS.clear()


def _graph_key(eq, solver, y0, grid_host, options):
    """What a captured loop depends on, and the objects named by id in it."""
    score = getattr(eq, "score", None)
    if getattr(eq, "process", None) is not None and hasattr(score, "fn"):
        kwargs = tuple(sorted(score.model_kwargs.items()))
        what = (type(eq), id(eq.process), repr(eq.process), id(score.fn), score.kind, id(score.time_label),
                score.label_dtype, tuple((k, id(v)) for k, v in kwargs))
        refs = (eq.process, score.fn, score.time_label, kwargs)
    else:
        what, refs = (id(eq),), (eq,)
    key = what + (id(solver), repr(solver), tuple(y0.shape), y0.dtype, y0.device, tuple(grid_host.tolist()),
                  tuple(sorted(options.items())), torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
                  kernel_mode())
    return key, refs + (solver,)


def _graphed(eq, solver, y0, grid_host, grid, noise, options, progress):
    """The fixed-grid loop through a cached CUDA graph: (y, ys, first_bad, nfe, sample_nfe)."""
    name = type(solver).__name__
    if y0.device.type != "cuda":
        raise ValueError(f"solve: cuda_graph=True needs a state on a CUDA device, y0 is on {y0.device} "
                         "(sample(..., device='cuda'), or leave cuda_graph off on the CPU)")
    if not (isinstance(noise, Noise) and type(noise).normal is Noise.normal and type(noise).at is Noise.at):
        raise ValueError(f"solve: cuda_graph=True replays the counter-based noise of a seed or a Noise; "
                         f"got a {type(noise).__name__}, whose draws cannot be fed to a captured loop")
    if y0.requires_grad:
        raise ValueError("solve: cuda_graph=True replays kernels without autograd; y0 requires grad "
                         "(call under torch.no_grad() or torch.inference_mode(), or leave cuda_graph off)")
    key, refs = _graph_key(eq, solver, y0, grid_host, options)
    with torch.cuda.device(y0.device):
        entry = _GRAPHS.get(key)
        if entry is not None:
            _GRAPHS.move_to_end(key)
            entry.y0.copy_(y0)
            entry.stream.copy_(noise.stream)
            entry.graph.replay()
            y, ys, first_bad = (o.clone() if o is not None else None for o in entry.outputs)
            eq.nfe, eq.sample_nfe = entry.nfe, entry.sample_nfe
            return y, ys, first_bad, entry.nfe, entry.sample_nfe
        return _capture(key, refs, eq, solver, y0, grid_host, grid, noise, options, progress, name)


def _capture(key, refs, eq, solver, y0, grid_host, grid, noise, options, progress, name):
    """Warm-up run (the result of this call) on a side stream, then the capture."""
    y0_s = y0.detach().clone()
    stream_s = noise.stream.to(device=y0.device, dtype=torch.int64).clone()
    current = torch.cuda.current_stream()
    side = torch.cuda.Stream()
    side.wait_stream(current)
    with torch.cuda.stream(side):
        eq.reset_counts()
        out = _fixed_loop(eq, solver, y0_s, grid, Noise(stream_s), _init(solver, eq, y0_s, grid_host, grid),
                          progress=progress, **options)
        nfe, sample_nfe = eq.nfe, eq.sample_nfe
    current.wait_stream(side)
    for o in out:
        if o is not None:
            o.record_stream(current)
    if out[0].requires_grad:
        raise ValueError(f"solve: cuda_graph=True replays kernels without autograd, but the {name} loop records "
                         "a gradient (a score model with parameters that require grad): call it under "
                         "torch.no_grad() or torch.inference_mode(), or leave cuda_graph off")
    # the initial state is made outside the capture and kept with the graph, which reads its tensors
    state = _init(solver, eq, y0_s, grid_host, grid)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            outputs = _fixed_loop(eq, solver, y0_s, grid, Noise(stream_s), state, progress=False, **options)
    except RuntimeError as exc:
        raise RuntimeError(
            f"solve: cuda_graph=True could not capture the {name} sampling loop in a CUDA graph ({exc}). Something in "
            "a step synchronises with the host (.item(), bool(tensor), nonzero) or copies host tensors to the "
            "device at each call (keep them on the device); run with cuda_graph=False") from exc
    eq.nfe, eq.sample_nfe = nfe, sample_nfe
    _GRAPHS[key] = _GraphedLoop(graph, y0_s, stream_s, outputs, grid, nfe, sample_nfe, refs + (eq, state))
    while len(_GRAPHS) > GRAPH_CACHE_SIZE:
        _GRAPHS.popitem(last=False)
    return out + (nfe, sample_nfe)


def _raise_nonfinite(first_bad: torch.Tensor, grid: torch.Tensor, eq):
    bad = first_bad >= 0
    if not bool(bad.any()):  # the one host sync, after the loop
        return
    step = int(first_bad[bad].min())
    samples = torch.nonzero(first_bad == step).flatten().tolist()
    t_from, t_to = float(grid[step]), float(grid[step + 1])
    what = "score model" if getattr(eq, "process", None) is not None else "drift or diffusion"
    raise NonFiniteError(
        f"non-finite values (NaN or Inf) at step {step} (t = {t_from:.6g} -> {t_to:.6g}) in samples "
        f"{_fmt(samples)}: the {what} returned NaN/Inf there", step=step, t=t_from, samples=samples)


def sample(process, score, solver, *, shape=None, x_T=None, steps: int | None = None, schedule=None,
           seed=None, device=None, dtype=None, progress: bool = False, final_noise: bool = True,
           save_at=None, sample_offset: int = 0, cuda_graph: bool = False, **solve_kwargs) -> Solution:
    """Draw samples: x_T from the prior (or given), then the reverse SDE (stochastic solvers)
    or the probability-flow ODE (deterministic ones) from T down to t_min.

    ``shape`` is (B, ...); x_T's noise comes from the same per-sample streams as the solver's
    (step counter ``PRIOR_STEP``), so sample b is the same in any batch. ``sample_offset``
    shifts the global sample indices of an int seed (for sharding a run over processes).
    ``cuda_graph=True`` replays the fixed-step loop from a CUDA graph captured on the first call
    with the same process, score, solver, grid and shape (see :func:`solve`); reuse the same
    ``score`` object across calls for the capture to be reused.
    """
    check_sample_args(process, shape, x_T, dtype, sample_offset, schedule)
    eq = process.reverse(score) if solver.stochastic else process.probability_flow(score)
    if x_T is None:
        if shape is None:
            raise ValueError("sample needs shape=(B, ...) or x_T")
        shape = tuple(shape)
        noise = _make_noise(seed, shape[0], device, offset=sample_offset)
        z = noise.at(PRIOR_STEP).normal(torch.empty(shape, device=device, dtype=dtype or torch.float32))
        x_T = process.prior_from_normal(z)
    else:
        noise = _make_noise(seed, x_T.shape[0], x_T.device, offset=sample_offset)
        if dtype is not None:
            x_T = x_T.to(dtype)
    if schedule is None and not solver.adaptive:
        schedule = solver.default_schedule
    if callable(schedule) and steps is None and not solver.adaptive:
        raise ValueError(f"sample with {type(solver).__name__} needs steps (or an explicit schedule tensor)")
    t0 = process.T
    t1 = process.t_min
    if isinstance(schedule, torch.Tensor):
        t0 = t1 = None
    return solve(eq, x_T, t0, t1, solver, steps=steps, schedule=schedule, noise=noise, progress=progress,
                 final_noise=final_noise, save_at=save_at, cuda_graph=cuda_graph, **solve_kwargs)
