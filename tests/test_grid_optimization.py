"""Optimized time grids: the dynamic program against brute force, the DP's batched step costs
against single solves, and on Gaussian data (closed-form probability-flow map) optimized grids
beating the hand-designed ones on evaluation seeds apart from the calibration seeds."""
import itertools
import json

import pytest
import torch

import sdesolve as sds
from sdesolve import grid_optimization as go

# Gaussian data N(mu, S): x_t - alpha_t mu has covariance U diag(alpha_t^2 l + sigma_t^2) U^T and the
# probability-flow ODE scales each eigen-direction by sqrt(c_s / c_t), c = alpha^2 l + sigma^2.
_g = torch.Generator().manual_seed(3)
_A = torch.randn(3, 3, generator=_g, dtype=torch.float64)
S = 0.05 * _A @ _A.T + 0.01 * torch.eye(3, dtype=torch.float64)
MU = torch.tensor([[1.0, -0.5, 0.3]], dtype=torch.float64)
GAUSS = sds.GaussianMixture([1.0], MU, S[None])
P = sds.VPSDE()


def pf_map(x, t, s):
    lam, U = torch.linalg.eigh(S)
    at, st = P.marginal(torch.tensor(t, dtype=torch.float64))
    as_, ss = P.marginal(torch.tensor(s, dtype=torch.float64))
    ratio = torch.sqrt((as_**2 * lam + ss**2) / (at**2 * lam + st**2))
    return as_ * MU + ((x - at * MU) @ U * ratio) @ U.T


def per_sample_error(solver, grid, seed=0, n=512):
    """|| sample - exact PF-ODE map ||^2 per sample on evaluation seed ``seed``."""
    x_T = go._initial(P, n, (3,), seed, None, torch.float64)
    y = sds.sample(P, GAUSS.score(P), solver, x_T=x_T, schedule=grid, seed=seed).y
    exact = pf_map(x_T, float(grid[0]), float(grid[-1]))
    return (y - exact).pow(2).sum(1)


def test_cheapest_path_is_the_brute_force_optimum():
    g = torch.Generator().manual_seed(0)
    M = 8
    cost = torch.rand(M + 1, M + 1, generator=g, dtype=torch.float64) ** 3
    for steps in range(1, M + 1):
        path, value = go.cheapest_path(cost, steps)
        brute = min((sum(float(cost[a, b]) for a, b in zip((0,) + c + (M,), c + (M,))), (0,) + c + (M,))
                    for c in itertools.combinations(range(1, M), steps - 1))
        assert value == pytest.approx(brute[0], rel=1e-12)
        assert tuple(path) == brute[1]
        assert len(path) == steps + 1 and path[0] == 0 and path[-1] == M


def test_cheapest_path_rejects_bad_input():
    with pytest.raises(ValueError):
        go.cheapest_path(torch.ones(4, 4), 4)
    with pytest.raises(ValueError):
        go.cheapest_path(torch.ones(4, 3), 1)


@pytest.mark.parametrize("solver", [sds.Euler(), sds.Heun(), sds.DDIM(), sds.DPMSolverPP(2)], ids=repr)
def test_dp_costs_are_single_solver_steps_from_the_teacher(solver):
    """Every batched cost C[0, j] (no history) and, for one-step solvers, C[i, j] equals the error
    of a separate one-step solve from the teacher's state X_i to tau_j."""
    score = sds.Score(GAUSS.score(P))
    x_T = go._initial(P, 6, (3,), 1, None, torch.float64)
    taus, X = go._teacher_states(P, score, go.Teacher(steps=32), x_T, every=4)
    S0 = torch.stack([score.predict(X[j], taus[j].expand(6), P) for j in range(taus.numel())])
    C = go._dp_costs(P, score, solver, 3, taus, X, S0)
    rows = [0, 3, 5] if go._multistep_history(solver) == 0 else [0]
    eq = P.probability_flow(score)
    for i in rows:
        for j in range(i + 1, taus.numel()):
            y = sds.solve(eq, X[i], float(taus[i]), float(taus[j]), solver,
                          schedule=torch.stack([taus[i], taus[j]])).y
            assert float(C[i, j]) == pytest.approx(float(go._mse(y, X[j]).mean()), rel=1e-9, abs=1e-15)
    assert torch.isinf(C[3, 2]) and torch.isinf(C[2, 2])


def test_learned_grid_gradients_reach_the_grid():
    """The fixed-grid sampling loop keeps the grid in the autograd graph (the learned method
    relies on it): a directional derivative matches finite differences."""
    solver = sds.DPMSolverPP(2)
    x_T = go._initial(P, 8, (3,), 0, None, torch.float64)
    lam0, lam1 = P.lam(torch.tensor(P.T, dtype=torch.float64)), P.lam(torch.tensor(P.t_min, dtype=torch.float64))
    w = torch.randn(5, generator=torch.Generator().manual_seed(0), dtype=torch.float64).requires_grad_(True)

    def f(w):
        return go._run(P, GAUSS.score(P), solver, x_T, go._grid_of(P, w, lam0, lam1, P.T, P.t_min)).pow(2).sum()

    (g,) = torch.autograd.grad(f(w), [w])
    v = torch.randn(5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    eps = 1e-6
    fd = (f(w.detach() + eps * v) - f(w.detach() - eps * v)) / (2 * eps)
    assert float(g @ v) == pytest.approx(float(fd), rel=1e-5)


def _solvers():
    out = [sds.Euler(), sds.DPMSolverPP(2)]
    if hasattr(sds, "IPNDM"):
        out.append(sds.IPNDM())
    return out


@pytest.mark.parametrize("method", [go.DynamicProgramming(candidates=32, sweeps=2), go.Learned(iterations=40, lr=0.1)],
                         ids=["dp", "learned"])
@pytest.mark.parametrize("solver", _solvers(), ids=lambda s: type(s).__name__)
def test_optimized_grid_beats_hand_grids_on_gaussian_data(solver, method):
    """5 steps: the optimized grid's error to the closed-form PF-ODE map, on evaluation seeds
    not used for calibration, is below the log-SNR, Karras and uniform grids', by more than
    3 standard errors of the paired per-sample difference."""
    steps = 5
    opt = sds.schedules.optimize(P, GAUSS.score(P), solver, steps, method=method, shape=(3,), n=32, seed=123,
                                 reference=go.Teacher(steps=128), model_id="gaussian-3d")
    assert opt.grid.dtype == torch.float64 and opt.grid.numel() == steps + 1
    assert float(opt.grid[0]) == P.T and float(opt.grid[-1]) == pytest.approx(P.t_min)
    assert (opt.grid[1:] < opt.grid[:-1]).all()
    assert opt.record["calibration"]["seed"] == 123 and opt.record["loss_after"] < opt.record["loss_before"]
    e_opt = per_sample_error(solver, opt.grid)
    for name, sched in [("logsnr", sds.schedules.logsnr), ("karras", sds.schedules.karras(7.0)),
                        ("uniform", sds.schedules.uniform)]:
        d = per_sample_error(solver, sched(P, steps)) - e_opt
        se = d.std() / d.numel() ** 0.5
        assert float(d.mean()) > 3 * float(se), (name, float(d.mean()), float(se))


def test_cache_in_memory_and_on_disk(tmp_path):
    score = GAUSS.score(P)
    kw = dict(method=go.DynamicProgramming(candidates=16, sweeps=0), shape=(3,), n=8, seed=5,
              reference=go.Teacher(steps=32), model_id="gaussian-3d", cache=tmp_path)
    go.clear_cache()
    a = sds.schedules.optimize(P, score, sds.Euler(), 3, **kw)
    assert "cached" not in a.record
    b = sds.schedules.optimize(P, score, sds.Euler(), 3, **kw)
    assert b.record["cached"] and torch.equal(a.grid, b.grid)
    files = sorted(p.suffix for p in tmp_path.iterdir())
    assert files == [".json", ".pt"]
    go.clear_cache()
    c = sds.schedules.optimize(P, score, sds.Euler(), 3, **kw)  # from disk
    assert c.record["cached"] and torch.equal(a.grid, c.grid)
    d = sds.schedules.optimize(P, score, sds.Euler(), 4, **kw)  # another NFE: another entry
    assert d.grid.numel() == 5
    # a grid file is plain data: a tensor (weights_only) and a JSON record
    path = a.save(tmp_path / "grid.pt")
    assert torch.equal(torch.load(path, weights_only=True), a.grid)
    assert json.loads(path.with_suffix(".json").read_text())["solver"] == repr(sds.Euler())
    loaded = go.load_grid(path)
    y = sds.sample(P, score, sds.Euler(), x_T=torch.zeros(2, 3, dtype=torch.float64), schedule=loaded.grid).y
    assert torch.isfinite(y).all()


def test_optimize_rejects_what_it_cannot_do():
    score = GAUSS.score(P)
    with pytest.raises(ValueError, match="shape"):
        sds.schedules.optimize(P, score, sds.Euler(), 3)
    with pytest.raises(ValueError, match="method"):
        sds.schedules.optimize(P, score, sds.Euler(), 3, method="gits", shape=(3,))
    with pytest.raises(TypeError, match="stochastic"):
        sds.schedules.optimize(P, score, sds.EulerMaruyama(), 3, shape=(3,))


def test_cli_schedule_and_bench_rows(tmp_path, capsys):
    """`sdesolve schedule` writes a grid file (tensor + JSON record) that `bench --schedule` and
    `sample`-style callers take; `bench --optimized-grids` adds one row per solver, NFE and method,
    with the optimization time apart from the sampling time."""
    from sdesolve.cli import main

    out = tmp_path / "grid.pt"
    small = ["--optimization-n", "8", "--teacher-steps", "32"]
    assert main(["schedule", "--gmm", "gmm8d", "--solver", "euler", "--nfe", "3", "--method", "dp",
                 "--candidates", "16", "--sweeps", "1", "--out", str(out), *small]) == 0
    grid = go.load_grid(out)
    assert grid.grid.numel() == 4 and grid.record["method"] == "dp" and grid.record["nfe"] == 3
    assert main(["bench", "--gmm", "gmm8d", "--solvers", "euler,dpmsolverpp:order=2", "--nfe", "3", "--n", "40",
                 "--tolerances", "", "--reference", "none", "--peers", "none", "--warmup", "0", "--quiet",
                 "--reference-n", "200", "--optimized-grids", "learned", "--iterations", "3", "--schedule", str(out), *small,
                 "--out", str(tmp_path / "bench")]) == 0
    rows = json.loads((tmp_path / "bench" / "results.json").read_text())["rows"]
    grids = [(r["sampler"], r.get("grid_method")) for r in rows]
    assert ("Euler @3 [learned grid]", "learned") in grids and ("DPMSolverPP(order=2) @3 [grid.pt grid]", "grid.pt") in grids
    for r in rows:
        if r.get("grid_method"):
            assert r["nfe"] == 3 and len(r["grid"]) == 4
        if r.get("grid_method") == "learned":
            assert r["grid_optimization_seconds"] > 0 and r["seconds"] > 0
    with pytest.raises(SystemExit, match="differ"):
        main(["bench", "--gmm", "gmm8d", "--solvers", "euler", "--nfe", "3", "--n", "8", "--seed", "5",
              "--optimization-seed", "5", "--optimized-grids", "dp", "--reference", "none", "--peers", "none",
              "--out", str(tmp_path / "b2")])


def test_cli_bench_optimized_rows_follow_their_budgets_and_solvers(tmp_path):
    """--optimized-nfe and --optimized-solvers choose which (solver, NFE) pairs get an optimized
    row; the plain rows keep every --nfe and --solvers."""
    from sdesolve.cli import main

    assert main(["bench", "--gmm", "gmm8d", "--solvers", "euler,heun", "--nfe", "2,4", "--n", "20",
                 "--tolerances", "", "--reference", "none", "--peers", "none", "--warmup", "0", "--quiet",
                 "--reference-n", "200", "--optimized-grids", "learned", "--iterations", "2",
                 "--optimized-nfe", "4", "--optimized-solvers", "heun", "--optimization-n", "8", "--teacher-steps", "32",
                 "--out", str(tmp_path / "bench")]) == 0
    rows = json.loads((tmp_path / "bench" / "results.json").read_text())["rows"]
    optimized = sorted(r["sampler"] for r in rows if r.get("grid_method") == "learned")
    plain = sorted(r["sampler"] for r in rows if not r.get("grid_method"))
    assert optimized == ["Heun @4 [learned grid]"]
    assert plain == ["Euler @2", "Euler @4", "Heun @2", "Heun @4"]


def test_a_representation_scales_the_losses_and_keeps_the_argmin():
    """With represent(y) = 2 y every loss is 4 times the plain one, so the dynamic program and
    its refinement choose the same grid; the representation is part of the cache key."""
    go.clear_cache()
    kw = dict(method=go.DynamicProgramming(candidates=16, sweeps=1), shape=(3,), n=16, seed=5,
              reference=go.Teacher(steps=32), model_id="gaussian-3d-represent")
    score = GAUSS.score(P)
    plain = sds.schedules.optimize(P, score, sds.Euler(), 4, **kw)
    doubled = sds.schedules.optimize(P, score, sds.Euler(), 4, represent=lambda y: 2.0 * y, represent_id="2y", **kw)
    assert torch.equal(plain.grid, doubled.grid) and not doubled.record.get("cached")
    assert doubled.record["loss_after"] == pytest.approx(4.0 * plain.record["loss_after"], rel=1e-9)
    assert "2y" in doubled.record["loss"]
    with pytest.raises(ValueError, match="represent_id"):
        sds.schedules.optimize(P, score, sds.Euler(), 4, represent=lambda y: y, **kw)


def _held_out_losses(solver, grid, steps, n, n_fit, seed, teacher_steps):
    """Independent recomputation of the held-out part: samples n_fit..n-1 of the calibration seed,
    the teacher and the solver run through sds.sample; mean squared distance per dimension."""
    x_T = go._initial(P, n, (3,), seed, None, torch.float64)[n_fit:]
    score = GAUSS.score(P)
    ref = sds.sample(P, score, sds.DPMSolverPP(order=3), x_T=x_T, schedule=sds.schedules.logsnr(P, teacher_steps)).y
    grids = {"logsnr": sds.schedules.logsnr(P, steps), "karras": sds.schedules.karras(7.0)(P, steps),
             "uniform": sds.schedules.uniform(P, steps), "quadratic": sds.schedules.quadratic(P, steps),
             "time_uniform": sds.schedules.time_uniform(2.0)(P, steps), "returned": grid}
    return {k: float((sds.sample(P, score, solver, x_T=x_T, schedule=g).y - ref).pow(2).mean()) for k, g in grids.items()}


@pytest.mark.parametrize("solver,method", [
    (sds.IPNDM(), go.DynamicProgramming(candidates=16, sweeps=3)), (sds.IPNDM(), go.Learned(iterations=60, lr=0.3)),
    # a search confined to the 4 log-SNR candidates returns the log-SNR grid: a hand grid must win
    (sds.Euler(), go.DynamicProgramming(candidates=4, sweeps=0))], ids=["ipndm-dp", "ipndm-learned", "euler-logsnr-only"])
@pytest.mark.parametrize("seed", [1, 2])
def test_held_out_selection_never_returns_a_grid_worse_than_the_best_hand_grid_there(solver, method, seed):
    """Fitted on 3 samples (inviting overfitting), chosen on 5 held-out ones: recomputed
    independently, the returned grid's held-out loss is at most every hand grid's, and the record
    reports it."""
    go.clear_cache()
    steps, n, teacher = 4, 8, 32
    opt = sds.schedules.optimize(P, GAUSS.score(P), solver, steps, method=method, shape=(3,), n=n, seed=seed,
                                 holdout=0.6, reference=go.Teacher(steps=teacher), model_id="gaussian-3d-holdout")
    assert opt.record["calibration"]["fit"] == [0, 3] and opt.record["calibration"]["held_out"] == [3, 8]
    held = _held_out_losses(solver, opt.grid, steps, n, 3, seed, teacher)
    best_hand = min(v for k, v in held.items() if k != "returned")
    assert held["returned"] <= best_hand * (1 + 1e-9)
    assert opt.record["loss_after"] == pytest.approx(held["returned"], rel=1e-9)
    assert opt.record["loss_before"] == pytest.approx(best_hand, rel=1e-9)
    if method.candidates == steps if isinstance(method, go.DynamicProgramming) else False:
        assert opt.record["fallback"] != "logsnr"
        torch.testing.assert_close(torch.tensor(opt.record["searched_grid"], dtype=torch.float64),
                                   sds.schedules.logsnr(P, steps), rtol=1e-12, atol=1e-12)


def _check_gradient(obj, y, g, eps=1e-6):
    """The autograd directional derivative of obj at y along a random direction against central
    finite differences."""
    yv = y.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(obj(yv), [yv])
    v = torch.randn(y.shape, generator=g, dtype=torch.float64)
    fd = (float(obj(y + eps * v)) - float(obj(y - eps * v))) / (2 * eps)
    assert float((grad * v).sum()) == pytest.approx(fd, rel=1e-5)


def test_frechet_loss_is_the_frechet_distance_and_differentiable():
    """The Fréchet objective equals sdesolve.metrics' FD between the two feature sets, and its
    gradient matches finite differences."""
    from sdesolve.metrics.frechet import fd_from_features
    g = torch.Generator().manual_seed(0)
    target = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y = target + 0.3 * torch.randn(40, 3, generator=g, dtype=torch.float64) + 0.2
    obj = go._Objective(go.Frechet(), target)
    assert float(obj(y)) == pytest.approx(fd_from_features(y, target), rel=1e-8)
    _check_gradient(obj, y, g)
    with pytest.raises(ValueError, match="at least 2"):
        sds.schedules.optimize(P, GAUSS.score(P), sds.Euler(), 3, shape=(3,), n=3, loss=go.Frechet(), holdout=0.5)


def test_energy_loss_is_the_energy_distance_and_differentiable():
    """The energy objective equals sdesolve.metrics' unbiased energy distance between the two
    sets, and its gradient matches finite differences; it is finite where two samples coincide."""
    from sdesolve.metrics.kernel import energy_distance
    g = torch.Generator().manual_seed(1)
    target = torch.randn(30, 4, generator=g, dtype=torch.float64)
    y = 1.2 * target[torch.randperm(30, generator=g)] + 0.3
    obj = go._Objective(go.Energy(), target)
    assert float(obj(y)) == pytest.approx(energy_distance(y, target), rel=1e-10)
    _check_gradient(obj, y, g)
    twins = y.clone()
    twins[1] = twins[0]
    tv = twins.requires_grad_(True)
    (grad,) = torch.autograd.grad(obj(tv), [tv])
    assert torch.isfinite(grad).all()
    opt = sds.schedules.optimize(P, GAUSS.score(P), sds.Euler(), 3, shape=(3,), n=16, loss=go.Energy(),
                                 method=go.Learned(iterations=3))
    assert opt.grid.shape == (4,) and opt.record["loss"].startswith("energy distance")
