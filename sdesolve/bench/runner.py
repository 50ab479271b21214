"""The sampler benchmark: a grid of samplers x NFE budgets (adaptive ones x tolerances), each row
sampling the same n samples from the same x_T and judged by the problem's quality measure.

A row is an :class:`Entry`: a sampler (an sdesolve :class:`~sdesolve.solvers.base.Solver` or a
:class:`~sdesolve.bench.peers.Peer`) with an NFE budget (fixed-step samplers) or a tolerance
(adaptive ones). For a budget the runner takes the largest number of steps whose model
evaluations do not exceed it, found by counting the evaluations of dry runs on one scalar sample
with a stand-in score (a fixed grid's count does not depend on the data); the row records both
the budget and ``stats.nfe`` of the real run.

Same noise for all: sample i (global index, ``0 <= i < n``) starts from

    x_T[i] = process.prior_from_normal(z),  z = the Philox normal of stream (seed, i), step PRIOR_STEP

exactly as :func:`sdesolve.sample` draws it (:func:`initial_noise`), and stochastic sdesolve
samplers draw their step noise from the same per-sample streams. Every row receives the same
x_T tensors (their SHA-1 is recorded per row).

Timing: before a row's timed batches, one warm-up run of the same sampler on ``warmup`` samples
(kernel compilation, allocator, caches); every timed batch is bracketed by device
synchronisation; a row's ``seconds`` is the sampling time alone (no metric computation), the
largest over the ranks of a sharded run. ``samples_per_s`` = n / seconds.

Sharding: under ``torchrun`` rank r samples the global indices of
:func:`sdesolve.bench.distributed.shard`; the quality accumulators reduce over ranks, NFE and
per-sample evaluation counts are summed. The runner is an evaluation tool: it samples under
``torch.no_grad``.
"""
from __future__ import annotations

import hashlib
import inspect
import math
import os
import platform
import sys
import time
from dataclasses import dataclass

import torch

from ..noise import PRIOR_STEP, Noise, streams
from ..scores import Score
from ..integrate import sample as sds_sample
from ..solvers.base import Solver
from . import distributed as dist
from .peers import Peer, PeerUnavailable

__all__ = ["Entry", "grid", "run", "initial_noise", "solver_label", "with_tolerance", "fit_steps", "environment"]


def initial_noise(process, shape, seed: int, offset: int = 0, device=None, dtype=torch.float32) -> torch.Tensor:
    """x_T of the samples with global indices offset .. offset + shape[0] - 1, as
    :func:`sdesolve.sample` draws it for an int ``seed`` and ``sample_offset=offset``."""
    noise = Noise(streams(seed, shape[0], offset=offset, device=device))
    z = noise.at(PRIOR_STEP).normal(torch.empty(tuple(shape), device=device, dtype=dtype))
    return process.prior_from_normal(z)


def solver_label(solver) -> str:
    """Class name and the constructor arguments that differ from their defaults (``order``
    always, tolerances never): ``DPMSolverPP(order=2)``, ``DDIM(eta=1.0)``, ``Heun``."""
    if isinstance(solver, Peer):
        return solver.label
    parts = []
    for name, p in inspect.signature(type(solver).__init__).parameters.items():
        if name in ("self", "rtol", "atol") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or not hasattr(solver, name):
            continue
        value = getattr(solver, name)
        if not isinstance(value, (bool, int, float, str, Solver)):
            continue
        if name == "order" or (p.default is not p.empty and value != p.default):
            parts.append(f"{name}={solver_label(value) if isinstance(value, Solver) else value!r}")
    return type(solver).__name__ + (f"({', '.join(parts)})" if parts else "")


def with_tolerance(solver: Solver, tol: float) -> Solver:
    """A copy of an adaptive solver with rtol = atol = tol."""
    import copy
    if not getattr(solver, "adaptive", False):
        raise ValueError(f"{type(solver).__name__} is not adaptive; it takes a number of steps, not a tolerance")
    tol = float(tol)
    if not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"a tolerance must be positive and finite, got {tol}")
    new = copy.copy(solver)
    new.rtol = new.atol = tol
    return new


def fit_steps(count, budget: int, cache: dict | None = None) -> tuple[int, int]:
    """The largest number of steps whose count(steps) <= budget (or the smallest valid number of
    steps if none fits), and its count. ``count(steps)`` is the number of model evaluations of a
    run with that many steps, or raises ValueError for a number of steps the sampler refuses
    (e.g. 1 for a grid that ends with a step to 0)."""
    cache = {} if cache is None else cache

    def c(s):
        if s not in cache:
            try:
                cache[s] = int(count(s))
            except ValueError:
                cache[s] = None
        return cache[s]

    budget = int(budget)
    first = next((s for s in range(1, 9) if c(s) is not None), None)
    if first is None:
        raise ValueError("the sampler refuses every number of steps from 1 to 8")
    c1, c2 = c(first), c(first + 1)
    per = max(1, (c2 - c1) if c2 is not None else 1)
    s = max(first, first + (budget - c1) // per)
    while s > first and (c(s) is None or c(s) > budget):
        s -= 1
    while c(s + 1) is not None and c(s + 1) <= budget:
        s += 1
        if s > 4 * budget + 8:
            raise ValueError(f"the sampler's model evaluations do not grow with its steps ({c(s)} at {s} steps); "
                             "give it an explicit grid")
    return s, c(s)


def _standin(process):
    return Score(lambda x, t: -x)


def _dry_nfe(sampler, process, steps: int, schedule=None) -> int:
    x = torch.zeros(1, 1, dtype=torch.float64)
    score = _standin(process)
    with torch.no_grad():
        if isinstance(sampler, Peer):
            return sampler.sample(process, score, x, steps=steps)[1]
        return sds_sample(process, score, sampler, x_T=x, steps=steps, schedule=schedule, seed=0).stats.nfe


def schedule_name(schedule) -> str | None:
    """Words for a schedule: a function's name, "grid of k steps" for an explicit tensor."""
    if schedule is None:
        return None
    if isinstance(schedule, torch.Tensor):
        return f"grid of {schedule.numel() - 1} steps"
    return getattr(schedule, "__name__", None) or type(schedule).__name__


@dataclass
class Entry:
    """One row: ``sampler`` at an NFE budget ``nfe`` (fixed-step) or tolerance ``tol`` (adaptive).
    ``schedule``: a schedule function (then the budget picks its number of steps) or an explicit
    1-D tensor of times, T first (then its steps are the row's; ``nfe`` is what it costs), or
    None for the solver's default. ``reference`` marks the row the others are compared with (e.g.
    1000 Euler-Maruyama steps)."""

    sampler: object
    nfe: int | None = None
    tol: float | None = None
    reference: bool = False
    schedule: object = None
    #: the method that optimized ``schedule`` (for the label) and the seconds it took (reported
    #: apart from sampling time)
    grid: str | None = None
    grid_seconds: float | None = None

    @property
    def adaptive(self) -> bool:
        return bool(getattr(self.sampler, "adaptive", False))

    @property
    def family(self) -> str:
        name = solver_label(self.sampler)
        return f"{name} [{schedule_name(self.schedule)}]" if self.schedule is not None else name

    @property
    def label(self) -> str:
        if self.adaptive:
            return f"{self.family} tol={self.tol:g}"
        if self.grid:
            return f"{solver_label(self.sampler)} @{self.nfe} [{self.grid} grid]"
        if isinstance(self.schedule, torch.Tensor) and self.nfe is None:
            return self.family
        return f"{self.family} @{self.nfe}"


def grid(solvers, nfe=(5, 10, 20, 50), tolerances=(1e-2, 1e-3), peers=(), reference: Entry | None = None) -> list:
    """Entries for every fixed-step solver x ``nfe`` and every adaptive solver x ``tolerances``
    (an adaptive solver is run at its own tolerance when ``tolerances`` is empty; an adaptive
    peer at 1e-3), then the peers likewise, the ``reference`` entry first."""
    out = [reference] if reference is not None else []
    for s in list(solvers) + list(peers):
        if getattr(s, "adaptive", False):
            if isinstance(s, Peer) or not tolerances:
                tols = list(tolerances) if tolerances else [getattr(s, "rtol", 1e-3)]
                out += [Entry(s, tol=float(t)) for t in tols]
            else:
                out += [Entry(with_tolerance(s, t), tol=float(t)) for t in tolerances]
        else:
            out += [Entry(s, nfe=int(k)) for k in nfe]
    return out


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo where there is one)."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return name


def environment(device) -> dict:
    """Versions, device and machine load, for the record."""
    import numpy
    import sdesolve
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{cpu_name()} ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})"
    env = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
           "sdesolve": sdesolve.__version__, "platform": platform.platform(), "device": str(device),
           "device_name": name, "world_size": dist.rank_world()[1]}
    try:
        env["load_average"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return env


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _one_batch(entry: Entry, problem, x_T, steps, seed, offset):
    """(samples at t_min, model calls, per-sample evaluations) of one batch."""
    s = entry.sampler
    if isinstance(s, Peer):
        y, calls = s.sample(problem.process, problem.score, x_T, steps=steps, tol=entry.tol, seed=seed, offset=offset)
        return y, calls, calls * x_T.shape[0]
    sol = sds_sample(problem.process, problem.score, s, x_T=x_T, steps=steps, schedule=entry.schedule, seed=seed,
                     sample_offset=offset)
    return sol.y, int(sol.stats.nfe), int(sol.stats.sample_nfe)


def row_grid(entry: Entry, process, steps) -> list | None:
    """The time grid of a fixed-step sdesolve row (T first), None for adaptive rows and peers."""
    s = entry.sampler
    if isinstance(s, Peer) or entry.adaptive:
        return None
    sched = entry.schedule if entry.schedule is not None else s.default_schedule
    grid = sched if isinstance(sched, torch.Tensor) else sched(process, steps)
    return [float(f"{float(t):.6g}") for t in grid.to(torch.float64).reshape(-1)]


def _progress(entries, enabled):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=len(entries), desc="bench", dynamic_ncols=True, leave=False)


def _timing(batch_times: list, batch_sizes: list, per_rank_n: int) -> dict:
    """Median and spread (min, max) over the timed batches (repeats) of the time per sample,
    across ranks the slowest rank's batch k; ``seconds`` = median per-sample time x the samples of
    the largest shard (what the row costs at this n), ``seconds_lo`` / ``seconds_hi`` likewise from
    the fastest and slowest repeat."""
    t = torch.tensor(batch_times, dtype=torch.float64)
    b = torch.tensor(batch_sizes, dtype=torch.float64)
    if t.numel() == 0:
        return {"repeats": 0, "seconds": float("nan"), "seconds_lo": float("nan"), "seconds_hi": float("nan")}
    per = t / b
    med = float(per.median()) if per.numel() % 2 else float(per.sort().values[per.numel() // 2 - 1:
                                                                                per.numel() // 2 + 1].mean())
    return {"repeats": int(t.numel()), "batch": int(b.max()), "ms_per_sample": 1e3 * med,
            "ms_per_sample_min": 1e3 * float(per.min()), "ms_per_sample_max": 1e3 * float(per.max()),
            "seconds": med * per_rank_n, "seconds_lo": float(per.min()) * per_rank_n,
            "seconds_hi": float(per.max()) * per_rank_n}


def run(problem, entries, *, n: int, seed: int = 0, batch_size: int = 1000, device="cpu", warmup: int = 8,
        repeats: int = 3, bootstrap: int = 400, level: float = 0.95, progress: bool = True, log=print) -> dict:
    """Run every entry on ``problem`` with n samples; returns the results: ``rows`` (one dict per
    entry; metrics, intervals and comparisons on rank 0), ``skipped`` (peers that cannot run,
    with the reason), ``floor`` (the quality of real or exact data of the same size; rank 0),
    ``bench_seconds``, ``meta`` and ``_replicates`` (per row, {metric: (1 + bootstrap,) tensor},
    for :func:`sdesolve.bench.report.analyse`; not written to JSON).

    Timing: after an untimed warm-up on ``warmup`` samples, a row's samples are drawn in at least
    ``repeats`` timed batches (batch = min(batch_size, ceil(shard / repeats))): the repeats of the
    timing reuse the samples the metrics need. Intervals: a paired bootstrap with ``bootstrap``
    resamples of the sample indices, the same for every row, at confidence ``level``
    (:mod:`sdesolve.bench.paired`); ``bootstrap=0`` gives point estimates only."""
    from .paired import Bootstrap, interval_record

    if n < 2 or batch_size < 1:
        raise ValueError(f"need n >= 2 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    device = torch.device(device)
    rank, world = dist.rank_world()
    lo, hi = dist.shard(n)
    per_rank = max(hi_ - lo_ for lo_, hi_ in (dist.shard(n, r, world) for r in range(world)))
    batch = max(1, min(batch_size, math.ceil(per_rank / repeats)))
    shape = tuple(problem.sample_shape)
    problem.to(device)
    quality = problem.quality
    boot = Bootstrap(n, bootstrap, seed=seed, level=level) if rank == 0 else None
    rows, skipped, replicates = [], [], []
    bar = _progress(entries, progress and rank == 0)
    say = (lambda s: (bar.write(s) if bar is not None else log(s))) if rank == 0 else (lambda s: None)
    start = time.perf_counter()
    metric_seconds = 0.0
    step_cache = {}
    for entry in entries:
        s = entry.sampler
        if bar is not None:
            bar.set_postfix_str(entry.label)
        if isinstance(s, Peer):
            try:
                s.check(problem.process)
            except PeerUnavailable as e:
                skipped.append({"sampler": entry.label, "library": s.library, "reason": str(e)})
                say(f"skipped {entry.label}: {e}")
                if bar is not None:
                    bar.update(1)
                continue
        steps, error, grid = None, None, None
        parts, times, sizes = [], [], []
        seconds, calls, batches, evals, sha = 0.0, 0, 0, 0, None
        with torch.no_grad():
            try:
                if not entry.adaptive and not isinstance(entry.schedule, torch.Tensor):
                    steps, _ = fit_steps(lambda k: _dry_nfe(s, problem.process, k, entry.schedule), entry.nfe,
                                         step_cache.setdefault((id(s), id(entry.schedule)), {}))
                grid = row_grid(entry, problem.process, steps)
                if warmup > 0:
                    w = min(warmup, n)
                    _one_batch(entry, problem, initial_noise(problem.process, (w,) + shape, seed, 0, device),
                               steps, seed, 0)
                for b_lo in range(lo, hi, batch):
                    b = min(batch, hi - b_lo)
                    x_T = initial_noise(problem.process, (b,) + shape, seed, b_lo, device)
                    if sha is None:
                        sha = hashlib.sha1(x_T.detach().cpu().numpy().tobytes()).hexdigest()[:16]
                    _sync(device)
                    t0 = time.perf_counter()
                    y, c, e = _one_batch(entry, problem, x_T, steps, seed, b_lo)
                    _sync(device)
                    dt = time.perf_counter() - t0
                    seconds += dt
                    times.append(dt)
                    sizes.append(b)
                    calls, evals, batches = calls + c, evals + e, batches + 1
                    parts.append(quality.prepare(problem.to_data(y.float())))
            except Exception as exc:  # a sampler that fails (diverges, exceeds max_steps) is a result too
                error = f"{type(exc).__name__}: {exc}"
        counts = dist.all_sum(torch.tensor([float(error is not None), calls, batches, evals], dtype=torch.float64))
        seconds = dist.all_max(seconds)
        # repeat k of the timing: batch k of every rank, the slowest of them (ranks run side by side)
        k_max = int(dist.all_max(len(times)))
        t_all = [dist.all_max(times[k] if k < len(times) else 0.0) for k in range(k_max)]
        timing = _timing(t_all, [batch] * k_max, per_rank) if counts[0] == 0 else _timing([], [], per_rank)
        failed = counts[0] > 0
        width = parts[0].shape[1] if parts else 0
        width = int(dist.all_max(width))
        mine = torch.cat(parts) if parts and not failed else torch.zeros(0, width, dtype=torch.float64)
        if failed:
            mine = torch.zeros(0, width, dtype=torch.float64)
        rep = dist.gather(mine) if not failed else None
        metrics, intervals, reps = {}, {}, {}
        if failed:
            metrics = {quality.primary: float("nan")}
            error = error or "failed on another rank"
        elif rank == 0:
            if not torch.isfinite(rep).all():
                metrics = {m: float("nan") for m in quality.names}
                error = "non-finite samples"
            else:
                t_m = time.perf_counter()
                for m in quality.metrics:
                    v = boot.evaluate(m, rep)
                    reps[m.name] = v
                    r = interval_record(v, level)
                    metrics[m.name], intervals[m.name] = r["value"], [r["lo"], r["hi"]]
                metric_seconds += time.perf_counter() - t_m
        total_calls, total_batches, total_evals = float(counts[1]), int(counts[2]), float(counts[3])
        nfe = total_calls / total_batches if total_batches else float("nan")
        row = {
            "sampler": entry.label, "family": entry.family,
            "library": s.library if isinstance(s, Peer) else "sdesolve", "peer": isinstance(s, Peer),
            "counterpart": getattr(s, "counterpart", "") if isinstance(s, Peer) else "",
            "solver": repr(s), "stochastic": bool(s.stochastic), "adaptive": entry.adaptive,
            "reference": entry.reference, "nfe_requested": entry.nfe, "tolerance": entry.tol, "steps": steps,
            "schedule": schedule_name(entry.schedule if entry.schedule is not None
                                      else getattr(s, "default_schedule", None)) if grid is not None else None,
            "grid": grid,
            "nfe": (int(nfe) if nfe == int(nfe) else round(nfe, 2)) if math.isfinite(nfe) else None,
            "nfe_per_sample": round(total_evals / n, 3),
            "seconds": timing["seconds"], "seconds_lo": timing["seconds_lo"], "seconds_hi": timing["seconds_hi"],
            "seconds_total": seconds, "timing": timing,
            "samples_per_s": n / (timing["seconds"] * world) if timing["seconds"] and math.isfinite(timing["seconds"])
            else None,
            "metrics": metrics, "intervals": intervals, "x_T_sha1": sha, "error": error,
        }
        if entry.grid is not None:  # an optimized grid: how it was made, and what it cost
            row.update(grid_method=entry.grid, grid_optimization_seconds=entry.grid_seconds)
        rows.append(row)
        replicates.append(reps)
        m = metrics.get(quality.primary, float("nan"))
        ci = intervals.get(quality.primary)
        if rank == 0:
            say(f"{entry.label:42s} NFE {row['nfe']!s:>7s}  {row['seconds']:8.2f} s  {quality.primary} {m:.4g}"
                + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci and math.isfinite(ci[0]) else "")
                + (f"  ERROR {error}" if error else ""))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    wall = dist.all_max(time.perf_counter() - start)
    floor = quality.floor(n) if rank == 0 else {}
    return {"rows": rows, "skipped": skipped, "floor": floor, "bench_seconds": wall, "_replicates": replicates,
            "meta": {"problem": problem.name, "problem_info": problem.info, "n": n, "seed": seed,
                     "batch_size": batch_size, "timed_batch": batch, "repeats": repeats, "warmup": warmup,
                     "bootstrap": boot.describe() if boot is not None else {}, "level": level,
                     "metric_seconds": round(metric_seconds, 2),
                     "quality": quality.describe(),
                     "sample_shape": list(shape), "process": repr(problem.process),
                     "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
                     **environment(device)}}
