"""``solve`` integrates any equation with any solver; ``sample`` draws from a diffusion model.

One loop serves every solve::

    plan  = plan_times(...)                  # a fixed grid, or an interval under step-size control
    run   = GridRun(...) or ControlledRun(...)
    while run.active():
        t0, t1, y, state, noise, at = run.attempt()
        run.commit(solver.step(eq, t0, t1, y, state, noise, at))
    return run.finish()

``t`` reaches the solver as (B,) float64 tensors and ``at`` (a :class:`~sdesolve.timeplan.Position`)
says where the step is. What differs between a fixed grid and step-size control are the phases
of ``attempt`` and ``commit``:

* fixed grid (:class:`GridRun`): the times of step i are views of the device grid (one grid
  point expanded to the batch, so that the coefficients of a time are computed once for the batch,
  :func:`sdesolve.tensors.shared_time`, or looked up in a table over the grid,
  :class:`sdesolve.tensors.PointTable`), its noise the sample's stream at step i; every step is
  accepted; a non-finite state is recorded per sample on the device (from the sum over each
  sample, NaN or Inf where the sample has a NaN or an Inf) and reported once, after the loop, with
  the first step, time and samples at fault.
  No phase synchronises with the host, so the loop can be captured in a CUDA graph or compiled.
* step-size control (:class:`ControlledRun`), one step size per sample:
  - compaction: the samples still running are gathered (a finished sample costs nothing more);
  - proposal: t1 = t + h, clipped to land exactly on the next stop (a ``save_at`` time for solvers
    without dense output, or the end);
  - noise: each attempt draws from the sample's stream at its attempt counter; the Brownian
    increment is bridged across rejections (:mod:`sdesolve.brownian`);
  - decision: the controller (a policy, :mod:`sdesolve.controllers`) accepts or rejects each
    attempt from its error norm and sizes the next one;
  - dense output / saving: ``save_at`` times inside accepted steps are interpolated by solvers with
    dense output, or stopped at exactly;
  - errors: too many attempts, an underflowing step size, or non-finite values that no smaller step
    avoids raise, naming the samples, the step and the time.

CUDA graphs (``cuda_graph=True``, fixed grids on CUDA). Since the grid fixes the number of
steps, the whole loop is captured once in a ``torch.cuda.CUDAGraph``: every kernel of every
step, with the step index, the times and the noise counters of each step recorded as they were
launched. The first call with a given (equation, solver, grid, shape, dtype, device) runs the
loop eagerly (a warm-up that compiles the kernels; its result is the call's result) and then
captures it; later calls with the same ones copy x_T (y0) and the noise streams into the
graph's static inputs and replay it: one launch for the whole loop, no Python per step. The
captured loops are kept in a small least-recently-used cache (:data:`GRAPH_CACHE_SIZE` entries,
emptied by :func:`clear_cuda_graphs`); each holds the GPU memory of one loop's working set.
What a replay does is exactly what the captured loop did: tensors are read where they were at
capture (weights may change in place, not be replaced), Python-level changes to the score
function or the solver are not seen unless they change the cache key (the equation's
:meth:`~sdesolve.equations.Equation.graph_key`, the solver's ``repr``). The loop must be
capturable: no host synchronisation, no host-to-device copies per call, no autograd (call under
``torch.no_grad()`` or ``torch.inference_mode()``). On a CPU state, or for a step-size controlled
solve, ``cuda_graph=True`` is an error (nothing to capture).
"""
from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass

import torch

from .controllers import PIController
from .brownian import BridgedIncrements
from .errors import MaxStepsError, NonFiniteError, StepSizeError, _fmt
from .kernels import kernel_mode
from .noise import PRIOR_STEP, Noise
from .solution import Solution, Stats
from .timeplan import CONTROLLED, TimePlan, plan_times
from .validation import check_interval, check_sample_args, check_seed

__all__ = ["solve", "sample", "clear_cuda_graphs", "GRAPH_CACHE_SIZE", "GridRun", "ControlledRun"]

#: how many captured sampling loops ``cuda_graph=True`` keeps (least recently used dropped first)
GRAPH_CACHE_SIZE = 4

_EPS64 = torch.finfo(torch.float64).eps

#: the first-bad-step mark of a sample whose states have all been finite (above any step index)
_CLEAN = 2**62
_FOLD = 32  # steps whose finiteness is folded into first_bad at once


class _ZeroNoise(Noise):
    """Noise that is all zeros: the last step of a sampler without its noise (score_sde's
    noise removal)."""

    def normal(self, like, draw=0):
        return torch.zeros_like(like)


def progress_bar(enabled: bool, total: int, desc: str):
    """A tqdm bar when asked for and installed (a nicety, never a requirement), else None."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, leave=False)


def _loop(eq, solver, run, progress: bool = False):
    """The integration loop: the only one in sdesolve (see the module docstring). The caller
    reads the result from ``run`` (``run.finish()``, or the raw outputs a CUDA graph captures)."""
    bar = progress_bar(progress, run.total, type(solver).__name__)
    while run.active():
        t0, t1, y, state, noise, at = run.attempt()
        run.commit(solver.step(eq, t0, t1, y, state, noise, at))
        if bar is not None:
            bar.n = run.done_count()
            bar.refresh()
    if bar is not None:
        bar.close()
    return run


# --- fixed grid ------------------------------------------------------------------------------------
class GridRun:
    """The phases of a fixed-grid solve; free of host synchronisation."""

    def __init__(self, eq, solver, y0, plan: TimePlan, noise, *, final_noise=True, check_finite=True,
                 save=False, state=None):
        B = y0.shape[0]
        self.eq, self.plan, self.noise = eq, plan, noise
        grid = plan.grid.to(y0.device)
        self.grid = grid
        # row i: grid point i for the batch, a view with stride 0 (sdesolve.tensors.grid_point)
        self.times = grid.as_strided((grid.shape[0], B), (grid.stride(0), 0))
        self.t = self.times[0]  # the next step's start: the last step's end, the same tensor
        self.t_next = None
        self.n = plan.steps
        self.i = 0
        self.total = self.n
        self.y = y0
        self.state = solver.init(eq, self.t, y0) if state is None else state
        self.check = check_finite and math.prod(y0.shape[1:]) > 0
        self.sums = []    # per-sample sums of the states of the steps since the last fold
        self.marks = []   # per fold, (B,): which of its steps had a non-finite sum, as bits in base 4
        self.ones = None
        self.weights = None
        self.ys = [y0] if save else None
        self.zero = None if final_noise else _ZeroNoise(noise.stream, noise.step)

    def active(self) -> bool:
        return self.i < self.n

    def done_count(self) -> int:
        return self.i

    def attempt(self):
        i = self.i
        nz = self.noise.at(i) if (self.zero is None or i < self.n - 1) else self.zero
        self.t_next = self.times[i + 1]
        return self.t, self.t_next, self.y, self.state, nz, self.plan.positions[i]

    def commit(self, out):
        self.y, self.state, self.t = out.y, out.state, self.t_next
        if self.check:
            # the sum over a sample is NaN or +-Inf where the sample has a NaN or an Inf (and where finite
            # values sum past the largest float: never in a solve that is going well), one read of the
            # state. The (B,) sums of _FOLD steps are folded together.
            self.sums.append(self._row_sums(self.y))
        if self.ys is not None:
            self.ys.append(self.y)
        self.i += 1
        if len(self.sums) == _FOLD:
            self._fold()

    def _row_sums(self, y):
        """Per-sample sums of y: a matrix-vector product with ones (one pass, fast for any sample
        size, where a reduction over a short last dimension is not); half precision sums in float32."""
        if y.dim() != 2:
            y = y.reshape(y.shape[0], -1)
        if y.dtype in (torch.float16, torch.bfloat16):
            return y.sum(1, dtype=torch.float32)
        ones = self.ones
        if ones is None or ones.dtype != y.dtype or ones.device != y.device or ones.shape[0] != y.shape[1]:
            ones = self.ones = torch.ones(y.shape[1], dtype=y.dtype, device=y.device)
        return torch.mv(y, ones)

    def _fold(self):
        """One mark per sample for the steps of ``sums``: sum_k [step k's sum is not finite] 4^(K-1-k),
        a matrix-vector product (the reductions over steps of a (K, B) matrix are slow on the CPU);
        the first bad step k of a fold is read back from its mark's highest power of 4."""
        S = torch.stack(self.sums)  # (k, B), k <= K
        if self.weights is None or self.weights.dtype != S.dtype:
            self.weights = 4.0 ** torch.arange(_FOLD - 1, -1, -1, dtype=S.dtype, device=S.device)
        nonfinite = torch.nan_to_num(S * 0.0, nan=1.0)  # 0 where finite, 1 where not (inf * 0 is NaN)
        self.marks.append(torch.mv(nonfinite.T, self.weights[:S.shape[0]]))
        self.sums = []

    def first_bad(self):
        """Per sample, the first step that left a non-finite state, _CLEAN where there is none
        (None when not checked); on the device, no host synchronisation."""
        if not self.check:
            return None
        if self.sums:
            self._fold()
        if not self.marks:
            return torch.full((self.y.shape[0],), _CLEAN, dtype=torch.int64, device=self.y.device)
        marks = torch.stack(self.marks)  # (folds, B)
        bad = marks > 0
        fold = bad.to(torch.int8).argmax(0)  # the first bad fold (argmax: the first maximum)
        mark = marks.gather(0, fold[None]).squeeze(0).clamp_min(1.0)
        # a mark of first step k lies in [4^(K-1-k), 4^(K-1-k) * 4/3), rounding included
        step = fold * _FOLD + (_FOLD - 1) - torch.floor(torch.log2(mark) * 0.5).to(torch.int64)
        return torch.where(bad.any(0), step, _CLEAN)

    def outputs(self):
        return self.y, (torch.stack(self.ys) if self.ys is not None else None), self.first_bad()

    def finish(self) -> Solution:
        y, ys, first_bad = self.outputs()
        if first_bad is not None:
            _raise_nonfinite(first_bad, self.grid, self.eq)
        n = self.n
        stats = Stats(nfe=self.eq.nfe, sample_nfe=self.eq.sample_nfe, steps=n, accepted=n, rejected=0)
        return Solution(y=y, ts=self.grid if ys is not None else None, ys=ys, stats=stats)


def _raise_nonfinite(first_bad: torch.Tensor, grid: torch.Tensor, eq):
    bad = first_bad < _CLEAN
    if not bool(bad.any()):  # the one host sync, after the loop
        return
    step = int(first_bad[bad].min())
    samples = torch.nonzero(first_bad == step).flatten().tolist()
    t_from, t_to = float(grid[step]), float(grid[step + 1])
    what = "score model" if eq.process is not None else "drift or diffusion"
    raise NonFiniteError(
        f"non-finite values (NaN or Inf) at step {step} (t = {t_from:.6g} -> {t_to:.6g}) in samples "
        f"{_fmt(samples)}: the {what} returned NaN/Inf there", step=step, t=t_from, samples=samples)


# --- step-size control -----------------------------------------------------------------------------
def _take(state, idx):
    """Rows ``idx`` of a solver state: None, a tensor with a leading batch dimension, or a
    tuple/list of those."""
    if state is None or idx is None:
        return state
    if isinstance(state, torch.Tensor):
        return state[idx]
    if isinstance(state, (tuple, list)):
        return type(state)(_take(s, idx) for s in state)
    raise TypeError(f"an adaptive solver's state must be None, a tensor or a tuple of tensors, got {type(state).__name__}")


def _put(full, idx, rows, new, everything: bool = False):
    """``full`` with rows ``rows`` (positions within the active set ``idx``; None: all samples) of
    ``new`` written at ``idx[rows]``; out of place, so that autograd sees every write.
    ``everything``: the active set is the whole batch and every row is written."""
    if full is None and new is None:
        return None
    if isinstance(full, torch.Tensor) and isinstance(new, torch.Tensor):
        if everything:
            return new.to(full.dtype)
        dst = rows if idx is None else idx[rows]
        return full.index_put((dst,), new[rows].to(full.dtype))
    if isinstance(full, (tuple, list)) and isinstance(new, (tuple, list)) and len(full) == len(new):
        return type(full)(_put(f, idx, rows, n, everything) for f, n in zip(full, new))
    raise TypeError("an adaptive solver must keep the structure of its state from step to step "
                    f"(got {type(full).__name__} then {type(new).__name__})")


class ControlledRun:
    """The phases of a solve under per-sample step-size control (see the module docstring)."""

    def __init__(self, eq, solver, y0, plan: TimePlan, noise, controller, *, save_at=None, check_finite=True):
        self.t_start = time.perf_counter()
        B, device = y0.shape[0], y0.device
        self.eq, self.solver, self.ctl, self.check_finite = eq, solver, controller, check_finite
        self.B, self.total = B, B
        t0, t1 = plan.t0, plan.t1
        self.t1, self.direction = t1, plan.direction
        if noise is not None and len(noise) != B:
            raise ValueError(f"noise for {len(noise)} samples, the batch has {B}")
        self.dense = solver.dense is not None
        self.save = _save_times(save_at, t0, t1, self.direction, device)
        self.accepted = torch.zeros(B, dtype=torch.int64, device=device)
        self.rejected = torch.zeros(B, dtype=torch.int64, device=device)
        self.iterations = 0
        self.y = y0
        self.ys = None
        self.done = torch.zeros(B, dtype=torch.bool, device=device)
        if t0 == t1:
            self.done[:] = True
            if self.save is not None:
                self.ys = y0.unsqueeze(0).expand(self.save.numel(), *y0.shape).clone()
            return
        self._stops(t0, t1, device)
        self.t = torch.full((B,), t0, dtype=torch.float64, device=device)
        t_end = torch.full((B,), t1, dtype=torch.float64, device=device)
        self.state, f0 = solver.start(eq, self.t, y0)
        if controller.dt0 is None:
            if f0 is None:
                f0 = eq.drift(self.t, y0)
            if check_finite:
                bad = ~torch.isfinite(f0.reshape(B, -1)).all(1)
                if bool(bad.any()):
                    samples = torch.nonzero(bad).flatten().tolist()
                    raise NonFiniteError(f"non-finite drift at the start (t = {t0:.6g}) in samples {_fmt(samples)}",
                                         step=0, t=t0, samples=samples)
            habs = controller.initial_step(eq, self.t, y0, f0, t_end - self.t, solver.order)
            if check_finite and not bool(torch.isfinite(habs).all()):  # the drift was NaN/Inf at t0 + h0
                samples = torch.nonzero(~torch.isfinite(habs)).flatten().tolist()
                raise NonFiniteError(f"{type(solver).__name__}: non-finite drift near the start (t = {t0:.6g}) in "
                                     f"samples {_fmt(samples)}: the initial step size is not finite",
                                     step=0, t=t0, samples=samples)
        else:
            habs = torch.full((B,), min(controller.dt0, abs(t1 - t0)), dtype=torch.float64, device=device)
        self.h = self.direction * habs
        if self.save is not None:
            self.ys = torch.zeros((self.save.numel(),) + tuple(y0.shape), dtype=y0.dtype, device=device)
            at_start = self.save == t0
            if bool(at_start.any()):
                self.ys[at_start] = y0.unsqueeze(0)
        self.err_prev = torch.ones(B, dtype=torch.float64, device=device)
        self.after_reject = torch.zeros(B, dtype=torch.bool, device=device)
        self.last_nonfinite = torch.zeros(B, dtype=torch.bool, device=device)
        self.stop_idx = torch.zeros(B, dtype=torch.int64, device=device)
        self.noise = noise if (noise is not None and solver.stochastic) else None
        if self.noise is not None:
            base = noise.step
            self.base_step = (base.to(device) if isinstance(base, torch.Tensor)
                              else torch.full((B,), int(base), dtype=torch.int64, device=device))
            self.path = BridgedIncrements(B, abs(t1 - t0)) if controller.bridge else None
        self.k = float(solver.error_order)
        self.floor = 16 * _EPS64 * abs(t1 - t0)

    def _stops(self, t0, t1, device):
        """Where steps must land exactly: ``save_at`` times (solvers without dense output) and t1;
        ``stop_save[j]`` is the save index of stop j, -1 for none."""
        save, direction = self.save, self.direction
        if save is not None and not self.dense:
            inner = save[direction * (save - t0) > 0]
            self.stops = inner if (inner.numel() and float(inner[-1]) == t1) else torch.cat(
                [inner, torch.tensor([t1], dtype=torch.float64, device=device)])
            first = save.numel() - inner.numel()
            self.stop_save = torch.tensor([first + j if j < inner.numel() else -1 for j in range(self.stops.numel())],
                                          device=device)
        else:
            self.stops = torch.tensor([t1], dtype=torch.float64, device=device)
            self.stop_save = torch.tensor([-1], device=device)

    def active(self) -> bool:
        # compaction: the samples still running
        act = ~self.done
        self.n_act = int(act.sum())
        if self.n_act == 0:
            return False
        self.idx = None if self.n_act == self.B else torch.nonzero(act).flatten()
        self._check_attempts()
        return True

    def done_count(self) -> int:
        return int(self.done.sum())

    def take(self, x):
        return x if self.idx is None else x[self.idx]

    def _check_attempts(self):
        take = self.take
        attempts = take(self.accepted) + take(self.rejected)
        over = attempts >= self.ctl.max_steps
        if bool(over.any()):
            rows = torch.nonzero(over).flatten()
            samples = (rows if self.idx is None else self.idx[rows]).tolist()
            ts = take(self.t)[rows].tolist()
            solver, ctl = self.solver, self.ctl
            rtol = solver.rtol if solver.rtol is not None else ctl.rtol
            atol = solver.atol if solver.atol is not None else ctl.atol
            hint = ""
            if self.y.dtype != torch.float64 and min((v for v in (rtol, atol) if v is not None), default=1.0) < 1e-6:
                hint = f"; a {self.y.dtype} state cannot resolve tolerances much below 1e-6"
            raise MaxStepsError(
                f"{type(solver).__name__}: samples {_fmt(samples)} did not reach t1 = {self.t1:.6g} within "
                f"max_steps = {ctl.max_steps} steps; they stopped at t = {_fmt(['%.6g' % x for x in ts])} "
                f"(tolerances rtol={rtol}, atol={atol} cannot be met there{hint}; loosen them or raise "
                "max_steps)", step=self.iterations, t=ts[0], samples=samples)
        self.attempts = attempts

    def attempt(self):
        take, d = self.take, self.direction
        ta, ha, ya = take(self.t), take(self.h), take(self.y)
        target = self.stops[take(self.stop_idx)]
        last = d * (ta + 1.01 * ha - target) >= 0
        t1a = torch.where(last, target, ta + ha)
        nz = None
        if self.noise is not None:
            sub = (self.noise if self.idx is None else self.noise[self.idx]).at(take(self.base_step) + self.attempts)
            if self.path is not None:
                t1a, last, nz = self.path.propose(self.idx, ta, t1a, last, target, ya, sub)
            else:
                nz = sub
        self.ta, self.t1a, self.ya, self.last = ta, t1a, ya, last
        return ta, t1a, ya, _take(self.state, self.idx), nz, CONTROLLED

    def commit(self, out):
        if out.error is None:
            raise TypeError(f"{type(self.solver).__name__} returns no error estimate: it cannot be step-size controlled")
        take, idx, d = self.take, self.idx, self.direction
        ta, t1a, ya, last = self.ta, self.t1a, self.ya, self.last
        err = out.error.detach().to(torch.float64)  # step sizes are not differentiated through
        finite = torch.isfinite(err)
        if self.check_finite:
            finite = finite & torch.isfinite(out.y.reshape(self.n_act, -1)).all(1)
        acc = finite & (err <= 1.0)
        self.iterations += 1
        if self.noise is not None and self.path is not None:
            self.path.reject(idx, ~acc)
        if self.ys is not None and self.dense and bool(acc.any()):
            _interpolate(self.solver, self.save, d, acc, idx, ta, t1a, ya, out, self.ys)

        rows = torch.nonzero(acc).flatten()
        if rows.numel():
            dst = rows if idx is None else idx[rows]
            everything = idx is None and rows.numel() == self.B
            self.y = _put(self.y, idx, rows, out.y, everything)
            self.state = _put(self.state, idx, rows, out.state, everything)
            self.t = self.t.index_put((dst,), t1a[rows])
            landed = last[rows]
            if self.ys is not None and not self.dense and bool(landed.any()):
                lr = rows[landed]
                sv = self.stop_save[take(self.stop_idx)[lr]]
                keep = sv >= 0
                if bool(keep.any()):
                    self.ys[sv[keep], (lr if idx is None else idx[lr])[keep]] = out.y[lr[keep]].to(self.ys.dtype)
            self.stop_idx = self.stop_idx.index_put((dst,), self.stop_idx[dst] + landed.long())
            self.done = self.done | torch.zeros_like(self.done).index_put((dst,), self.stop_idx[dst] >= self.stops.numel())

        # the next step sizes: the controller's factor; a non-finite attempt retries at a tenth
        fac = self.ctl.adapt(torch.where(finite, err, torch.ones_like(err)), take(self.err_prev), self.k, acc,
                             take(self.after_reject))
        fac = torch.where(finite, fac, torch.full_like(fac, max(self.ctl.min_factor, 0.1)))
        if rows.numel():  # the accepted steps' errors are the next law's err_{n-1}
            self.err_prev = self.err_prev.index_put((dst,), err[rows].clamp_min(1e-4))
        t_now = take(self.t)
        h_new = d * torch.minimum(((t1a - ta) * fac).abs(), (self.t1 - t_now).abs())
        still = ~take(self.done)
        tiny = still & ~(h_new.abs() > torch.clamp(16 * _EPS64 * t_now.abs(), min=self.floor))  # NaN h is tiny
        if bool(tiny.any()):
            self._raise_tiny(tiny, t_now, ~finite & ~acc, take(self.last_nonfinite))
        after_reject = ~acc & self.ctl.relax_after_reject
        if idx is None:
            self.h, self.after_reject, self.last_nonfinite = h_new, after_reject, ~finite
            self.accepted, self.rejected = self.accepted + acc.long(), self.rejected + (~acc).long()
        else:
            self.h = self.h.index_put((idx,), h_new)
            self.after_reject = self.after_reject.index_put((idx,), after_reject)
            self.last_nonfinite = self.last_nonfinite.index_put((idx,), ~finite)
            self.accepted = self.accepted.index_put((idx,), acc.long(), accumulate=True)
            self.rejected = self.rejected.index_put((idx,), (~acc).long(), accumulate=True)

    def _raise_tiny(self, tiny, t_now, nonfinite_now, nonfinite_before):
        rows = torch.nonzero(tiny).flatten()
        samples = (rows if self.idx is None else self.idx[rows]).tolist()
        ts = t_now[rows].tolist()
        nf = (nonfinite_now | nonfinite_before)[rows]
        name, it = type(self.solver).__name__, self.iterations
        if bool(nf.all()):
            raise NonFiniteError(
                f"{name}: non-finite values (NaN or Inf) at step {it} in samples {_fmt(samples)} at "
                f"t = {_fmt(['%.6g' % x for x in ts])}: every retry with a smaller step failed as well (the drift, "
                "diffusion or score returns NaN/Inf there)", step=it, t=ts[0], samples=samples)
        raise StepSizeError(
            f"{name}: the step size underflowed at step {it} for samples {_fmt(samples)} at "
            f"t = {_fmt(['%.6g' % x for x in ts])}: the tolerance cannot be met there (a singularity, a "
            "non-smooth drift, or a tolerance below the precision of the state's dtype)",
            step=it, t=ts[0], samples=samples)

    def finish(self) -> Solution:
        stats = Stats(nfe=self.eq.nfe, sample_nfe=self.eq.sample_nfe, steps=self.iterations, accepted=self.accepted,
                      rejected=self.rejected, wall_time=time.perf_counter() - self.t_start)
        return Solution(y=self.y, ts=self.save, ys=self.ys, stats=stats)


def _save_times(save_at, t0, t1, direction, device):
    if save_at is None:
        return None
    if save_at is True or not isinstance(save_at, torch.Tensor):
        raise TypeError("an adaptive solve takes save_at as a 1-D tensor of times (there is no grid to save)")
    s = save_at.to(device=device, dtype=torch.float64).reshape(-1)
    if s.numel() == 0:
        raise ValueError("save_at is empty")
    if not torch.isfinite(s).all():
        raise ValueError("save_at has non-finite times")
    if s.numel() > 1 and not bool((direction * (s[1:] - s[:-1]) > 0).all()):
        raise ValueError(f"save_at must be strictly {'increasing' if direction > 0 else 'decreasing'} "
                         f"(the direction of integration from {t0} to {t1})")
    lo, hi = min(t0, t1), max(t0, t1)
    out = torch.nonzero((s < lo) | (s > hi)).flatten().tolist()
    if out:
        raise ValueError(f"save_at times outside [{lo}, {hi}] at index {out[:5]}: {[float(s[i]) for i in out[:5]]}")
    return s


def _interpolate(solver, save, direction, acc, idx, ta, t1a, ya, out, ys):
    """Dense output at the save times inside the accepted steps."""
    rows = torch.nonzero(acc).flatten()
    a, b = ta[rows], t1a[rows]
    inside = (direction * (save[:, None] - a[None]) > 0) & (direction * (save[:, None] - b[None]) <= 0)
    pairs = torch.nonzero(inside)
    if pairs.numel() == 0:
        return
    si, ri = pairs[:, 0], rows[pairs[:, 1]]
    hh = (t1a - ta)[ri]
    theta = ((save[si] - ta[ri]) / hh).clamp(0.0, 1.0)
    ks = tuple(kk[ri] for kk in out.ks)
    vals = solver.interpolate(ya[ri], out.y[ri], ks, hh, theta)
    ys[si, ri if idx is None else idx[ri]] = vals.to(ys.dtype)


# --- entry points ----------------------------------------------------------------------------------
def solve(eq, y0: torch.Tensor, t0=None, t1=None, solver=None, *, steps: int | None = None, schedule=None,
          controller=None, seed=None, save_at=None, progress: bool = False, final_noise: bool = True,
          check_finite: bool = True, noise: Noise | None = None, cuda_graph: bool = False) -> Solution:
    """Integrate ``eq`` from ``t0`` to ``t1`` starting at ``y0`` (shape (B, ...)).

    ``steps`` / ``schedule`` fix the grid (a schedule function of (process, steps) or an explicit
    1-D tensor of times). A step-size controller (``controller=PIController(...)``) makes the solve
    adaptive; otherwise an adaptive solver (``solver.adaptive``) is step-size controlled when
    neither ``steps`` nor ``schedule`` is given (the per-sample PI controller with the solver's
    tolerances, :meth:`~sdesolve.controllers.PIController.for_solver`) and runs on the fixed grid
    when one is. ``seed`` is an int or a (B,) tensor of per-sample seeds (see
    :mod:`sdesolve.noise`); ``noise`` overrides it with a ready Noise. ``save_at``: on a fixed
    grid, ``True`` saves every grid point; adaptive solves take a tensor of times.
    ``final_noise=False`` makes the last step add no noise. ``check_finite``: raise on NaN/Inf
    states (naming step, time and samples). ``cuda_graph=True`` (fixed grids, CUDA states,
    counter-based noise) captures the whole loop in a CUDA graph once and replays it on later calls
    (see the module docstring).
    """
    if solver is None:
        raise ValueError("solve needs a solver object, e.g. sdesolve.Heun() or sdesolve.EulerMaruyama()")
    if not isinstance(y0, torch.Tensor) or y0.dim() < 1:
        raise ValueError("y0 must be a tensor of shape (B, ...)")
    solver.check(eq)
    B, device = y0.shape[0], y0.device
    if noise is None:
        check_seed(seed)
        noise = Noise.from_seed(seed, B, device)
    adaptive = controller.adaptive if controller is not None else (solver.adaptive and steps is None
                                                                    and schedule is None)
    if adaptive:
        check_interval(eq, t0, t1)
    plan = plan_times(eq.process, t0, t1, steps=steps, schedule=schedule, adaptive=adaptive)
    eq.reset_counts()
    if adaptive:
        if cuda_graph:
            raise ValueError(f"solve: cuda_graph=True captures a fixed-step loop, but this solve with "
                             f"{type(solver).__name__} is adaptive (its controller decides each step on the host); "
                             "give steps or a schedule, or leave cuda_graph off")
        controller = controller if controller is not None else PIController.for_solver(solver)
        run = ControlledRun(eq, solver, y0, plan, noise, controller, save_at=save_at, check_finite=check_finite)
        return _loop(eq, solver, run, progress).finish()
    options = dict(final_noise=final_noise, check_finite=check_finite, save=save_at is not None)
    if cuda_graph:
        return _graphed(eq, solver, y0, plan, noise, options, progress)
    return _loop(eq, solver, GridRun(eq, solver, y0, plan, noise, **options), progress).finish()


def sample(process, score, solver, *, shape=None, x_T=None, steps: int | None = None, schedule=None,
           seed=None, device=None, dtype=None, progress: bool = False, final_noise: bool = True,
           save_at=None, sample_offset: int = 0, cuda_graph: bool = False, **solve_kwargs) -> Solution:
    """Draw samples: x_T from the prior (or given), then the reverse SDE (stochastic solvers)
    or the probability-flow ODE (deterministic ones) from T down to t_min.

    ``shape`` is (B, ...); x_T's noise comes from the same per-sample streams as the solver's
    (step counter ``PRIOR_STEP``), so sample b is the same in any batch. ``steps`` with no
    ``schedule`` uses the solver's ``default_schedule``. ``sample_offset`` shifts the global sample
    indices of an int seed (for sharding a run over processes). ``cuda_graph=True`` replays the
    fixed-step loop from a CUDA graph captured on the first call with the same process, score,
    solver, grid and shape (see :func:`solve`); reuse the same ``score`` object across calls for
    the capture to be reused.
    """
    check_sample_args(process, shape, x_T, dtype, sample_offset, schedule)
    check_seed(seed)
    eq = process.reverse(score) if solver.stochastic else process.probability_flow(score)
    if x_T is None:
        if shape is None:
            raise ValueError("sample needs shape=(B, ...) or x_T")
        shape = tuple(shape)
        noise = Noise.from_seed(seed, shape[0], device, offset=sample_offset)
        z = noise.at(PRIOR_STEP).normal(torch.empty(shape, device=device, dtype=dtype or torch.float32))
        x_T = process.prior_from_normal(z)
    else:
        noise = Noise.from_seed(seed, x_T.shape[0], x_T.device, offset=sample_offset)
        if dtype is not None:
            x_T = x_T.to(dtype)
    if schedule is None and not solver.adaptive:
        schedule = solver.default_schedule
    if callable(schedule) and not isinstance(schedule, torch.Tensor) and steps is None and not solver.adaptive:
        raise ValueError(f"sample with {type(solver).__name__} needs steps (or an explicit schedule tensor)")
    t0, t1 = (None, None) if isinstance(schedule, torch.Tensor) else (process.T, process.t_min)
    return solve(eq, x_T, t0, t1, solver, steps=steps, schedule=schedule, noise=noise, progress=progress,
                 final_noise=final_noise, save_at=save_at, cuda_graph=cuda_graph, **solve_kwargs)


# --- CUDA graphs -----------------------------------------------------------------------------------
@dataclass
class _GraphedLoop:
    """A captured loop: the graph, its static inputs (y0, noise streams) and outputs, the device
    grid it reads, the evaluation counts of one run, and the objects its key names by id, kept
    alive with it."""

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


def _graphed(eq, solver, y0, plan, noise, options, progress):
    """The fixed-grid loop through a cached CUDA graph."""
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
    what, refs = eq.graph_key()
    key = what + (id(solver), repr(solver), tuple(y0.shape), y0.dtype, y0.device, tuple(plan.grid.tolist()),
                  tuple(sorted(options.items())), torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
                  kernel_mode())
    refs = refs + (solver,)
    with torch.cuda.device(y0.device):
        entry = _GRAPHS.get(key)
        if entry is None:
            return _capture(key, refs, eq, solver, y0, plan, noise, options, progress, name)
        _GRAPHS.move_to_end(key)
        entry.y0.copy_(y0)
        entry.stream.copy_(noise.stream)
        entry.graph.replay()
        y, ys, first_bad = (o.clone() if o is not None else None for o in entry.outputs)
        eq.nfe, eq.sample_nfe = entry.nfe, entry.sample_nfe
        return _graph_solution(eq, y, ys, first_bad, entry.grid, plan.steps, options)


def _graph_solution(eq, y, ys, first_bad, grid, n, options):
    if options["check_finite"]:
        _raise_nonfinite(first_bad, grid, eq)
    stats = Stats(nfe=eq.nfe, sample_nfe=eq.sample_nfe, steps=n, accepted=n, rejected=0)
    return Solution(y=y, ts=grid if ys is not None else None, ys=ys, stats=stats)


def _capture(key, refs, eq, solver, y0, plan, noise, options, progress, name):
    """Warm-up run (the result of this call) on a side stream, then the capture."""
    y0_s = y0.detach().clone()
    stream_s = noise.stream.to(device=y0.device, dtype=torch.int64).clone()
    current = torch.cuda.current_stream()
    side = torch.cuda.Stream()
    side.wait_stream(current)
    with torch.cuda.stream(side):
        eq.reset_counts()
        warm = GridRun(eq, solver, y0_s, plan, Noise(stream_s), **options)
        out = _loop(eq, solver, warm).outputs()
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
    state = solver.init(eq, plan.grid.to(y0.device)[0].expand(y0.shape[0]), y0_s)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            run = _loop(eq, solver, GridRun(eq, solver, y0_s, plan, Noise(stream_s), state=state, **options))
            outputs = run.outputs()
    except RuntimeError as exc:
        raise RuntimeError(
            f"solve: cuda_graph=True could not capture the {name} sampling loop in a CUDA graph ({exc}). Something in "
            "a step synchronises with the host (.item(), bool(tensor), nonzero) or copies host tensors to the "
            "device at each call (keep them on the device); run with cuda_graph=False") from exc
    eq.nfe, eq.sample_nfe = nfe, sample_nfe
    _GRAPHS[key] = _GraphedLoop(graph, y0_s, stream_s, outputs, run.grid, nfe, sample_nfe, refs + (eq, state))
    while len(_GRAPHS) > GRAPH_CACHE_SIZE:
        _GRAPHS.popitem(last=False)
    return _graph_solution(eq, *out, warm.grid, plan.steps, options)

