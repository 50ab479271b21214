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
    return s, c(s)


def _standin(process):
    return Score(lambda x, t: -x)


def _dry_nfe(sampler, process, steps: int) -> int:
    x = torch.zeros(1, 1, dtype=torch.float64)
    score = _standin(process)
    with torch.no_grad():
        if isinstance(sampler, Peer):
            return sampler.sample(process, score, x, steps=steps)[1]
        return sds_sample(process, score, sampler, x_T=x, steps=steps, seed=0).stats.nfe


@dataclass
class Entry:
    """One row: ``sampler`` at an NFE budget ``nfe`` (fixed-step) or tolerance ``tol`` (adaptive).
    ``reference`` marks the row the others are compared with (e.g. 1000 Euler-Maruyama steps)."""

    sampler: object
    nfe: int | None = None
    tol: float | None = None
    reference: bool = False
    #: an explicit grid (e.g. an optimized one) instead of the solver's default schedule, with its
    #: name for the label and the seconds it took to make (reported apart from sampling time)
    schedule: torch.Tensor | None = None
    grid: str | None = None
    grid_seconds: float | None = None

    @property
    def adaptive(self) -> bool:
        return bool(getattr(self.sampler, "adaptive", False))

    @property
    def family(self) -> str:
        return solver_label(self.sampler)

    @property
    def label(self) -> str:
        if self.adaptive:
            return f"{self.family} tol={self.tol:g}"
        return f"{self.family} @{self.nfe}" + (f" [{self.grid} grid]" if self.grid else "")


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


def _progress(entries, enabled):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=len(entries), desc="bench", dynamic_ncols=True, leave=False)


def run(problem, entries, *, n: int, seed: int = 0, batch_size: int = 1000, device="cpu", warmup: int = 8,
        progress: bool = True, log=print) -> dict:
    """Run every entry on ``problem`` with n samples; returns the results: ``rows`` (one dict per
    entry, the same on every rank), ``skipped`` (peers that cannot run, with the reason), ``floor``
    (the quality of real or exact data of the same size; computed on rank 0 only),
    ``bench_seconds`` and ``meta``. ``log`` receives one line per row (rank 0 only)."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"need n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    device = torch.device(device)
    rank, world = dist.rank_world()
    lo, hi = dist.shard(n)
    shape = tuple(problem.sample_shape)
    problem.to(device)
    rows, skipped = [], []
    bar = _progress(entries, progress and rank == 0)
    say = (lambda s: (bar.write(s) if bar is not None else log(s))) if rank == 0 else (lambda s: None)
    start = time.perf_counter()
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
        steps, error = None, None
        acc = problem.quality.accumulator()
        seconds, calls, batches, evals, sha = 0.0, 0, 0, 0, None
        with torch.no_grad():
            try:
                if not entry.adaptive:
                    steps, _ = fit_steps(lambda k: _dry_nfe(s, problem.process, k), entry.nfe,
                                         step_cache.setdefault(id(s), {}))
                if warmup > 0:
                    w = min(warmup, n)
                    _one_batch(entry, problem, initial_noise(problem.process, (w,) + shape, seed, 0, device),
                               steps, seed, 0)
                for b_lo in range(lo, hi, batch_size):
                    b = min(batch_size, hi - b_lo)
                    x_T = initial_noise(problem.process, (b,) + shape, seed, b_lo, device)
                    if sha is None:
                        sha = hashlib.sha1(x_T.detach().cpu().numpy().tobytes()).hexdigest()[:16]
                    _sync(device)
                    t0 = time.perf_counter()
                    y, c, e = _one_batch(entry, problem, x_T, steps, seed, b_lo)
                    _sync(device)
                    seconds += time.perf_counter() - t0
                    calls, evals, batches = calls + c, evals + e, batches + 1
                    acc.update(problem.to_data(y.float()))
            except Exception as exc:  # a sampler that fails (diverges, exceeds max_steps) is a result too
                error = f"{type(exc).__name__}: {exc}"
        counts = dist.all_sum(torch.tensor([float(error is not None), calls, batches, evals], dtype=torch.float64))
        seconds = dist.all_max(seconds)
        if counts[0] > 0:
            metrics = {problem.quality.primary: float("nan")}
            error = error or "failed on another rank"
        else:
            metrics = acc.result()
        total_calls, total_batches, total_evals = float(counts[1]), int(counts[2]), float(counts[3])
        nfe = total_calls / total_batches if total_batches else float("nan")
        row = {
            "sampler": entry.label, "family": entry.family,
            "library": s.library if isinstance(s, Peer) else "sdesolve", "peer": isinstance(s, Peer),
            "counterpart": getattr(s, "counterpart", "") if isinstance(s, Peer) else "",
            "solver": repr(s), "stochastic": bool(s.stochastic), "adaptive": entry.adaptive,
            "reference": entry.reference, "nfe_requested": entry.nfe, "tolerance": entry.tol, "steps": steps,
            "nfe": (int(nfe) if nfe == int(nfe) else round(nfe, 2)) if math.isfinite(nfe) else None,
            "nfe_per_sample": round(total_evals / n, 3),
            "seconds": seconds, "samples_per_s": n / seconds if seconds > 0 else None,
            "metrics": metrics, "x_T_sha1": sha, "error": error,
        }
        if entry.schedule is not None:
            row.update(grid=entry.grid, grid_times=[float(t) for t in entry.schedule],
                       grid_optimization_seconds=entry.grid_seconds)
        rows.append(row)
        m = metrics.get(problem.quality.primary)
        say(f"{entry.label:42s} NFE {row['nfe']!s:>7s}  {seconds:8.2f} s  {problem.quality.primary} "
            f"{m:.4g}" + (f"  ERROR {error}" if error else ""))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    wall = dist.all_max(time.perf_counter() - start)
    floor = problem.quality.floor(n) if rank == 0 else {}
    return {"rows": rows, "skipped": skipped, "floor": floor, "bench_seconds": wall,
            "meta": {"problem": problem.name, "problem_info": problem.info, "n": n, "seed": seed,
                     "batch_size": batch_size, "warmup": warmup, "quality": problem.quality.describe(),
                     "sample_shape": list(shape), "process": repr(problem.process),
                     "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
                     **environment(device)}}
