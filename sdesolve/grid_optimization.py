"""Time grids optimized for one model, one solver and one budget of steps.

``optimize(process, score, solver, steps, shape=..., method=DynamicProgramming() | Learned())``
returns an :class:`OptimizedGrid`: ``.grid`` (float64 times, ``process.T`` first, pass it as
``schedule=opt.grid``) and ``.record`` (how it was made). Both methods measure a solver against
a *teacher*: an accurate solve of the probability-flow ODE (:class:`Teacher`, by default
DPM-Solver++(3M) on 256 log-SNR-uniform steps) from the same x_T, on a calibration batch of
``n`` samples whose x_T are the prior draws of ``sample(..., seed=seed)`` for sample indices
0..n-1 (keep ``seed`` apart from the seeds the grid is evaluated on).

Dynamic programming (:class:`DynamicProgramming`; GITS, Chen et al. 2024, "On the trajectory
regularity of ODE-based diffusion sampling", ICML). Candidate times tau_0 = T > ... > tau_M =
t_min, uniform in the half log-SNR lambda (every ``refine``-th point of the teacher's grid, so
the teacher's states X_j at every candidate come with its solve). The cost of one solver step
from tau_i to tau_j is the mean squared distance between the step started at the teacher's
state X_i and the teacher's X_j,

    C[i, j] = E || step(X_i; tau_i -> tau_j) - X_j ||^2 / dim,

and the grid is the path 0 = i_0 < i_1 < ... < i_N = M minimising sum_k C[i_{k-1}, i_k]
(:func:`cheapest_path`, O(N M^2)). Every step of a row i is one batched solver call with
per-sample end times (the solvers take (B,) times); the model is evaluated once on X_i and the
result reused for every target (:class:`_Memo`).

History (multistep solvers: one model evaluation per step and order > 1, e.g. DPM-Solver++(2M),
UniPC, iPNDM). Their step from tau_i uses the model outputs at the previous grid points, which
the local cost cannot know. The cost model gives each step a teacher history: before the step
tau_i -> tau_j the solver takes p = min(ceil(order) - 1, i) steps through the teacher points
k_m = i - m d (m = p, ..., 1) with d = min(j - i, floor(i / p)), each started from the teacher's
state there, so the history it carries is the model at the teacher's states at the previous
points of a locally uniform grid (same spacing as the step itself, in candidate index). The first
step (i = 0) has no history (the solver's own warm-up), and a step to tau_M is the last of its
grid (the solver's lower-order final step applies). Then, for every solver, a greedy refinement
with the real solver corrects what the local model misses: each interior point in turn moves to
a neighbouring candidate when that lowers the end-to-end loss (the distance to the teacher's
end state, below), for ``sweeps`` sweeps or until nothing moves. It starts from the dynamic
program's path or, when its end-to-end loss is lower, from the best hand-designed grid (log-SNR,
Karras rho = 7, uniform, quadratic, time-uniform rho = 2, the solver's default) moved onto the
nearest candidates.

Held-out selection (``holdout``, default 0: off). The last ``round(holdout * n)`` calibration
samples are kept out of the search: the cost matrix, the refinement and the gradient steps see
only the others (the fit samples). The held-out samples choose: the refinement's accepted paths
and the learned method's iterates are scored on them and the best one is kept (early stopping),
and the returned grid is the one with the lowest held-out loss among the search's result and the
hand-designed grids (``record["fallback"]`` names a hand grid that won), so it is never worse than
the best hand grid on samples the search did not see. With ``holdout=0`` the same rule applies
on the whole calibration batch.

Losses. :class:`MeanSquared` (default) is the per-sample distance to the teacher from the same
x_T, as in GITS and LD3. :class:`Energy` is the energy distance between the solver's and the
teacher's end states over the batch (for a distributional metric such as the energy distance on
a mixture). :class:`Frechet` is the Fréchet distance between Gaussian fits of the
solver's and the teacher's end states over the batch, in the representation (``represent``):
for a distributional metric such as FD in a feature network it measures what the metric sees
and not which sample each x_T lands on. The dynamic program's step costs stay per-sample (in the
representation); the refinement and the learned method use the chosen loss end to end.

Learned (:class:`Learned`; LD3, Tong et al., ICLR 2025, "Learning to discretize denoising
diffusion ODEs"). The grid is monotone by construction: lambda_k = lambda(T) + (lambda(t_min)
- lambda(T)) cumsum(softmax(w))_k, t_k = t(lambda_k), with the end points exact; the loss is
the end-to-end distance

    L(w) = E || sample(x_T; grid(w)) - teacher(x_T) ||^2 / dim,

minimised by Adam through the differentiable sampler (sdesolve's fixed-grid loop keeps the grid
in the autograd graph). w starts from the best of the hand-designed grids (log-SNR, Karras rho = 7,
uniform, quadratic, time-uniform rho = 2 and the solver's default); the best iterate seen is returned. Gradients reach only w
(``torch.autograd.grad``): a model's parameters are never touched.

Caching: results are kept in memory by (model identity, process, solver, steps, method, teacher,
n, seed, shape, dtype) and, with ``cache=DIR``, on disk as plain data: ``<key>.pt`` (the grid,
a tensor, loaded with ``weights_only=True``) and ``<key>.json`` (the record), written
atomically. The model identity is ``model_id`` when given, else a digest of the parameters and
buffers of the score's model (an ``nn.Module``), else (a plain function) the object's id, which
caches in memory only.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .noise import PRIOR_STEP, Noise, streams
from .scores import Score

__all__ = ["optimize", "OptimizedGrid", "Teacher", "DynamicProgramming", "Learned", "MeanSquared", "Frechet", "Energy",
           "cheapest_path",
           "save_grid", "load_grid", "model_digest", "CALIBRATION_SEED", "clear_cache"]

#: the default calibration seed (x_T of sample b is the prior draw of stream (seed, b)); evaluate
#: optimized grids on other seeds
CALIBRATION_SEED = 7919


# --- methods (objects; the CLI maps "dp" / "learned" to them) -----------------------------------
@dataclass(frozen=True)
class Teacher:
    """The reference solve: ``solver`` (default DPM-Solver++(3M)) on ``steps`` steps uniform in
    log-SNR from T to t_min."""

    solver: object = None
    steps: int = 256

    def make_solver(self):
        from .solvers.dpm import DPMSolverPP
        return self.solver if self.solver is not None else DPMSolverPP(order=3)

    def describe(self) -> str:
        return f"{self.make_solver()!r} on {self.steps} log-SNR-uniform steps"


@dataclass(frozen=True)
class DynamicProgramming:
    """GITS-style dynamic programming over ``candidates`` log-SNR-uniform candidate steps
    (``candidates`` divides the teacher's steps), followed by ``sweeps`` sweeps of greedy
    end-to-end refinement (0: none). See the module docstring for the cost model."""

    candidates: int = 64
    sweeps: int = 3
    name = "dp"


@dataclass(frozen=True)
class Learned:
    """LD3-style gradient descent on the grid's log-SNR increments: ``iterations`` Adam steps of
    learning rate ``lr`` on the full calibration batch (or random minibatches of ``batch``)."""

    iterations: int = 150
    lr: float = 0.05
    batch: int | None = None
    name = "learned"


@dataclass(frozen=True)
class MeanSquared:
    """Per-sample loss (GITS, LD3): L = mean_b || r(y_b) - r(y*_b) ||^2 / d, with y_b the solver's
    and y*_b the teacher's end state from the same x_T and r the representation (default: the
    sample itself). It bounds the squared 2-Wasserstein distance between the two output
    distributions from above (the shared x_T is one coupling), and it is what a grid must lower
    when each sample must follow its own teacher trajectory."""

    name = "mean squared distance to the teacher's end state per sample"


@dataclass(frozen=True)
class Frechet:
    """Distributional loss: the Fréchet distance between Gaussians fitted to {r(y_b)} and
    {r(y*_b)} over the batch,

        L = ||mu - mu*||^2 + tr(C + C* - 2 (C*^{1/2} C C*^{1/2})^{1/2}),

    the quantity an FD/FID metric in the representation r measures against the teacher's
    distribution (Heusel et al. 2017). It ignores per-sample deviations that leave the
    distribution unchanged, which the per-sample loss pays for; use it with ``represent`` the
    metric's feature network. On the digits model at 5 NFE, over 40 random iPNDM grids, the FD to
    held-out data ranks with this loss on the teacher's samples (Spearman 0.98) and only weakly
    with the per-sample pixel distance (0.52). It needs batches larger than the feature
    dimension for a full-rank covariance."""

    name = "Fréchet distance to the teacher's end states over the batch"


@dataclass(frozen=True)
class Energy:
    """Distributional loss: the energy distance (Székely & Rizzo 2013) between {r(y_b)} and the
    teacher's {r(y*_b)} over the batch,

        L = 2 mean_{b,c} |r_b - r*_c| - mean_{b != c} |r_b - r_c| - mean_{b != c} |r*_b - r*_c|,

    zero in expectation when the two laws are equal, and the quantity an energy-distance metric
    measures against the teacher's distribution. Unlike :class:`Frechet` it sees more than two
    moments (mode proportions and shapes of a mixture), and unlike :class:`MeanSquared` it does
    not ask each sample to land where its own teacher trajectory does. Cost O(n^2 d) per
    evaluation for a batch of n."""

    name = "energy distance to the teacher's end states over the batch"


@dataclass
class OptimizedGrid:
    """``grid``: float64 times, T first (``schedule=opt.grid``); ``record``: how it was made."""

    grid: torch.Tensor
    record: dict = field(default_factory=dict)

    def save(self, path) -> Path:
        return save_grid(path, self.grid, self.record)


# --- the dynamic program -------------------------------------------------------------------------
def cheapest_path(cost: torch.Tensor, steps: int) -> tuple[list[int], float]:
    """The path 0 = i_0 < i_1 < ... < i_steps = M (M = cost.shape[0] - 1) minimising
    sum_k cost[i_{k-1}, i_k], and its cost. ``cost[i, j]`` is used for i < j only."""
    cost = torch.as_tensor(cost, dtype=torch.float64)
    M = cost.shape[0] - 1
    if cost.dim() != 2 or cost.shape[1] != M + 1:
        raise ValueError(f"cheapest_path: the cost must be a square matrix, got shape {tuple(cost.shape)}")
    if not isinstance(steps, int) or not 1 <= steps <= M:
        raise ValueError(f"cheapest_path: steps must be an integer in [1, {M}], got {steps!r}")
    upper = torch.triu(torch.ones(M + 1, M + 1, dtype=torch.bool), diagonal=1)
    c = torch.where(upper, cost, torch.full_like(cost, math.inf))
    best = torch.full((M + 1,), math.inf, dtype=torch.float64)
    best[0] = 0.0
    back = []
    for _ in range(steps):
        total = best[:, None] + c           # total[i, j]: reach i, then step i -> j
        best, arg = total.min(0)
        back.append(arg)
    if not math.isfinite(float(best[M])):
        raise ValueError("cheapest_path: no finite path")
    path = [M]
    for arg in reversed(back):
        path.append(int(arg[path[-1]]))
    path.reverse()
    return path, float(best[M])


# --- helpers ---------------------------------------------------------------------------------------
class _Memo(Score):
    """The user's score, answering from a table for inputs it was told about (same tensor, same
    times): the model is evaluated once on the teacher's states and reused for every target."""

    def __init__(self, base: Score):
        self._base = base
        self.entries: list = []
        self.kind = base.kind

    def predict(self, x, t, process=None):
        for xe, te, out in self.entries:
            if x is xe and t.shape == te.shape and torch.equal(t, te):
                return out
        return self._base.predict(x, t, process)

    def __getattr__(self, name):  # what a Score holds (fn, process, ...) is the base's
        if name == "_base":
            raise AttributeError(name)
        return getattr(self._base, name)


def _as_score(score, process) -> Score:
    return score if isinstance(score, Score) else Score(score, process)


def _model_id(score: Score, model_id) -> tuple[str, bool]:
    """(identity, whether it is stable across processes)."""
    if model_id is not None:
        return str(model_id), True
    fn = getattr(score, "fn", score)
    module = fn if isinstance(fn, torch.nn.Module) else getattr(fn, "__self__", None)
    if isinstance(module, torch.nn.Module):
        return model_digest(module), True
    return f"object:{id(fn)}", False


def model_digest(module: torch.nn.Module) -> str:
    """A digest of a module's class, parameter and buffer names and values: its identity for
    the cache."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, v in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(v.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()[:32]


def _initial(process, n: int, shape, seed: int, device, dtype) -> torch.Tensor:
    """x_T of samples 0..n-1, as :func:`sdesolve.sample` draws them for an int seed."""
    noise = Noise(streams(seed, n, device=device))
    z = noise.at(PRIOR_STEP).normal(torch.empty((n, *shape), device=device, dtype=dtype))
    return process.prior_from_normal(z)


def _mse(a: torch.Tensor, b: torch.Tensor, represent=None) -> torch.Tensor:
    """Per-sample mean squared difference (B,), float64, of the samples or of their
    representations ``represent(x)`` ((B, d) each)."""
    if represent is not None:
        a, b = represent(a), represent(b)
    return (a - b).reshape(a.shape[0], -1).to(torch.float64).pow(2).mean(1)


def _run(process, score, solver, x_T, grid):
    from .integrate import sample
    with warnings.catch_warnings():  # validate() reads the end point of a grid that requires grad
        warnings.simplefilter("ignore", UserWarning)
        return sample(process, score, solver, x_T=x_T, schedule=grid, seed=0).y


def _multistep_history(solver) -> int:
    """History points a multistep solver uses: ceil(order) - 1 for one-evaluation solvers of
    order > 1 (their higher order can only come from past evaluations), else 0."""
    if solver.nfe_per_step != 1 or solver.stochastic:
        return 0
    return max(0, math.ceil(float(solver.order)) - 1)


# one step of a solver outside the loop; the only code here that knows the step interface
def _init_state(solver, eq, t0, y0, plan_grid):
    return solver.init(eq, t0, y0)


def _step(solver, eq, t0, t1, y0, state, noise, index, plan_grid):
    """Step ``index`` of a grid shaped like ``plan_grid``: its number of steps and whether it ends
    low are what the solver is told; not the grid, whose points are not this step's times."""
    from .timeplan import Position, ends_low
    steps = plan_grid.numel() - 1
    at = Position(index, steps, None, index == steps - 1 and ends_low(eq.process, float(plan_grid[-1])))
    return solver.step(eq, t0, t1, y0, state, noise, at)


def _plan_grid(process, steps: int) -> torch.Tensor:
    """A stand-in grid of ``steps`` steps ending at t_min: the solver plans its warm-up and final
    steps from its position (index, number of steps, whether the last step ends low) only."""
    return torch.linspace(process.T, process.t_min, steps + 1, dtype=torch.float64)


# --- the teacher -----------------------------------------------------------------------------------
def _teacher_states(process, score, teacher: Teacher, x_T, every: int = 1):
    """(teacher grid, states at every ``every``-th point of it (K+1, n, ...))."""
    from .schedules import logsnr
    from .integrate import sample
    grid = logsnr(process, teacher.steps)
    sol = sample(process, score, teacher.make_solver(), x_T=x_T, schedule=grid, seed=0, save_at=True)
    return grid[::every].clone(), sol.ys[::every].detach()


# --- dynamic programming -----------------------------------------------------------------------------
def _dp_costs(process, score, solver, steps, taus, X, S0, represent=None):
    """C (M+1, M+1) of the module docstring. X: teacher states (M+1, n, ...); S0: the model's
    native predictions at them (M+1, n, ...)."""
    M, n = taus.numel() - 1, X.shape[1]
    device = X.device
    memo = _Memo(score)
    eq = process.probability_flow(memo)
    hist = _multistep_history(solver)
    C = torch.full((M + 1, M + 1), math.inf, dtype=torch.float64)
    tt = taus.to(device)
    zero = Noise(streams(0, 1, device=device))
    for i in range(M):
        p = min(hist, i)
        for last in (False, True):
            js = torch.tensor([M] if last else list(range(i + 1, M)), dtype=torch.long)
            if js.numel() == 0:
                continue
            r = js.numel()
            J = js.repeat_interleave(n).to(device)                # target index per row
            B = r * n
            plan = _plan_grid(process, p + 1 + (0 if last else steps))
            y_i = X[i].repeat(r, *([1] * (X.dim() - 2)))
            t_i = tt[i].expand(B)
            state = None
            if p > 0:
                d = torch.clamp(js - i, max=i // p)
                ks = [i - m * d for m in range(p, 0, -1)] + [torch.full_like(js, i)]
                sample_idx = torch.arange(n).repeat(r)
                for m in range(p):
                    k0, k1 = ks[m].repeat_interleave(n), ks[m + 1].repeat_interleave(n)
                    xk = X[k0.to(device), sample_idx.to(device)]
                    tk0, tk1 = tt[k0.to(device)], tt[k1.to(device)]
                    if m == 0:
                        state = _init_state(solver, eq, tk0, xk, plan)
                    memo.entries = [(xk, tk0, S0[k0.to(device), sample_idx.to(device)])]
                    state = _step(solver, eq, tk0, tk1, xk, state, zero.at(m), m, plan).state
            else:
                state = _init_state(solver, eq, t_i, y_i, plan)
            memo.entries = [(y_i, t_i, S0[i].repeat(r, *([1] * (X.dim() - 2))))]
            y = _step(solver, eq, t_i, tt[J], y_i, state, zero.at(p), p, plan).y.detach()
            err = _mse(y, X[J, torch.arange(n, device=device).repeat(r)], represent).reshape(r, n).mean(1)
            C[i, js] = err.cpu()
            memo.entries = []
    return C


class _Objective:
    """The end-to-end loss (:class:`MeanSquared` or :class:`Frechet`) of a solver's end states
    against fixed teacher end states ``target`` (the same x_T, the same order), measured in the
    representation; differentiable in the solver's states."""

    def __init__(self, loss, target, represent=None):
        self.loss, self.represent = loss, represent
        with torch.no_grad():
            self.t_rep = self._rep(target).detach()
        if isinstance(loss, Energy):
            self.t_within = _mean_pair_distance(self.t_rep)
        if isinstance(loss, Frechet):
            r = self.t_rep
            if r.shape[0] < 2:
                raise ValueError("optimize: the Fréchet loss needs at least 2 samples in each part of the "
                                 "calibration batch")
            self.mu_t = r.mean(0)
            rc = r - self.mu_t
            self.cov_t = rc.T @ rc / (r.shape[0] - 1)
            w, v = torch.linalg.eigh(self.cov_t)
            self.sqrt_t = (v * w.clamp_min(0.0).sqrt()) @ v.T

    def _rep(self, y):
        r = self.represent(y) if self.represent is not None else y
        return r.reshape(r.shape[0], -1).to(torch.float64)

    def __call__(self, y) -> torch.Tensor:
        r = self._rep(y)
        if isinstance(self.loss, MeanSquared):
            return (r - self.t_rep).pow(2).mean(1).mean()
        if isinstance(self.loss, Energy):
            return 2.0 * _distances(r, self.t_rep).mean() - _mean_pair_distance(r) - self.t_within
        mu = r.mean(0)
        rc = r - mu
        cov = rc.T @ rc / (r.shape[0] - 1)
        m = self.sqrt_t @ cov @ self.sqrt_t
        ev = torch.linalg.eigvalsh(0.5 * (m + m.T))
        tr_sqrt = ev.clamp_min(1e-12).sqrt().sum()
        return (mu - self.mu_t).pow(2).sum() + cov.trace() + self.cov_t.trace() - 2.0 * tr_sqrt


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a_i - b_j| (n, m); the squared distances are clamped at 1e-30 before the square root, so
    that coinciding points give a zero gradient rather than 0 / 0."""
    return (a[:, None, :] - b[None, :, :]).pow(2).sum(-1).clamp_min(1e-30).sqrt()


def _mean_pair_distance(r: torch.Tensor) -> torch.Tensor:
    """mean_{b != c} |r_b - r_c|."""
    off = ~torch.eye(r.shape[0], dtype=torch.bool, device=r.device)
    return _distances(r, r)[off].mean()


def _end_loss(process, score, solver, x_T, grid, objective) -> float:
    return float(objective(_run(process, score, solver, x_T, grid).detach()))


def _refine(process, score, solver, x_fit, taus, path, fit, sweeps, x_held=None, held=None):
    """Greedy end-to-end refinement of a candidate path on the fit samples: each interior point
    in turn moves to a neighbouring candidate when that lowers the fit loss. With held-out
    samples, every path the refinement accepts is also scored on them and the one with the
    lowest held-out loss is kept (early stopping). Returns (path, fit loss, held-out loss or
    None, evaluations)."""
    path = list(path)
    loss = _end_loss(process, score, solver, x_fit, taus[path], fit)
    h = _end_loss(process, score, solver, x_held, taus[path], held) if held is not None else None
    best = (list(path), loss, h)
    evals = 1
    for _ in range(sweeps):
        moved = False
        for k in range(1, len(path) - 1):
            for delta in (-1, 1):
                c = path[k] + delta
                if not path[k - 1] < c < path[k + 1]:
                    continue
                trial = path[:k] + [c] + path[k + 1:]
                l = _end_loss(process, score, solver, x_fit, taus[trial], fit)
                evals += 1
                if l < loss:
                    path, loss, moved = trial, l, True
                    if held is not None:
                        h = _end_loss(process, score, solver, x_held, taus[path], held)
                        if h < best[2]:
                            best = (list(path), loss, h)
                    else:
                        best = (list(path), loss, None)
                    break
        if not moved:
            break
    return best[0], best[1], best[2], evals


# --- learned -------------------------------------------------------------------------------------
class _Adam:
    """Adam (Kingma & Ba 2015) on one tensor, betas (0.9, 0.999), eps 1e-8 (torch.optim's
    defaults; written out because importing torch.optim pulls in the compiler stack)."""

    def __init__(self, x, lr, b1=0.9, b2=0.999, eps=1e-8):
        self.x, self.lr, self.b1, self.b2, self.eps = x.clone(), lr, b1, b2, eps
        self.m, self.v, self.k = torch.zeros_like(x), torch.zeros_like(x), 0

    def step(self, grad):
        self.k += 1
        self.m = self.b1 * self.m + (1 - self.b1) * grad
        self.v = self.b2 * self.v + (1 - self.b2) * grad * grad
        mh, vh = self.m / (1 - self.b1 ** self.k), self.v / (1 - self.b2 ** self.k)
        self.x = self.x - self.lr * mh / (vh.sqrt() + self.eps)
        return self.x.clone()


def _grid_of(process, w, lam0, lam1, t0, t1):
    inc = torch.softmax(w, 0)
    lam = lam0 + (lam1 - lam0) * torch.cumsum(inc, 0)[:-1]
    inner = process.t_of_lam(lam)
    return torch.cat([torch.tensor([t0], dtype=torch.float64), inner, torch.tensor([t1], dtype=torch.float64)])


def _logits_of(process, grid):
    lam = process.lam(grid.to(torch.float64))
    inc = (lam[1:] - lam[:-1]).clamp_min(1e-12)
    return torch.log(inc / inc.sum())


def _hand_grids(process, solver, steps):
    from . import schedules
    grids = {"logsnr": schedules.logsnr(process, steps), "karras": schedules.karras(7.0)(process, steps),
             "uniform": schedules.uniform(process, steps), "quadratic": schedules.quadratic(process, steps)}
    if process.t_min >= 0:
        grids["time_uniform(rho=2.0)"] = schedules.time_uniform(2.0)(process, steps)
    default = solver.default_schedule
    if default is not None:
        g = default(process, steps)
        if float(g[-1]) == float(grids["logsnr"][-1]):  # a grid to sigma = 0 ends elsewhere: not comparable
            grids.setdefault(getattr(default, "__name__", "default"), g)
    return grids


def _snap(process, taus, grid) -> list:
    """The candidate path nearest to ``grid`` in log-SNR: strictly increasing indices, the ends
    at 0 and M (None when the grid has more steps than fit)."""
    lam_c, lam_g = process.lam(taus), process.lam(grid.to(torch.float64))
    M, N = taus.numel() - 1, grid.numel() - 1
    path = [0]
    for k in range(1, N):
        j = int(torch.argmin((lam_c - lam_g[k]).abs()))
        j = max(j, path[-1] + 1)
        if j > M - (N - k):
            return None
        path.append(j)
    return path + [M]


def _hand_losses(process, score, solver, grids: dict, x_T, objective) -> dict:
    return {k: _end_loss(process, score, solver, x_T, g, objective) for k, g in grids.items()}


# --- caching -------------------------------------------------------------------------------------
_CACHE: dict = {}


def clear_cache() -> None:
    """Forget the grids optimized in this process."""
    _CACHE.clear()


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_grid(path, grid: torch.Tensor, record: dict | None = None) -> Path:
    """Write ``grid`` (a float64 tensor) to ``path`` (``torch.save`` of the plain tensor) and its
    record beside it (same name, ``.json``), both atomically."""
    path = Path(path)
    grid = torch.as_tensor(grid, dtype=torch.float64).detach().cpu().clone()
    _atomic_write(path, lambda p: torch.save(grid, p))
    if record is not None:
        text = json.dumps(record, indent=2, sort_keys=True)
        _atomic_write(path.with_suffix(".json"), lambda p: p.write_text(text))
    return path


def load_grid(path) -> OptimizedGrid:
    """A grid file (``.pt``: a tensor, loaded with ``weights_only=True``; ``.json``/``.txt``:
    a list of times) with its record when one lies beside it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no grid file at {path}")
    if path.suffix == ".pt":
        grid = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(grid, torch.Tensor):
            raise ValueError(f"{path}: a grid file holds one tensor of times, found {type(grid).__name__}")
    else:
        grid = torch.tensor(json.loads(path.read_text()), dtype=torch.float64)
    grid = grid.to(torch.float64)
    if grid.dim() != 1 or grid.numel() < 2:
        raise ValueError(f"{path}: a grid is a 1-D tensor of at least 2 times, found shape {tuple(grid.shape)}")
    side = path.with_suffix(".json")
    record = json.loads(side.read_text()) if side.is_file() and side != path else {}
    return OptimizedGrid(grid, record)


# --- the entry point -------------------------------------------------------------------------------
def optimize(process, score, solver, steps: int, *, method="dp", n: int = 64, seed: int = CALIBRATION_SEED,
             reference: Teacher | None = None, shape=None, device=None, dtype=torch.float64, model_id=None,
             cache=None, represent=None, represent_id: str | None = None, loss=None,
             holdout: float = 0.0) -> OptimizedGrid:
    """A grid of ``steps`` steps for ``solver`` on ``process`` with ``score``, optimized against a
    teacher on ``n`` calibration samples (see the module docstring).

    method: :class:`DynamicProgramming` or :class:`Learned` (the names "dp" and "learned" give
    their defaults); shape: one sample's shape (required); reference: the :class:`Teacher`;
    seed: calibration seed; model_id: the model's identity for the cache; cache: a directory
    for the on-disk cache (None: memory only); represent: a map of a batch of samples to per-sample
    features (B, d) in which the losses measure distances (default: the samples themselves; for
    images a feature network, as LD3 measures its loss in LPIPS; it must be differentiable for
    :class:`Learned`), with ``represent_id`` naming it for the cache; loss: the end-to-end loss,
    :class:`MeanSquared` (default) or :class:`Frechet` (with ``represent`` the feature network of
    an FD metric).

    holdout: the fraction of the calibration batch kept out of the search (the last
    ``round(holdout * n)`` samples; 0: none). The search (the dynamic program's costs, its
    refinement, the learned method's gradient steps) sees only the other samples; the held-out
    ones choose the result: the refinement's accepted paths and the learned method's iterates
    are scored on them and the best is kept (early stopping), and the returned grid is the one
    with the lowest held-out loss among the search's result and the hand-designed grids. It is
    there because a grid fitted to a few dozen samples can lower their loss while raising it on
    others (on the digits model, 32 calibration images: calibration losses down 25-70%, FD on
    evaluation seeds up for three of four solvers); selecting on samples the search never saw
    makes the returned grid no worse than the best hand grid there, an unbiased check of what it
    will do on new samples. The check is only as good as the held-out loss is precise, and it
    halves what the search fits: a Fréchet distance in 64 features from 128 held-out digits
    still ranks grids differently from the FD of 1000 evaluation samples (UniPC at 5 NFE in
    benchmarks/results/grid_optimization_features.md), and at 10 NFE on the mixtures with 64
    held-out samples it chose hand grids worse on evaluation than the unchecked search's
    (benchmarks/results/grid_optimization.md); so it is off by default (0: search and
    selection on the whole batch) and worth its halving with a few hundred calibration samples."""
    if isinstance(method, str):
        table = {"dp": DynamicProgramming, "learned": Learned}
        if method not in table:
            raise ValueError(f"optimize: method must be 'dp', 'learned', DynamicProgramming(...) or Learned(...), "
                             f"got {method!r}")
        method = table[method]()
    if not isinstance(method, (DynamicProgramming, Learned)):
        raise TypeError(f"optimize: unknown method {method!r}")
    loss = MeanSquared() if loss is None else loss
    if not isinstance(loss, (MeanSquared, Frechet, Energy)):
        raise TypeError(f"optimize: loss must be MeanSquared(), Frechet() or Energy(), got {loss!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"optimize: steps must be an integer >= 1, got {steps!r}")
    if shape is None:
        raise ValueError("optimize: give shape=, the shape of one sample (e.g. (2,) or (1, 8, 8))")
    if not 0.0 <= float(holdout) < 1.0:
        raise ValueError(f"optimize: holdout must be a fraction in [0, 1), got {holdout!r}")
    n_held = int(round(float(holdout) * n))
    n_fit = n - n_held
    least = 2 if isinstance(loss, (Frechet, Energy)) else 1
    if n_fit < least or (holdout > 0 and n_held < least):
        raise ValueError(f"optimize: n = {n} calibration samples with holdout = {holdout} leave {n_fit} to fit and "
                         f"{n_held} held out; each part needs at least {least}")
    if solver.stochastic or solver.adaptive:
        raise TypeError(f"optimize: grids are optimized for deterministic fixed-step solvers; "
                        f"{type(solver).__name__} is {'stochastic' if solver.stochastic else 'adaptive'}")
    teacher = reference if reference is not None else Teacher()
    if isinstance(method, DynamicProgramming):
        if teacher.steps % method.candidates:
            raise ValueError(f"optimize: the teacher's {teacher.steps} steps must be a multiple of the "
                             f"{method.candidates} candidate steps")
        if steps > method.candidates:
            raise ValueError(f"optimize: {steps} steps need at least as many candidate steps "
                             f"(got candidates={method.candidates})")
    score = _as_score(score, process)
    shape = tuple(int(s) for s in shape)
    ident, stable = _model_id(score, model_id)
    key_parts = {"model": ident, "process": repr(process), "solver": repr(solver), "steps": steps,
                 "method": repr(method), "teacher": teacher.describe(), "n": int(n), "seed": int(seed),
                 "shape": list(shape), "dtype": str(dtype), "loss": repr(loss), "holdout": float(holdout)}
    if represent is not None:
        if represent_id is None:
            raise ValueError("optimize: give represent_id=, a name of the representation for the cache")
        key_parts["represent"] = represent_id
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:24]
    if key in _CACHE:
        hit = _CACHE[key]
        return OptimizedGrid(hit.grid.clone(), dict(hit.record, cached=True))
    disk = Path(cache) / f"{key}.pt" if (cache is not None and stable) else None
    if disk is not None and disk.is_file():
        hit = load_grid(disk)
        _CACHE[key] = hit
        return OptimizedGrid(hit.grid.clone(), dict(hit.record, cached=True))

    start = time.perf_counter()
    x_T = _initial(process, n, shape, seed, device, dtype)
    x_fit, x_held = x_T[:n_fit], x_T[n_fit:]
    hand_grids = _hand_grids(process, solver, steps)
    every = teacher.steps // method.candidates if isinstance(method, DynamicProgramming) else teacher.steps
    taus, X = _teacher_states(process, score, teacher, x_T, every)
    fit = _Objective(loss, X[-1, :n_fit], represent)
    held = _Objective(loss, X[-1, n_fit:], represent) if n_held else None
    hands = _hand_losses(process, score, solver, hand_grids, x_fit, fit)
    hands_held = _hand_losses(process, score, solver, hand_grids, x_held, held) if held else None
    best_fit_hand = min(hands, key=hands.get)
    held_after = None
    if isinstance(method, DynamicProgramming):
        Xf = X[:, :n_fit]
        S0 = torch.stack([score.predict(Xf[j], taus[j].expand(n_fit).to(Xf.device), process).detach()
                          for j in range(taus.numel())])
        C = _dp_costs(process, score, solver, steps, taus, Xf, S0, represent)
        path, dp_cost = cheapest_path(C, steps)
        loss_dp = _end_loss(process, score, solver, x_fit, taus[path], fit)
        # the refinement starts from the better of the dynamic program's path and the best hand
        # grid moved onto the candidates: the local cost model can miss what a hand grid gets right
        start_from = "dynamic program"
        snapped = _snap(process, taus, hand_grids[best_fit_hand])
        if snapped is not None and snapped != path:
            loss_snapped = _end_loss(process, score, solver, x_fit, taus[snapped], fit)
            if loss_snapped < loss_dp:
                path, start_from = snapped, f"{best_fit_hand} on the candidates"
        path, loss_after, held_after, evals = _refine(process, score, solver, x_fit, taus, path, fit, method.sweeps,
                                                      x_held, held)
        grid = taus[path].clone()
        details = {"candidates": method.candidates, "candidate_spacing": "log-SNR uniform",
                   "dp_path_cost": dp_cost, "loss_dp_before_refinement": loss_dp, "refinement_solves": evals,
                   "refinement_start": start_from, "candidate_indices": path,
                   "history_points": _multistep_history(solver)}
    else:
        target = X[-1, :n_fit]
        init_name = best_fit_hand
        init = hand_grids[init_name]
        T, t_end = float(init[0]), float(init[-1])
        lam0, lam1 = process.lam(torch.tensor(T, dtype=torch.float64)), process.lam(torch.tensor(t_end, dtype=torch.float64))
        w = _logits_of(process, init).clone().requires_grad_(True)
        adam = _Adam(w.detach(), method.lr)
        gen = torch.Generator().manual_seed(int(seed))
        best_w, best_loss, history, held_history = w.detach().clone(), math.inf, [], []
        best_iteration = 0
        with torch.enable_grad():
            for it in range(method.iterations):
                idx = (torch.randperm(n_fit, generator=gen)[:method.batch] if method.batch else None)
                xb = x_fit if idx is None else x_fit[idx.to(x_fit.device)]
                obj = fit if idx is None else _Objective(loss, target[idx.to(target.device)], represent)
                g = _grid_of(process, w, lam0, lam1, T, t_end)
                value = obj(_run(process, score, solver, xb, g))
                if not torch.isfinite(value):
                    break
                history.append(float(value))
                if held is not None:  # early stopping on the held-out samples
                    h = _end_loss(process, score, solver, x_held, g.detach(), held)
                    held_history.append(h)
                    if h < best_loss:
                        best_loss, best_w, best_iteration = h, w.detach().clone(), it
                elif idx is None and float(value) < best_loss:
                    best_loss, best_w, best_iteration = float(value), w.detach().clone(), it
                (grad,) = torch.autograd.grad(value, [w])
                w = adam.step(grad).requires_grad_(True)
        if method.batch and held is None:
            best_w = w.detach().clone()
        grid = _grid_of(process, best_w, lam0, lam1, T, t_end).detach()
        loss_after = _end_loss(process, score, solver, x_fit, grid, fit)
        if held is not None:
            held_after = _end_loss(process, score, solver, x_held, grid, held)
        details = {"init": init_name, "iterations": method.iterations, "lr": method.lr,
                   "batch": method.batch, "loss_curve_every_10": history[::10],
                   "held_out_curve_every_10": held_history[::10], "best_iteration": best_iteration,
                   "parametrization": "softmax of log-SNR increments"}
    searched = grid.clone()
    if held is not None:  # the held-out samples choose between the search's grid and the hand grids
        best_hand = min(hands_held, key=hands_held.get)
        if held_after > hands_held[best_hand]:
            grid, loss_after, held_after = hand_grids[best_hand].clone(), hands[best_hand], hands_held[best_hand]
            details["fallback"] = best_hand
        before, after, before_grid = hands_held[best_hand], held_after, best_hand
    else:  # never return a grid worse than a hand grid on the calibration batch
        best_hand = best_fit_hand
        if loss_after > hands[best_hand]:
            grid, loss_after = hand_grids[best_hand].clone(), hands[best_hand]
            details["fallback"] = best_hand
        before, after, before_grid = hands[best_hand], loss_after, best_hand
    seconds = time.perf_counter() - start
    what = loss.name + (f", in the representation {represent_id}" if represent is not None else "")
    record = {"method": method.name, "method_options": {k: v for k, v in asdict(method).items()},
              "solver": repr(solver), "steps": steps, "nfe": steps * int(solver.nfe_per_step),
              "process": repr(process), "model": ident, "calibration": {"seed": int(seed), "samples": [0, int(n)],
                                                                        "fit": [0, n_fit], "held_out": [n_fit, int(n)],
                                                                        "x_T": "prior draws of sample(..., seed=seed)"},
              "teacher": teacher.describe(), "seconds": seconds, "holdout": float(holdout),
              "loss": what + (" (held-out samples)" if held is not None else " (calibration batch)"),
              "loss_before": before, "loss_before_grid": before_grid, "loss_after": after,
              "fit_loss_before": hands[best_fit_hand], "fit_loss_before_grid": best_fit_hand,
              "fit_loss_after": loss_after, "hand_grid_losses": hands, "held_out_hand_grid_losses": hands_held,
              "searched_grid": [float(t) for t in searched], "grid": [float(t) for t in grid], **details}
    result = OptimizedGrid(grid.to(torch.float64).cpu(), record)
    _CACHE[key] = result
    if disk is not None:
        save_grid(disk, result.grid, record)
    return OptimizedGrid(result.grid.clone(), dict(record))
