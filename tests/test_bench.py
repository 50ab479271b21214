"""The sampler benchmark: the command's outputs, NFE accounting, shared initial noise, the
analysis (Pareto fronts, NFE to reach the reference), the peer adapters against sdesolve's own
solvers on the same grid, and the Fréchet path on a checkpoint with cached reference statistics."""
import json
import math
import re

import pytest
import torch

import sdesolve as sds
from sdesolve import bench
from sdesolve.bench import report, runner
from sdesolve.cli import main

GRID = ["--solvers", "euler,heun,ddim,dpmsolverpp:order=2,edmheun,eulermaruyama,dopri5",
        "--nfe", "5,10", "--tolerances", "1e-2", "--reference", "eulermaruyama@40"]


@pytest.fixture(scope="module")
def ring8_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert main(["bench", "--gmm", "ring8", *GRID, "--peers", "kdiffusion:dpmpp_2m,kdiffusion:euler,torchdiffeq:dopri5",
                 "--n", "96", "--batch-size", "40", "--reference-n", "500", "--seed", "3", "--quiet", "--bootstrap", "100",
                 "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_bench_writes_json_markdown_and_plot(ring8_run):
    out, res = ring8_run
    assert (out / "pareto.png").stat().st_size > 10_000
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = res["meta"]
    for key in ("python", "torch", "sdesolve", "device", "device_name", "command", "n", "seed", "quality"):
        assert key in meta, key
    assert meta["command"].startswith("sdesolve bench --gmm ring8")
    assert meta["n"] == 96 and meta["seed"] == 3
    fixed = {"Euler", "Heun", "DDIM", "DPMSolverPP(order=2)", "EDMHeun", "EulerMaruyama"}
    rows = res["rows"]
    # the reference, 6 fixed-step solvers x 2 budgets, Dopri5 x 1 tolerance, and the peers
    ours = [r for r in rows if not r["peer"]]
    assert len(ours) == 1 + 6 * 2 + 1
    assert {r["family"] for r in ours} == fixed | {"Dopri5"}
    assert rows[0]["reference"] and rows[0]["nfe"] == 40
    assert [r["sampler"] for r in rows if r["error"]] == []
    for r in rows:
        if r["error"] is None:
            for key in ("sampler", "nfe", "nfe_per_sample", "seconds", "samples_per_s", "metrics"):
                assert r[key] is not None, (r["sampler"], key)
            assert (r["tolerance"] is not None) == r["adaptive"] == (r["nfe_requested"] is None)
            assert set(r["metrics"]) == {"sw", "mmd", "energy", "nll", "tv"} == set(r["intervals"])
            assert r["seconds"] > 0 and math.isclose(r["samples_per_s"], 96 / r["seconds"])
            assert r["timing"]["repeats"] >= 3 and r["seconds_lo"] <= r["seconds"] <= r["seconds_hi"]
    md = (out / "results.md").read_text()
    assert "| sampler |" in md and "NFE to get within 10% of the reference" in md and "Pareto fronts" in md
    assert "floor" in md.lower()
    assert {"front_time", "front_nfe", "reach", "peers"} <= set(res["analysis"])


def test_nfe_column_is_stats_nfe(ring8_run):
    """The table's NFE is the solver's own count: an independent run of each fixed-step row
    with the recorded steps reports the same stats.nfe, within the budget."""
    out, res = ring8_run
    problem = bench.mixture_problem(bench.ring8(), "ring8", reference_n=10)
    solvers = {runner.solver_label(s): s for s in
               (sds.Euler(), sds.Heun(), sds.DDIM(), sds.DPMSolverPP(2), sds.EDMHeun(), sds.EulerMaruyama())}
    md_rows = {}
    for line in (out / "results.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 4 and re.search(r"@\d+", cells[0]):
            md_rows[cells[0].replace("**", "").replace(" (reference)", "")] = cells
    checked = 0
    for r in res["rows"]:
        if r["peer"] or r["adaptive"]:
            continue
        x = torch.zeros(4, 2)
        sol = sds.sample(problem.process, problem.score, solvers[r["family"]], x_T=x, steps=r["steps"], seed=0)
        assert r["nfe"] == sol.stats.nfe <= r["nfe_requested"]
        assert r["nfe_per_sample"] == sol.stats.nfe
        assert md_rows[r["sampler"]][3] == str(sol.stats.nfe)  # the markdown's "NFE (stats.nfe)" column
        checked += 1
    assert checked == 13
    heun = {r["nfe_requested"]: r for r in res["rows"] if r["family"] == "Heun"}
    edm = {r["nfe_requested"]: r for r in res["rows"] if r["family"] == "EDMHeun"}
    assert (heun[5]["steps"], heun[5]["nfe"]) == (2, 4)  # 2 model calls per step
    assert (edm[10]["steps"], edm[10]["nfe"]) == (5, 9)  # the grid's last step (to sigma = 0) costs 1


def test_every_row_starts_from_the_same_noise(ring8_run):
    _, res = ring8_run
    shas = {r["x_T_sha1"] for r in res["rows"] if r["error"] is None}
    assert len(shas) == 1 and None not in shas


def test_initial_noise_is_what_sample_draws():
    """initial_noise(...) is sds.sample's own x_T: a deterministic solver gives identical results
    from shape= + seed and from the runner's x_T, at any sample offset."""
    p = sds.VPSDE()
    mix = bench.ring8()
    for offset in (0, 17):
        a = sds.sample(p, mix.score(p), sds.Euler(), shape=(5, 2), steps=3, seed=11, sample_offset=offset).y
        x_T = runner.initial_noise(p, (5, 2), 11, offset)
        b = sds.sample(p, mix.score(p), sds.Euler(), x_T=x_T, steps=3, seed=11, sample_offset=offset).y
        assert torch.equal(a, b)
    # offsets index global samples: sample 17 of a run is sample 0 of a shard starting at 17
    assert torch.equal(runner.initial_noise(p, (20, 2), 11, 0)[17:], runner.initial_noise(p, (3, 2), 11, 17))


def test_fit_steps_takes_the_largest_grid_within_budget():
    p = sds.VPSDE()
    count = lambda solver: (lambda s: runner._dry_nfe(solver, p, s))  # noqa: E731
    assert runner.fit_steps(count(sds.Heun()), 7) == (3, 6)
    assert runner.fit_steps(count(sds.EDMHeun()), 20) == (10, 19)
    assert runner.fit_steps(count(sds.EDMHeun()), 2) == (2, 3)  # nothing fits: the fewest valid steps
    assert runner.fit_steps(count(sds.DPMSolver(3)), 10) == (3, 9)


def test_pareto_front():
    pts = [(1.0, 5.0), (2.0, 3.0), (3.0, 3.0), (4.0, 1.0), (5.0, 2.0), (None, 0.1), (0.5, float("nan"))]
    assert report.pareto_front(pts) == [True, True, False, True, False, False, False]
    assert report.pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [True, True]  # ties dominate nothing


def _row(name, family, nfe, metric, seconds, reference=False, peer=False, counterpart="", tol=None, stochastic=False):
    return {"sampler": name, "family": family, "library": "x", "peer": peer, "counterpart": counterpart,
            "adaptive": tol is not None, "stochastic": stochastic, "reference": reference, "nfe_requested": nfe,
            "tolerance": tol, "nfe": nfe, "nfe_per_sample": float(nfe), "seconds": seconds, "metrics": {"m": metric},
            "error": None}


def test_analysis_finds_the_first_budget_within_ten_percent():
    rows = [_row("R @1000", "R", 1000, 1.0, 10.0, reference=True, stochastic=True),
            _row("A @5", "A", 5, 3.0, 0.05), _row("A @10", "A", 10, 1.12, 0.1), _row("A @20", "A", 20, 1.09, 0.2),
            _row("B @5", "B", 5, 2.0, 0.05), _row("B @10", "B", 10, 1.5, 0.1),
            _row("P @10", "P", 10, 1.05, 0.5, peer=True, counterpart="A"),
            _row("D tol=0.01", "D", 30, 1.3, 0.3, tol=1e-2), _row("D tol=0.001", "D", 60, 1.2, 0.6, tol=1e-3),
            _row("S @10", "S", 10, 1.02, 0.1, stochastic=True)]
    res = {"rows": rows, "meta": {"quality": {"primary": "m"}}}
    a = report.analyse(res)
    reach = {e["sampler"]: e for e in a["reach"]}
    assert reach["A"]["reached"] and reach["A"]["nfe"] == 20 and math.isclose(reach["A"]["speedup"], 50.0)
    assert not reach["B"]["reached"] and reach["B"]["best_metric"] == 1.5
    assert reach["P"]["reached"] and reach["P"]["nfe"] == 10
    assert reach["S"]["reached"] and not reach["D"]["reached"]
    peer = a["peers"][0]
    assert peer["ours"] == "A @10" and math.isclose(peer["metric_ratio"], 1.05 / 1.12)
    assert a["front_time"] == ["B @5", "S @10", "R @1000"]  # B @5 beats A @5 at equal time
    # against the probability-flow limit (the tightest adaptive ODE row, 1.2): deterministic rows only
    assert a["ode_reference"] == "D tol=0.001" and a["ode_reference_metric"] == 1.2
    ode = {e["sampler"]: e for e in a["reach_ode"]}
    assert set(ode) == {"A", "B", "P", "D"}
    assert ode["A"]["nfe"] == 10 and ode["D"]["row"] == "D tol=0.01" and not ode["B"]["reached"]


class _Broken(bench.Peer):
    library, label = "nowhere", "broken peer"

    def sample(self, process, score, x_T, **kw):
        raise RuntimeError("diverged")


class _Missing(bench.Peer):
    library, label = "nowhere", "missing peer"

    def check(self, process):
        raise bench.PeerUnavailable("not installed here")


def test_failed_and_unavailable_peers_are_recorded_not_fatal(tmp_path):
    problem = bench.mixture_problem(bench.ring8(), "ring8", reference_n=100)
    entries = runner.grid([sds.Euler()], [4], (), peers=[_Broken(), _Missing()])
    res = runner.run(problem, entries, n=16, progress=False, log=lambda s: None)
    assert [r["sampler"] for r in res["rows"]] == ["Euler @4", "broken peer @4"]
    assert res["rows"][1]["error"] == "RuntimeError: diverged" and math.isnan(res["rows"][1]["metrics"]["sw"])
    assert res["skipped"] == [{"sampler": "missing peer @4", "library": "nowhere", "reason": "not installed here"}]
    paths = report.write(res, tmp_path)
    md = paths["md"].read_text()
    assert "broken peer @4: RuntimeError: diverged" in md and "missing peer @4: not installed here" in md
    assert json.loads(paths["json"].read_text())["rows"][1]["metrics"]["sw"] is None  # strict JSON: NaN -> null


def test_kdiffusion_peer_is_ddim_on_the_karras_grid():
    """k-diffusion's Euler in x / alpha and sigma = sigma / alpha is DDIM (both first order in
    the same exponential-integrator variable): on the same grid, from the same x_T, they agree to
    float32 rounding of the state over 10 steps."""
    try:
        bench.kdiffusion_sampling()
    except bench.PeerUnavailable as e:
        pytest.skip(str(e))
    p, mix = sds.VPSDE(), bench.gmm8d()
    x_T = runner.initial_noise(p, (64, 8), 0, dtype=torch.float64)
    theirs, calls = bench.KDiffusion("euler").sample(p, mix.score(p), x_T, steps=10)
    ours = sds.sample(p, mix.score(p), sds.DDIM(), x_T=x_T, schedule=sds.schedules.karras(7.0)(p, 10)).y
    assert calls == 10
    assert float((theirs - ours).abs().max() / ours.abs().max()) < 1e-9


def test_diffusers_peer_is_ddim_on_the_ddpm_knots():
    """diffusers' DDIM on the DDPM discretisation of the VP process equals sdesolve's DDIM on the
    continuous process at the same knots t_k = t_min + k (T - t_min) / 999, up to the float32
    cumulative product that diffusers computes alphas_cumprod with (1000 factors: relative error
    ~1e3 x 6e-8 = 6e-5 in alpha^2, so ~1e-4 in the result; the bound is 1e-3)."""
    pytest.importorskip("diffusers")
    p, mix = sds.VPSDE(), bench.ring8()
    peer = bench.Diffusers.ddim()
    x_T = runner.initial_noise(p, (64, 2), 1)
    theirs, calls = peer.sample(p, mix.score(p), x_T, steps=10)
    knots = torch.arange(999, -1, -100, dtype=torch.float64)  # "trailing": 999, 899, ..., 99, then 0
    grid = torch.cat([p.t_min + knots * ((p.T - p.t_min) / 999), torch.tensor([p.t_min], dtype=torch.float64)])
    ours = sds.sample(p, mix.score(p), sds.DDIM(), x_T=x_T.double(), schedule=grid).y
    assert calls == 10
    assert float((theirs.double() - ours).abs().max() / ours.abs().max()) < 1e-3


def test_torchdiffeq_peer_reaches_t_min_without_overshoot():
    """At a tolerance where plain odeint steps past t_min (and evaluates the model at t < 0),
    the peer lands on t_min and agrees with sdesolve's Dopri5 at a tight tolerance."""
    pytest.importorskip("torchdiffeq")
    p, mix = sds.VPSDE(), bench.ring8()
    x_T = runner.initial_noise(p, (32, 2), 2, dtype=torch.float64)
    seen = []
    score = mix.score(p)
    watched = sds.Score(lambda x, t: (seen.append(float(t.min())), score(x, t))[1])
    y, calls = bench.Torchdiffeq("dopri5").sample(p, watched, x_T, tol=1e-7)
    assert min(seen) >= p.t_min and calls == len(seen)
    ref = sds.sample(p, score, sds.Dopri5(1e-9, 1e-9), x_T=x_T).y
    # both are tolerance-controlled approximations of one ODE solution
    assert float((y - ref).abs().max()) < 1e-4


def test_frechet_quality_on_a_checkpoint_caches_reference_statistics(tmp_path, monkeypatch):
    """A digits checkpoint is judged by FD in the digits classifier's features against the
    held-out split, whose statistics are computed once and then read from the cache."""
    monkeypatch.setenv("SDESOLVE_CACHE", str(tmp_path / "cache"))
    ckpt = tmp_path / "ckpt"
    assert main(["train", "--data", "digits", "--model", "mlp", "--hidden", "32", "--depth", "1", "--steps", "2",
                 "--batch-size", "16", "--out", str(ckpt), "--quiet"]) == 0
    problem = bench.checkpoint_problem(ckpt)
    cached = list((tmp_path / "cache" / "reference_stats").glob("fd_digits-digits-*.npz"))
    assert len(cached) == 1
    assert problem.quality.names == ["fd_digits", "kid_digits"]
    assert problem.quality.info["reference_n"] == 359  # the held-out split
    ref = problem.quality.metrics[0].metric.mu_r
    stamp = cached[0].stat().st_mtime_ns
    problem = bench.checkpoint_problem(ckpt)  # read back, not recomputed
    assert cached[0].stat().st_mtime_ns == stamp
    assert torch.allclose(problem.quality.metrics[0].metric.mu_r, ref)
    res = runner.run(problem, runner.grid([sds.DDIM()], [3], ()), n=40, progress=False, log=lambda s: None)
    fd = res["rows"][0]["metrics"]["fd_digits"]
    floor = res["floor"]
    # 2 training steps: far from the data, and far above real images of the same size
    assert floor["n"] == 40 and floor["sets"] == 8 and fd > 2 * floor["fd_digits"] > 0


def test_lead_compares_our_best_default_row_with_the_best_peer(ring8_run):
    """At each budget the lead entry pairs sdesolve's best row (on a default grid) with the best
    peer row: their metrics are the minima of those groups, the difference is ours - peer with
    an interval around it, and the excess reduction is 1 - (ours - floor) / (peer - floor)."""
    out, res = ring8_run
    rows, primary = res["rows"], res["analysis"]["primary"]
    floor = res["floor"][primary]
    lead = [e for e in res["analysis"]["lead"] if e["kind"] == "default grid"]
    assert [e["budget"] for e in lead] == [5, 10]
    for e in lead:
        at = [r for r in rows if r["nfe_requested"] == e["budget"] and not r["reference"] and r["error"] is None]
        ours = min((r for r in at if not r["peer"]), key=lambda r: r["metrics"][primary])
        peer = min((r for r in at if r["peer"]), key=lambda r: r["metrics"][primary])
        assert (e["ours"], e["peer"]) == (ours["sampler"], peer["sampler"])
        d = e["difference"]
        assert math.isclose(d["diff"], ours["metrics"][primary] - peer["metrics"][primary], rel_tol=1e-9, abs_tol=1e-12)
        assert d["lo"] <= d["diff"] <= d["hi"]
        assert e["status"] == ("not resolved" if d["lo"] <= 0 <= d["hi"] else "better" if d["hi"] < 0 else "worse")
        if peer["metrics"][primary] > floor:
            want = 1 - (ours["metrics"][primary] - floor) / (peer["metrics"][primary] - floor)
            assert math.isclose(e["excess_reduction"], want, rel_tol=1e-9)
        else:  # no excess to reduce
            assert e["excess_reduction"] is None
    assert "lead at 5 NFE (default grid)" in (out / "summary.md").read_text()
