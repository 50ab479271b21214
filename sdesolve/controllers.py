"""Step-size control with one step size per sample.

:class:`PIController` integrates a batch in which every sample advances with its own time t_b
and step size h_b. Each iteration gathers the samples still running (the active set), calls
``solver.step`` on them alone with (B_active,) times and their own noise, and scatters the
result back: a finished sample costs nothing more, and a sample's trajectory depends only on
itself (its state, its error norm, its noise stream and counter), never on the batch it is in.

The step-size law (PI control: Gustafsson 1991; Soderlind 2002; Hairer & Wanner, "Solving ODEs
II", IV.2), with err_n the error norm of the step (accepted when err_n <= 1) and k the solver's
``error_order`` (the error estimate is O(h^k)):

    accepted:  h_{n+1} = h_n * clip(safety * err_n^{-(pcoeff + icoeff)/k} * err_{n-1}^{pcoeff/k},
                                    min_factor, max_factor)
    rejected:  h_n    <- h_n * clip(safety * err_n^{-(pcoeff + icoeff)/k}, min_factor, 1)

with err_{n-1} the error of the sample's previous accepted step (1 before the first, and at
least 1e-4, as in Hairer's codes). pcoeff = 0, icoeff = 1 is the classical I controller
h * safety * err^{-1/k}; the defaults pcoeff = 0.4, icoeff = 0.3 are Gustafsson's PI values
(alpha = 0.7/k, beta = 0.4/k). After a rejection the next accepted step does not grow
(``relax_after_reject``; Hairer's codes do the same). A step whose error is NaN/Inf is rejected
and retried at max(min_factor, 0.1) times the size. The step is clipped so that a sample lands
exactly on the end time (a step that would stop within 1% of the end is stretched to it, as in
Hairer's DOPRI5), and never exceeds the distance to the end.

Initial step (per sample; Hairer, Norsett & Wanner, "Solving ODEs I", II.4, "Starting step
size"), with ||.|| the RMS norm scaled by atol + rtol |y0| and p the solver's order:
    d0 = ||y0||, d1 = ||f(t0, y0)||,  h0 = 0.01 d0 / d1  (1e-6 if d0 or d1 < 1e-5)
    d2 = ||f(t0 + h0, y0 + h0 f0) - f0|| / h0
    h1 = (0.01 / max(d1, d2))^{1/(p+1)}  (max(1e-6, 1e-3 h0) if max(d1, d2) <= 1e-15)
    h  = min(100 h0, h1, |t1 - t0|)
(one extra evaluation; f0 is shared with the first step of FSAL solvers). ``dt0`` skips it.

Stochastic solvers: every random number of an attempt is drawn from the sample's own stream at
the sample's attempt counter (accepted + rejected steps so far, offset by the Noise's own step),
so what a sample sees depends on nothing but the sample: its result is the same in any batch.
The Brownian increment of an attempt (draw 0) is bridged (``bridge=True``, the default): a
rejected increment is kept and the retry takes its Brownian-bridge refinement over the shorter
step (Rackauckas & Nie 2017, "Adaptive methods for stochastic differential equations via
natural embeddings and rejection sampling with memory", RSwM1), so the accepted increments are
exactly those of one Brownian path. ``bridge=False`` draws a fresh increment per attempt, as
Jolicoeur-Martineau et al. 2021 do; rejection then favours the increments the error test likes
and biases the result in low dimension (see :class:`_BridgedIncrements`).

``save_at``: times (1-D, in the direction of integration, within [t0, t1]) at which the
solution is returned. Solvers with dense output (``solver.interpolate``) are interpolated there
to their dense order, without touching the steps; other solvers (SDE solvers) stop exactly at
every save time.

What the controller asks of a solver: ``step`` returning ``Step.error``, the per-sample error
norm (B,); ``error_order`` (k above; default order + 1); optionally ``start(eq, t0, y0, t_end)
-> (state, f(t0, y0) or None)`` (else ``init`` is used and the drift evaluated when the initial
step needs it), ``interpolate`` with a ``dense`` output, and ``controller_options`` (the
step-size law the method's authors use, applied by :meth:`PIController.for_solver`). The solver
state must be None, a tensor with a leading batch dimension or a tuple of those, of a fixed
structure: the controller gathers it for the active samples and keeps the old rows of rejected
ones.

Failures raise, naming the samples and their times: :class:`MaxStepsError` when a sample needs
more than ``max_steps`` attempts, :class:`StepSizeError` when a step size underflows (|h| below
16 machine epsilons of max(|t|, |t1 - t0|)), :class:`NonFiniteError` when the drift is NaN/Inf at the
start, or when a sample's attempts keep producing NaN/Inf (a non-finite state or error estimate
is a rejection) until its step size can shrink no further.
"""
from __future__ import annotations

import math
import time

import torch

from .errors import MaxStepsError, NonFiniteError, StepSizeError, _fmt

__all__ = ["PIController"]

_EPS64 = torch.finfo(torch.float64).eps


# --- solver states: None, a tensor with a leading batch dimension, or a tuple/list of those -------
def _take(state, idx):
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


def _rms(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (x / scale).reshape(x.shape[0], -1).to(torch.float64).pow(2).mean(1).sqrt()


class PIController:
    """Per-sample PI step-size control (see the module docstring for the law).

    rtol, atol: tolerances, when the solver's error norm needs them from the controller (the
    solvers here carry their own; :meth:`for_solver` copies them); they also scale the initial
    step-size selection. max_steps: attempts (accepted + rejected) allowed per sample.
    dt0: the first step size (magnitude); None selects it per sample. bridge: keep rejected
    Brownian increments and refine them by the Brownian bridge (stochastic solvers).
    """

    def __init__(self, rtol: float | None = None, atol: float | None = None, safety: float = 0.9,
                 min_factor: float = 0.2, max_factor: float = 10.0, pcoeff: float = 0.4, icoeff: float = 0.3,
                 max_steps: int = 10_000, dt0: float | None = None, relax_after_reject: bool = True,
                 bridge: bool = True):
        if not 0 < safety <= 1:
            raise ValueError(f"safety must lie in (0, 1], got {safety}")
        if not 0 <= min_factor <= 1 <= max_factor:
            raise ValueError(f"need 0 <= min_factor <= 1 <= max_factor, got {min_factor}, {max_factor}")
        if icoeff <= 0 or pcoeff < 0:
            raise ValueError(f"need icoeff > 0 and pcoeff >= 0, got icoeff={icoeff}, pcoeff={pcoeff}")
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps must be an integer >= 1, got {max_steps!r}")
        if dt0 is not None and not (dt0 > 0 and math.isfinite(dt0)):
            raise ValueError(f"dt0 must be a positive step size, got {dt0}")
        self.rtol = None if rtol is None else float(rtol)
        self.atol = None if atol is None else float(atol)
        self.safety, self.min_factor, self.max_factor = float(safety), float(min_factor), float(max_factor)
        self.pcoeff, self.icoeff = float(pcoeff), float(icoeff)
        self.max_steps, self.dt0, self.relax_after_reject = max_steps, dt0, bool(relax_after_reject)
        self.bridge = bool(bridge)

    @classmethod
    def for_solver(cls, solver, **overrides) -> "PIController":
        """A controller with the solver's tolerances and the step-size law its authors use
        (``solver.controller_options``, e.g. AdaptiveSDE's), updated with ``overrides``."""
        kw = dict(rtol=getattr(solver, "rtol", None), atol=getattr(solver, "atol", None))
        kw.update(getattr(solver, "controller_options", {}) or {})
        kw.update(overrides)
        return cls(**kw)

    def __repr__(self):
        return "PIController(" + ", ".join(f"{k}={v!r}" for k, v in vars(self).items()) + ")"

    # ------------------------------------------------------------------------------------------
    def initial_step(self, eq, t0: torch.Tensor, y0: torch.Tensor, f0: torch.Tensor, span: torch.Tensor,
                     order: float) -> torch.Tensor:
        """Per-sample |h| by Hairer, Norsett & Wanner's starting-step algorithm (module docstring)."""
        rtol = 1e-3 if self.rtol is None else self.rtol
        atol = 1e-6 if self.atol is None else self.atol
        scale = atol + rtol * y0.abs()
        d0, d1 = _rms(y0, scale), _rms(f0, scale)
        small = (d0 < 1e-5) | (d1 < 1e-5)
        h0 = torch.where(small, torch.full_like(d0, 1e-6), 0.01 * d0 / torch.where(small, torch.ones_like(d1), d1))
        h0 = torch.minimum(h0, span.abs())
        direction = torch.sign(span)
        hs = h0 * direction
        f1 = eq.drift(t0 + hs, y0 + _col(hs, y0) * f0)
        d2 = _rms(f1 - f0, scale) / h0
        dm = torch.maximum(d1, d2)
        h1 = torch.where(dm <= 1e-15, torch.clamp(h0 * 1e-3, min=1e-6),
                         (0.01 / torch.where(dm <= 1e-15, torch.ones_like(dm), dm)) ** (1.0 / (order + 1)))
        return torch.minimum(torch.minimum(100 * h0, h1), span.abs())

    def _factor(self, err, err_prev, k, accepted, after_reject):
        finite = torch.isfinite(err)
        e = torch.where(finite, err, torch.ones_like(err))
        b1 = (self.pcoeff + self.icoeff) / k
        b2 = self.pcoeff / k
        grow = self.safety * e.clamp_min(1e-300) ** (-b1) * torch.where(accepted, err_prev ** b2, torch.ones_like(e))
        upper = torch.where(accepted & ~after_reject, torch.full_like(e, self.max_factor), torch.ones_like(e))
        fac = torch.minimum(torch.clamp(grow, min=self.min_factor), upper)
        fac = torch.where(finite, fac, torch.full_like(fac, max(self.min_factor, 0.1)))
        return fac

    # ------------------------------------------------------------------------------------------
    def solve(self, eq, y0: torch.Tensor, t0, t1, solver, *, noise, save_at=None, progress: bool = False,
              check_finite: bool = True):
        from .solve import Solution, Stats

        t_start = time.perf_counter()
        B, device = y0.shape[0], y0.device
        process = getattr(eq, "process", None)
        if t0 is None or t1 is None:
            if process is None:
                raise ValueError("an adaptive solve needs t0 and t1")
            t0 = process.T if t0 is None else t0
            t1 = process.t_min if t1 is None else t1
        t0, t1 = float(t0), float(t1)
        if not (math.isfinite(t0) and math.isfinite(t1)):
            raise ValueError(f"t0 and t1 must be finite, got {t0}, {t1}")
        if noise is not None and len(noise) != B:
            raise ValueError(f"noise for {len(noise)} samples, the batch has {B}")
        direction = 1.0 if t1 >= t0 else -1.0
        dense = hasattr(solver, "interpolate") and getattr(solver, "dense", None) is not None
        save = self._save_times(save_at, t0, t1, direction, device)

        accepted = torch.zeros(B, dtype=torch.int64, device=device)
        rejected = torch.zeros(B, dtype=torch.int64, device=device)
        if t0 == t1:
            ys = None if save is None else y0.unsqueeze(0).expand(save.numel(), *y0.shape).clone()
            return Solution(y0, save, ys, Stats(nfe=0, sample_nfe=0, steps=0, accepted=accepted, rejected=rejected))

        # stops: where steps must land exactly; stop_save[j] = index into save_at or -1
        if save is not None and not dense:
            inner = save[direction * (save - t0) > 0]
            stops = inner if (inner.numel() and float(inner[-1]) == t1) else torch.cat(
                [inner, torch.tensor([t1], dtype=torch.float64, device=device)])
            first = save.numel() - inner.numel()
            stop_save = torch.tensor([first + j if j < inner.numel() else -1 for j in range(stops.numel())],
                                     device=device)
        else:
            stops = torch.tensor([t1], dtype=torch.float64, device=device)
            stop_save = torch.tensor([-1], device=device)
        n_stops = stops.numel()

        t = torch.full((B,), t0, dtype=torch.float64, device=device)
        t_end = torch.full((B,), t1, dtype=torch.float64, device=device)
        if hasattr(solver, "start"):
            state, f0 = solver.start(eq, t, y0, t_end)
        else:
            state, f0 = solver.init(eq, t, y0, t_end), None
        if self.dt0 is None:
            if f0 is None:
                f0 = eq.drift(t, y0)
            if check_finite:
                bad = ~torch.isfinite(f0.reshape(B, -1)).all(1)
                if bool(bad.any()):
                    samples = torch.nonzero(bad).flatten().tolist()
                    raise NonFiniteError(f"non-finite drift at the start (t = {t0:.6g}) in samples {_fmt(samples)}",
                                         step=0, t=t0, samples=samples)
            habs = self.initial_step(eq, t, y0, f0, t_end - t, solver.order)
            if check_finite and not bool(torch.isfinite(habs).all()):  # the drift was NaN/Inf at t0 + h0
                samples = torch.nonzero(~torch.isfinite(habs)).flatten().tolist()
                raise NonFiniteError(f"{type(solver).__name__}: non-finite drift near the start (t = {t0:.6g}) in "
                                     f"samples {_fmt(samples)}: the initial step size is not finite",
                                     step=0, t=t0, samples=samples)
        else:
            habs = torch.full((B,), min(self.dt0, abs(t1 - t0)), dtype=torch.float64, device=device)
        h = direction * habs
        del f0

        y = y0
        ys = None
        if save is not None:
            ys = torch.zeros((save.numel(),) + tuple(y0.shape), dtype=y0.dtype, device=device)
            at_start = save == t0
            if bool(at_start.any()):
                ys[at_start] = y0.unsqueeze(0)
        err_prev = torch.ones(B, dtype=torch.float64, device=device)
        after_reject = torch.zeros(B, dtype=torch.bool, device=device)
        last_nonfinite = torch.zeros(B, dtype=torch.bool, device=device)
        stop_idx = torch.zeros(B, dtype=torch.int64, device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        stochastic = noise is not None and solver.stochastic
        if stochastic:
            base_step = getattr(noise, "step", 0)
            base_step = (base_step.to(device) if isinstance(base_step, torch.Tensor)
                         else torch.full((B,), int(base_step), dtype=torch.int64, device=device))
            path = _BridgedIncrements(B, direction, abs(t1 - t0)) if self.bridge else None
        k = float(getattr(solver, "error_order", solver.order + 1))
        floor = 16 * _EPS64 * abs(t1 - t0)
        iterations = 0
        bar = _bar(progress, B, type(solver).__name__)

        while True:
            active = ~done
            n_act = int(active.sum())
            if n_act == 0:
                break
            idx = None if n_act == B else torch.nonzero(active).flatten()
            take = (lambda x: x) if idx is None else (lambda x: x[idx])
            attempts = take(accepted) + take(rejected)
            over = attempts >= self.max_steps
            if bool(over.any()):
                rows = torch.nonzero(over).flatten()
                samples = (rows if idx is None else idx[rows]).tolist()
                ts = take(t)[rows].tolist()
                rtol, atol = getattr(solver, "rtol", self.rtol), getattr(solver, "atol", self.atol)
                hint = ""
                if y0.dtype != torch.float64 and min((v for v in (rtol, atol) if v is not None), default=1.0) < 1e-6:
                    hint = f"; a {y0.dtype} state cannot resolve tolerances much below 1e-6"
                raise MaxStepsError(
                    f"{type(solver).__name__}: samples {_fmt(samples)} did not reach t1 = {t1:.6g} within "
                    f"max_steps = {self.max_steps} steps; they stopped at t = {_fmt(['%.6g' % x for x in ts])} "
                    f"(tolerances rtol={rtol}, atol={atol} cannot be met there{hint}; loosen them or raise "
                    "max_steps)", step=iterations, t=ts[0], samples=samples)

            ta, ha, ya = take(t), take(h), take(y)
            target = stops[take(stop_idx)]
            last = direction * (ta + 1.01 * ha - target) >= 0
            t1a = torch.where(last, target, ta + ha)
            sa = _take(state, idx)
            nz = None
            if stochastic:
                sub = (noise if idx is None else noise[idx]).at(take(base_step) + attempts)
                if path is not None:
                    t1a, last, nz = path.propose(idx, ta, t1a, last, target, ya, sub)
                else:
                    nz = sub
            out = solver.step(eq, ta, t1a, ya, sa, nz)
            if out.error is None:
                raise TypeError(f"{type(solver).__name__} returns no error estimate: it cannot be step-size controlled")
            err = out.error.detach().to(torch.float64)  # step sizes are not differentiated through
            finite = torch.isfinite(err)
            if check_finite:
                finite = finite & torch.isfinite(out.y.reshape(n_act, -1)).all(1)
            acc = finite & (err <= 1.0)
            iterations += 1
            if stochastic and path is not None:
                path.reject(idx, ~acc)

            # dense output for save times inside accepted steps
            if ys is not None and dense and bool(acc.any()):
                self._interpolate(solver, save, direction, acc, idx, ta, t1a, ya, out, ys)

            # state updates of accepted rows
            rows = torch.nonzero(acc).flatten()
            if rows.numel():
                dst = rows if idx is None else idx[rows]
                everything = idx is None and rows.numel() == B
                y = _put(y, idx, rows, out.y, everything)
                state = _put(state, idx, rows, out.state, everything)
                t = t.index_put((dst,), t1a[rows])
                landed = last[rows]
                if ys is not None and not dense and bool(landed.any()):
                    lr = rows[landed]
                    sv = stop_save[take(stop_idx)[lr]]
                    keep = sv >= 0
                    if bool(keep.any()):
                        ys[sv[keep], (lr if idx is None else idx[lr])[keep]] = out.y[lr[keep]].to(ys.dtype)
                stop_idx = stop_idx.index_put((dst,), stop_idx[dst] + landed.long())
                done = done | torch.zeros_like(done).index_put((dst,), stop_idx[dst] >= n_stops)

            # step sizes
            h_taken = t1a - ta
            fac = self._factor(err, take(err_prev), k, acc, take(after_reject))
            h_new = h_taken * fac
            if rows.numel():
                dst = rows if idx is None else idx[rows]
                err_prev = err_prev.index_put((dst,), err[rows].clamp_min(1e-4))
            after_reject_a = ~acc & self.relax_after_reject
            t_now = take(t)
            h_new = direction * torch.minimum(h_new.abs(), (t1 - t_now).abs())
            still = ~take(done)
            tiny = still & ((h_new.abs() <= torch.clamp(16 * _EPS64 * t_now.abs(), min=floor)) | ~torch.isfinite(h_new))
            if bool(tiny.any()):
                self._raise_tiny(solver, tiny, idx, t_now, ~finite & ~acc, take(last_nonfinite), iterations)
            if idx is None:
                h, after_reject, last_nonfinite = h_new, after_reject_a, ~finite
                accepted, rejected = accepted + acc.long(), rejected + (~acc).long()
            else:
                h = h.index_put((idx,), h_new)
                after_reject = after_reject.index_put((idx,), after_reject_a)
                last_nonfinite = last_nonfinite.index_put((idx,), ~finite)
                accepted = accepted.index_put((idx,), acc.long(), accumulate=True)
                rejected = rejected.index_put((idx,), (~acc).long(), accumulate=True)
            if bar is not None:
                bar.n = int(done.sum())
                bar.refresh()
        if bar is not None:
            bar.close()

        stats = Stats(nfe=eq.nfe, sample_nfe=eq.sample_nfe, steps=iterations, accepted=accepted,
                      rejected=rejected, wall_time=time.perf_counter() - t_start)
        return Solution(y=y, ts=save, ys=ys, stats=stats)

    # ------------------------------------------------------------------------------------------
    @staticmethod
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

    @staticmethod
    def _interpolate(solver, save, direction, acc, idx, ta, t1a, ya, out, ys):
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

    @staticmethod
    def _raise_tiny(solver, tiny, idx, t_now, nonfinite_now, nonfinite_before, iterations):
        rows = torch.nonzero(tiny).flatten()
        samples = (rows if idx is None else idx[rows]).tolist()
        ts = t_now[rows].tolist()
        nf = (nonfinite_now | nonfinite_before)[rows]
        name = type(solver).__name__
        if bool(nf.all()):
            raise NonFiniteError(
                f"{name}: non-finite values (NaN or Inf) at step {iterations} in samples {_fmt(samples)} at "
                f"t = {_fmt(['%.6g' % x for x in ts])}: every retry with a smaller step failed as well (the drift, "
                "diffusion or score returns NaN/Inf there)", step=iterations, t=ts[0], samples=samples)
        raise StepSizeError(
            f"{name}: the step size underflowed at step {iterations} for samples {_fmt(samples)} at "
            f"t = {_fmt(['%.6g' % x for x in ts])}: the tolerance cannot be met there (a singularity, a "
            "non-smooth drift, or a tolerance below the precision of the state's dtype)",
            step=iterations, t=ts[0], samples=samples)


class _StepNoise:
    """The noise a stochastic solver sees for one attempt: draw 0 is the (bridged) Brownian
    increment, as z = dW / sqrt(|h|); other draws come from the sample's stream at the attempt."""

    def __init__(self, z, noise):
        self.z, self.noise = z, noise

    def __len__(self):
        return self.z.shape[0]

    def normal(self, like, draw: int = 0):
        if draw == 0:
            if like.shape != self.z.shape:
                raise ValueError(f"noise of shape {tuple(self.z.shape)} asked for shape {tuple(like.shape)}")
            return self.z.to(like.dtype)
        return self.noise.normal(like, draw)

    def increments(self, like, dt, draw: int = 0):
        raise TypeError("under step-size control the Brownian path is bridged for dW alone; a solver that needs "
                        "I10 (e.g. SRA1) runs on a fixed grid")


class _BridgedIncrements:
    """Per-sample Brownian increments that survive rejections (Rackauckas & Nie 2017, RSwM1).

    Each sample keeps a stack of Brownian increments over intervals it has not yet stepped over,
    earliest on top. An attempt over [t, t + h]: with an empty stack, dW = sqrt(|h|) z is fresh;
    otherwise the top interval (h_s, dW_s) is used whole if h >= h_s (the step shrinks to h_s), or
    split by the Brownian bridge when h < h_s:
        dW = (h / h_s) dW_s + sqrt(|h| (1 - h / h_s)) xi,   remainder (h_s - h, dW_s - dW) stays on top.
    A rejected attempt pushes its (h, dW) back on the stack. The accepted increments are then
    exactly those of one Brownian path, whatever was rejected (drawing fresh noise after a
    rejection instead keeps the increments the error test favours, and biases the samples).
    z and xi are draws 0 and ``BRIDGE_DRAW`` of the sample's stream at its attempt counter.
    """

    BRIDGE_DRAW = 0x7F000000

    def __init__(self, batch, direction, span):
        self.B, self.direction = batch, direction
        self.tol = 64 * _EPS64 * max(span, 1.0)
        self.depth = None
        self.hs = self.dWs = None
        self._h = self._dW = None

    def _ensure(self, like, need):
        if self.hs is None:
            self.depth = torch.zeros(self.B, dtype=torch.int64, device=like.device)
            self.hs = torch.zeros(self.B, 0, dtype=torch.float64, device=like.device)
            self.dWs = torch.zeros((self.B, 0) + tuple(like.shape[1:]), dtype=like.dtype, device=like.device)
        grow = need - self.hs.shape[1]
        if grow > 0:
            self.hs = torch.cat([self.hs, self.hs.new_zeros(self.B, grow)], 1)
            self.dWs = torch.cat([self.dWs, self.dWs.new_zeros((self.B, grow) + tuple(self.dWs.shape[2:]))], 1)

    def propose(self, idx, ta, t1a, last, target, like, noise):
        """(t1, last, noise) for the attempts of the active rows (``idx``; None: all)."""
        n = ta.shape[0]
        h = t1a - ta
        dW = torch.empty_like(like)
        depth = None if self.hs is None else (self.depth if idx is None else self.depth[idx])
        has = torch.zeros(n, dtype=torch.bool, device=ta.device) if depth is None else depth > 0
        fresh = ~has
        if bool(fresh.any()):
            rows = torch.nonzero(fresh).flatten()
            z = noise[rows].normal(like[rows], 0) if rows.numel() < n else noise.normal(like, 0)
            dW[rows] = _col(h[rows].abs().sqrt(), z) * z
        if bool(has.any()):
            rows = torch.nonzero(has).flatten()
            g = rows if idx is None else idx[rows]
            top = depth[rows] - 1
            hs, dWs = self.hs[g, top], self.dWs[g, top]
            # a remainder within rounding of zero is no remainder: use the interval whole
            split = h[rows].abs() < hs.abs() - self.tol
            # whole top interval: the step shrinks to it (and lands on the target if it ends there)
            whole = ~split
            if bool(whole.any()):
                wr = rows[whole]
                h[wr] = hs[whole]
                dW[wr] = dWs[whole]
                self.depth[g[whole]] -= 1
                ends = (ta[wr] + hs[whole] - target[wr]).abs() <= self.tol
                last[wr] = ends
            if bool(split.any()):
                sr, gs, ts = rows[split], g[split], top[split]
                q = h[sr] / hs[split]
                xi = noise[sr].normal(like[sr], self.BRIDGE_DRAW)
                part = _col(q, xi) * dWs[split] + _col((h[sr].abs() * (1 - q)).sqrt(), xi) * xi
                dW[sr] = part
                self.hs[gs, ts] = hs[split] - h[sr]
                self.dWs[gs, ts] = dWs[split] - part
                last[sr] = False
        t1 = torch.where(last, target, ta + h)
        self._h, self._dW = t1 - ta, dW
        z = dW / _col(self._h.abs().sqrt(), dW)
        return t1, last, _StepNoise(z, noise)

    def reject(self, idx, rejected):
        """Push the increments of the rejected attempts back on their samples' stacks."""
        if not bool(rejected.any()):
            return
        rows = torch.nonzero(rejected).flatten()
        self._ensure(self._dW, 0)
        g = rows if idx is None else idx[rows]
        self._ensure(self._dW, int(self.depth[g].max()) + 1)
        d = self.depth[g]
        self.hs[g, d] = self._h[rows]
        self.dWs[g, d] = self._dW[rows].to(self.dWs.dtype)
        self.depth[g] += 1


def _col(c, x):
    c = c.to(device=x.device, dtype=x.dtype)
    return c.reshape(c.shape + (1,) * (x.dim() - 1))


def _bar(enabled, total, desc):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, leave=False)
