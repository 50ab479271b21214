"""Paired intervals, metric choice and refusal, user data and mixtures, work-precision and the
likelihood command.

The paired metrics are checked against the direct formulas (on the sample itself and on one
resample drawn by index), the interval's coverage against a known difference, and the analysis
against a sampler identical to the reference (its difference is exactly 0: never a win)."""
import json
import math

import numpy as np
import pytest
import torch

import sdesolve as sds
from sdesolve import bench
from sdesolve.bench import paired, report, runner
from sdesolve.cli import main
from sdesolve.metrics import (DigitsClassifierFeatures, FeatureMismatch, GaussianStats, InceptionFeatures,
                              MnistClassifierFeatures, check_fits, energy_distance, frechet_distance)
from sdesolve.metrics.kernel import mmd2_unbiased


def _resample(boot, b):
    """The indices of replicate b (counts -> repeated indices)."""
    return torch.repeat_interleave(torch.arange(boot.n), boot.weights[b].long())


def test_paired_metrics_equal_the_direct_formulas_on_the_sample_and_a_resample():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 5, generator=g, dtype=torch.float64) * 1.3 + 0.2
    ref = torch.randn(300, 5, generator=g, dtype=torch.float64)
    boot = paired.Bootstrap(120, replicates=3, seed=1)
    st = GaussianStats().update(ref)
    fd = paired.FrechetDistance("fd", st.mean, st.cov)
    mm = paired.KernelDistance("mmd", paired.rbf(1.5), ref)
    ed = paired.KernelDistance("energy", paired.negative_distance, ref)
    sw = paired.SlicedWasserstein(ref, sets=3, n_proj=16, seed=4)
    vals = {m.name: boot.evaluate(m, x) for m in (fd, mm, ed, sw)}
    for b in (0, 2):
        xb = x[_resample(boot, b)]
        c = torch.cov(xb.T)
        assert math.isclose(vals["fd"][b], frechet_distance(xb.mean(0), c, st.mean, st.cov), rel_tol=1e-7)
        assert math.isclose(vals["energy"][b], energy_distance(xb, ref), rel_tol=1e-9, abs_tol=1e-12)
        k = paired.rbf(1.5)
        assert math.isclose(vals["mmd"][b], float(mmd2_unbiased(k(xb, xb), k(ref, ref), k(xb, ref))), rel_tol=1e-9,
                            abs_tol=1e-12)
        from sdesolve.metrics.sliced import _quantiles
        qx = _quantiles(xb @ sw.theta, 120)
        qy = _quantiles(ref @ sw.theta, 120)
        direct = ((qx - qy) ** 2).mean(0).reshape(3, 16).mean(1).sqrt().mean()
        assert math.isclose(vals["sw"][b], float(direct), rel_tol=1e-9)


def test_energy_distance_is_zero_in_expectation_for_equal_laws_and_positive_otherwise():
    g = torch.Generator().manual_seed(3)
    same = torch.tensor([energy_distance(torch.randn(60, 2, generator=g), torch.randn(80, 2, generator=g))
                         for _ in range(60)], dtype=torch.float64)
    se = same.std() / math.sqrt(same.numel())
    assert abs(float(same.mean())) < 3 * float(se)  # unbiased: mean within its own noise floor
    # 1-D N(0, 1) against N(1, 1): 2 E|X - Y| - E|X - X'| - E|Y - Y'|, with |N(m, s^2)| of mean
    # s sqrt(2/pi) exp(-m^2 / 2 s^2) + m (1 - 2 Phi(-m / s))
    def abs_mean(m, s):
        return s * math.sqrt(2 / math.pi) * math.exp(-m * m / (2 * s * s)) + m * (1 - 2 * 0.5 * math.erfc(m / s / math.sqrt(2)))
    truth = 2 * abs_mean(1.0, math.sqrt(2)) - 2 * abs_mean(0.0, math.sqrt(2))
    est = torch.tensor([energy_distance(torch.randn(200, 1, generator=g), torch.randn(200, 1, generator=g) + 1.0)
                        for _ in range(30)], dtype=torch.float64)
    assert abs(float(est.mean()) - truth) < 3 * float(est.std() / math.sqrt(est.numel()))


def test_paired_interval_covers_a_known_difference_in_95_percent_of_repetitions():
    """Two samplers from the same x_T: A draws z ~ N(0, I_2), B draws 1.1 z + 0.1. The metric
    is the mean NLL under N(0, I_2), 0.5 |x|^2 + log(2 pi), so the true difference of B and A is
    0.5 * 2 * (1.21 + 0.01 - 1) = 0.22. 200 repetitions of n = 200 samples, 400 resamples each."""
    nll = paired.MeanOf("nll", lambda x: 0.5 * (x * x).sum(1) + math.log(2 * math.pi))
    truth, covered, widths = 0.22, 0, []
    for rep in range(200):
        z = torch.randn(200, 2, generator=torch.Generator().manual_seed(10_000 + rep), dtype=torch.float64)
        boot = paired.Bootstrap(200, replicates=400, seed=rep)
        c = paired.compare(boot.evaluate(nll, 1.1 * z + 0.1), boot.evaluate(nll, z))
        covered += c["lo"] <= truth <= c["hi"]
        widths.append(c["hi"] - c["lo"])
    print(f"coverage {covered / 200:.3f} of the true difference {truth} (mean width {np.mean(widths):.4f})")
    assert 0.93 <= covered / 200 <= 0.97


class _Same(bench.Peer):
    """A sampler identical to the reference: the same solver, given the same budget."""
    library, label, counterpart = "test", "same as reference", ""

    def sample(self, process, score, x_T, *, steps=None, tol=None, seed=0, offset=0):
        sol = sds.sample(process, score, sds.EulerMaruyama(), x_T=x_T, steps=steps, seed=seed,
                         sample_offset=offset)
        return sol.y, int(sol.stats.nfe)


def test_a_sampler_identical_to_the_reference_is_not_resolved_never_a_speedup(tmp_path, monkeypatch):
    """Identical work timed on a clock that every call advances alike: a speed-up can come from
    nothing but the analysis (on the wall clock, a change of the machine's load between two rows'
    timed batches can make one row's slowest batch beat the other's fastest)."""
    clock = iter(range(10**9))
    monkeypatch.setattr(runner.time, "perf_counter", lambda: 1e-3 * next(clock))
    problem = bench.mixture_problem(bench.ring8(), "ring8", reference_n=1000)
    entries = [runner.Entry(sds.EulerMaruyama(), nfe=40, reference=True), runner.Entry(_Same(), nfe=40),
               runner.Entry(sds.Euler(), nfe=5)]
    res = runner.run(problem, entries, n=150, batch_size=150, repeats=5, bootstrap=200, progress=False)
    same = res["rows"][1]
    assert same["metrics"] == res["rows"][0]["metrics"]  # the very same samples
    paths = report.write(res, tmp_path)
    a = res["analysis"]
    for name, c in a["vs_reference"][1].items():
        assert c["diff"] == 0.0 and not c["resolved"] and c["status"] == "not resolved", name
    entry = next(e for e in a["reach"] if e["sampler"] == "same as reference")
    assert not entry["reached"] and "not resolved" in entry["status"]
    md = paths["md"].read_text()
    line = next(l for l in md.split("## NFE to get within 10% of the reference")[1].splitlines()
                if l.startswith("| same as reference |"))
    assert "not resolved at this n" in line and "x |" not in line  # no speed-up column filled
    assert "sw [interval]" in md and "[" in md.split("same as reference @40")[1].split("\n")[0]


def test_digits_features_refuse_28x28_images_naming_the_fitting_networks():
    with pytest.raises(FeatureMismatch) as e:
        check_fits(DigitsClassifierFeatures, (1, 28, 28), (-1.0, 1.0))
    msg = str(e.value)
    assert "MNIST classifier" in msg and "--inception" in msg and "28x28" in msg
    with pytest.raises(FeatureMismatch):
        check_fits(DigitsClassifierFeatures, (3, 8, 8))
    with pytest.raises(FeatureMismatch):
        check_fits(MnistClassifierFeatures, (1, 8, 8))
    with pytest.raises(FeatureMismatch):
        check_fits(InceptionFeatures, (2, 32, 32))
    with pytest.raises(FeatureMismatch):
        check_fits(DigitsClassifierFeatures, (1, 8, 8), (1.0, 1.0))
    check_fits(DigitsClassifierFeatures, (1, 8, 8), (-1.0, 1.0))
    check_fits(InceptionFeatures, (3, 28, 28), (0.0, 1.0))


def test_bench_refuses_28x28_checkpoint_in_digits_features(tmp_path, capsys):
    data = np.random.default_rng(0).uniform(-1, 1, size=(64, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "img.npy", data)
    ckpt = tmp_path / "ckpt"
    assert main(["train", "--data", str(tmp_path / "img.npy"), "--model", "mlp", "--hidden", "16", "--depth", "1",
                 "--steps", "2", "--batch-size", "8", "--out", str(ckpt), "--quiet"]) == 0
    with pytest.raises(SystemExit) as e:
        main(["bench", "--checkpoint", str(ckpt), "--features", "digits", "--reference-images",
              str(tmp_path / "img.npy"), "--n", "8", "--out", str(tmp_path / "b")])
    msg = str(e.value)
    assert "digits classifier" in msg and "MNIST classifier" in msg and "--inception" in msg


def test_bench_on_a_2d_checkpoint_trained_from_a_npy_file(tmp_path):
    rng = np.random.default_rng(1)
    pts = np.concatenate([rng.normal([-2, 0], 0.3, (600, 2)), rng.normal([2, 1], 0.5, (400, 2))]).astype(np.float32)
    np.save(tmp_path / "pts.npy", pts)
    ckpt = tmp_path / "ckpt"
    assert main(["train", "--data", str(tmp_path / "pts.npy"), "--hidden", "32", "--depth", "1", "--steps", "150",
                 "--batch-size", "128", "--out", str(ckpt), "--quiet", "--threads", "1"]) == 0
    out = tmp_path / "bench"
    assert main(["bench", "--checkpoint", str(ckpt), "--solvers", "euler,dpmsolverpp:order=2", "--nfe", "3,20",
                 "--tolerances", "", "--reference", "eulermaruyama@60", "--peers", "none", "--n", "200",
                 "--bootstrap", "100", "--quiet", "--threads", "1", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["meta"]["quality"]["metrics"] == ["sw", "mmd", "energy"]
    for r in res["rows"]:
        for k in ("sw", "mmd", "energy"):
            lo, hi = r["intervals"][k]
            assert lo <= r["metrics"][k] <= hi or k != "sw"  # kernel estimates may sit at an interval's edge
            assert lo < hi
        assert r["timing"]["repeats"] >= 3 and r["seconds_lo"] <= r["seconds"] <= r["seconds_hi"]
        if not r["reference"]:
            assert r["grid"][0] == 1.0 and len(r["grid"]) == r["steps"] + 1
    # three Euler steps are far off; the paired comparison resolves it as worse than the reference
    e3 = next(i for i, r in enumerate(res["rows"]) if r["sampler"] == "Euler @3")
    assert res["analysis"]["vs_reference"][e3]["sw"]["status"] == "worse"
    assert (out / "pareto.png").stat().st_size > 0 and (out / "summary.md").exists()
    assert "best at 20 NFE" in (out / "summary.md").read_text()


def test_bench_on_a_user_mixture_from_json_has_exact_nll_with_intervals(tmp_path):
    spec = {"weights": [0.7, 0.3], "means": [[0.0, 0.0], [3.0, 1.0]], "variances": [0.2, [0.1, 0.3]]}
    (tmp_path / "mix.json").write_text(json.dumps(spec))
    out = tmp_path / "bench"
    assert main(["bench", "--gmm", str(tmp_path / "mix.json"), "--solvers", "dpmsolverpp:order=2", "--nfe", "4,16",
                 "--tolerances", "", "--reference", "eulermaruyama@100", "--peers", "none", "--n", "200",
                 "--reference-n", "2000", "--bootstrap", "100", "--quiet", "--threads", "1", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["meta"]["quality"]["metrics"] == ["sw", "mmd", "energy", "nll", "tv"]
    mix = bench.mixture_from_json(tmp_path / "mix.json")
    problem = bench.mixture_problem(mix, reference_n=100)
    ref = next(r for r in res["rows"] if r["reference"])
    x = runner.initial_noise(problem.process, (200, 2), 0)
    y = sds.sample(problem.process, problem.score, sds.EulerMaruyama(), x_T=x, steps=100, seed=0).y.double()
    nll = float(-mix.log_prob(y, problem.process.t_min, problem.process).mean())
    assert math.isclose(ref["metrics"]["nll"], nll, rel_tol=1e-6)  # the exact density of the user's mixture
    lo, hi = ref["intervals"]["nll"]
    assert lo < nll < hi
    assert res["floor"]["kind"] == "exact samples" and "nll_std" in res["floor"]
    md = (out / "results.md").read_text()
    assert "nll" in md and "Δsw vs reference" in md


def test_work_precision_measures_error_against_the_tight_solve_from_the_same_x_T(tmp_path):
    problem = bench.mixture_problem(bench.gmm8d(), "gmm8d", reference_n=200, metrics=["sw"])
    entries = runner.grid([sds.Euler(), sds.Dopri5()], [8, 32], [1e-2, 1e-4],
                          peers=[bench.Torchdiffeq("dopri5"), bench.Torchdiffeq("bosh3")])
    from sdesolve.bench import workprecision as wp
    res = wp.work_precision(problem, entries, n=40, reference=sds.Dopri5(1e-7, 1e-7), batch_size=40, bootstrap=50,
                            progress=False)
    err = {r["sampler"]: r["metrics"]["error"] for r in res["rows"]}
    # first order: four times the steps, at least about a quarter of the error (the uniform grid is
    # pre-asymptotic at 8 steps near t_min, where the error falls faster)
    assert err["Euler @8"] / err["Euler @32"] > 3
    assert err["Dopri5 tol=0.0001"] < err["Dopri5 tol=0.01"] / 10
    assert err["torchdiffeq dopri5 tol=0.0001"] < err["torchdiffeq dopri5 tol=0.01"]
    assert res["meta"]["work_precision"]["reference_error_estimate"] < err["Dopri5 tol=0.0001"]
    paths = wp.write(res, tmp_path)
    assert "torchdiffeq bosh3" in paths["md"].read_text() and paths["png"].stat().st_size > 0
    with pytest.raises(ValueError, match="stochastic"):
        wp.work_precision(problem, [runner.Entry(sds.EulerMaruyama(), nfe=4)], n=4, reference=sds.Dopri5(1e-6, 1e-6))


def test_rows_take_any_solver_and_any_schedule_function_or_grid_tensor():
    problem = bench.mixture_problem(bench.ring8(), "ring8", reference_n=300, metrics=["sw", "nll"])
    grid = torch.tensor([1.0, 0.6, 0.3, 0.1, 0.03, 1e-3], dtype=torch.float64)
    entries = [runner.Entry(sds.Heun(), schedule=grid), runner.Entry(sds.DPMSolverPP(order=2), nfe=6,
                                                                      schedule=sds.schedules.karras(7.0))]
    res = runner.run(problem, entries, n=60, bootstrap=20, progress=False, log=lambda s: None)
    heun, dpm = res["rows"]
    assert heun["grid"] == grid.tolist() and heun["steps"] is None and heun["sampler"] == "Heun [grid of 5 steps]"
    assert heun["nfe"] == sds.sample(problem.process, problem.score, sds.Heun(), shape=(2, 2), schedule=grid,
                                     seed=0).stats.nfe
    assert dpm["schedule"] == "karras(rho=7.0)" and len(dpm["grid"]) == dpm["steps"] + 1 and dpm["nfe"] <= 6
    assert dpm["grid"] == [float(f"{t:.6g}") for t in sds.schedules.karras(7.0)(problem.process, dpm["steps"]).tolist()]
