"""Conditional flow matching: the loss's target, OT coupling, logit-normal times, the CLI; and
(slow) training to quality: a rectified flow on a 2-D mixture from .npy, OT-CFM against CFM in
adaptive-solver evaluations, and the digits recipe against the VP model's FD.

Run with ``-s`` to see the figures.
"""
from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import sdesolve as sds
from sdesolve import cli
from sdesolve.train import (ConditionalFlowMatching, OTConditionalFlowMatching, build, describe, load_trained,
                            ot_permutation)
from sdesolve.train.data import GMM2D, gmm2d

F64 = torch.float64


def test_ot_permutation_is_the_exact_assignment():
    g = torch.Generator().manual_seed(0)
    x0, z = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    perm = ot_permutation(x0, z)
    cost = lambda p: float(((x0 - z[list(p)]) ** 2).sum())  # noqa: E731
    best = min(cost(p) for p in itertools.permutations(range(6)))
    assert sorted(perm.tolist()) == list(range(6))
    assert cost(perm.tolist()) == pytest.approx(best, rel=1e-12)
    # the OT loss draws the noise of a batch and pairs it by that assignment
    loss = OTConditionalFlowMatching()
    x0 = gmm2d(256, torch.Generator().manual_seed(1))
    t, zc = loss.draw(x0, torch.Generator().manual_seed(2))
    _, zi = ConditionalFlowMatching().draw(x0, torch.Generator().manual_seed(2))
    assert torch.equal(torch.sort(zc, 0).values, torch.sort(zi, 0).values)  # the same noise, re-paired
    assert ((x0 - zc) ** 2).sum() < ((x0 - zi) ** 2).sum()


@pytest.mark.parametrize("process", [sds.RectifiedFlow(), sds.CosinePath()], ids=lambda p: type(p).__name__)
def test_cfm_target_is_the_conditional_velocity(process):
    """A zero model's loss is |alpha' x0 + sigma' z|^2 / d; and the exact marginal velocity of a
    mixture minimizes the loss: shifting it by c raises the loss by c^2 up to the cross term,
    whose mean is 0 because E[alpha' x0 + sigma' z | x_t] is that velocity (5 standard errors)."""
    gm = sds.GaussianMixture([0.3, 0.7], [[-1.5, 0.0], [1.0, 1.0]], [0.2, 0.3])
    loss = ConditionalFlowMatching(process)
    x0 = gm.sample(20000, torch.Generator().manual_seed(3), dtype=F64)
    t, z = loss.draw(x0, torch.Generator().manual_seed(4))
    zero = loss.per_sample(lambda x, lab: torch.zeros_like(x), x0, t, z)
    da, ds = process.d_marginal(t)
    assert torch.allclose(zero, (da[:, None] * x0 + ds[:, None] * z).pow(2).mean(1), rtol=1e-12)
    exact = gm.velocity(process)
    model = lambda x, lab: exact.velocity_of(x, lab, process)  # noqa: E731  (continuous label = t)
    c = 0.3
    base = loss.per_sample(model, x0, t, z)
    shifted = loss.per_sample(lambda x, lab: model(x, lab) + c, x0, t, z)
    diff = shifted - base
    se = float(diff.std() / math.sqrt(len(diff)))
    assert abs(float(diff.mean()) - c * c) < 5 * se, (float(diff.mean()), c * c, se)


def test_logit_normal_times():
    p = sds.RectifiedFlow()
    loss = ConditionalFlowMatching(p, logit_normal_loc=0.5, logit_normal_scale=0.8)
    t = loss.times(40000, torch.Generator().manual_seed(0))
    assert t.dtype == F64 and float(t.min()) >= p.t_min and float(t.max()) <= p.T
    u = torch.logit(t.clamp(2 * p.t_min, 1 - 2 * (1 - p.T)))
    n = len(u)
    assert abs(float(u.mean()) - 0.5) < 5 * 0.8 / math.sqrt(n)
    # the std's standard error for a normal sample: sigma / sqrt(2n)
    assert abs(float(u.std()) - 0.8) < 5 * 0.8 / math.sqrt(2 * n) + 1e-3
    uniform = ConditionalFlowMatching(p).times(40000, torch.Generator().manual_seed(0))
    assert abs(float(uniform.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / 40000)
    with pytest.raises(ValueError, match="logit_normal_scale"):
        ConditionalFlowMatching(p, logit_normal_loc=0.0, logit_normal_scale=0.0)


def test_describe_build_round_trip():
    for loss in (ConditionalFlowMatching(), OTConditionalFlowMatching(sds.CosinePath(), logit_normal_loc=0.0),
                 ConditionalFlowMatching(sds.TimeShift(sds.RectifiedFlow(), 3.0))):
        again = build(describe(loss))
        assert type(again) is type(loss) and repr(again.process) == repr(loss.process)
        assert again.logit_normal_loc == loss.logit_normal_loc


@pytest.mark.parametrize("loss,process", [("cfm", None), ("ot-cfm", "cosine")])
def test_cli_trains_a_velocity_model(tmp_path, loss, process):
    args = ["train", "--data", "gmm2d", "--n-data", "500", "--loss", loss, "--steps", "3", "--batch-size", "16",
            "--out", str(tmp_path / "run"), "--quiet"] + (["--process", process] if process else [])
    cli.main(args)
    tm = load_trained(tmp_path / "run")
    assert tm.score().kind == "velocity"
    assert isinstance(tm.process, sds.CosinePath if process else sds.RectifiedFlow)
    assert type(tm.loss) is (OTConditionalFlowMatching if loss == "ot-cfm" else ConditionalFlowMatching)
    cli.main(["sample", "--checkpoint", str(tmp_path / "run"), "--solver", "dpmsolverpp", "--nfe", "4", "--n", "6",
              "--out", str(tmp_path / "s.npy")])
    assert np.isfinite(np.load(tmp_path / "s.npy")).all()
    with pytest.raises(SystemExit, match="velocity"):
        cli.main(["train", "--data", "gmm2d", "--loss", "cfm", "--param", "eps", "--steps", "1",
                  "--out", str(tmp_path / "bad"), "--quiet"])


def test_bench_on_a_flow_checkpoint_with_flowmatch_peer_rows(tmp_path):
    """``sdesolve bench`` on a flow checkpoint (trained through the CLI from a .npy file) with
    diffusers' FlowMatch Euler and Heun schedulers as peer rows: each peer row sits beside its
    sdesolve counterpart with the same NFE and, from the same x_T on the same grid, the same samples
    (so the same metrics, to float32 rounding)."""
    pytest.importorskip("diffusers")
    import json

    np.save(tmp_path / "pts.npy", gmm2d(2000, torch.Generator().manual_seed(1)).numpy())
    ckpt = tmp_path / "flow"
    cli.main(["train", "--data", str(tmp_path / "pts.npy"), "--model", "mlp", "--hidden", "32", "--depth", "1",
              "--loss", "cfm", "--steps", "30", "--batch-size", "64", "--out", str(ckpt), "--quiet", "--threads", "1"])
    out = tmp_path / "bench"
    assert cli.main(["bench", "--checkpoint", str(ckpt), "--solvers", "euler,heun", "--nfe", "4,8", "--tolerances", "",
                     "--reference", "none", "--peers", "diffusers-flowmatch-euler,diffusers-flowmatch-heun",
                     "--n", "64", "--bootstrap", "0", "--repeats", "1", "--warmup", "0", "--quiet", "--threads", "1",
                     "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    rows = {r["sampler"]: r for r in res["rows"]}
    peers = [r for r in res["rows"] if r["peer"]]
    assert {r["library"] for r in peers} == {"diffusers"} and len(peers) == 4, list(rows)
    for r in peers:
        assert r["error"] is None
        mine = next(m for m in res["rows"] if not m["peer"] and m["family"] == r["counterpart"]
                    and m["nfe_requested"] == r["nfe_requested"])
        assert mine["nfe"] == r["nfe"] and mine["x_T_sha1"] == r["x_T_sha1"]
        for k, v in r["metrics"].items():
            assert v == pytest.approx(mine["metrics"][k], rel=1e-4, abs=1e-6), (r["sampler"], k)
    assert "FlowMatchEulerDiscrete" in (out / "results.md").read_text()


# --- slow: training to quality ----------------------------------------------------------------------
def _run_cli(*args):
    subprocess.run([sys.executable, "-m", "sdesolve", *args, "--threads", "1"], check=True)


def _gmm_props(y):
    mu = torch.tensor(GMM2D["means"], dtype=F64)
    var = torch.tensor(GMM2D["variances"], dtype=F64)
    w = torch.tensor(GMM2D["weights"], dtype=F64)
    logpost = -((y[:, None] - mu[None]) ** 2).sum(-1) / (2 * var) - torch.log(var) + torch.log(w)
    return torch.bincount(logpost.argmax(1), minlength=3).double() / len(y), w


@pytest.fixture(scope="module")
def flows_2d(tmp_path_factory):
    """CFM and OT-CFM rectified flows on the same 2-D mixture (.npy), MLP, 4000 steps, batch 256."""
    d = tmp_path_factory.mktemp("flows")
    np.save(d / "gmm.npy", gmm2d(20000, torch.Generator().manual_seed(1)).numpy())
    for loss in ("cfm", "ot-cfm"):
        _run_cli("train", "--data", str(d / "gmm.npy"), "--model", "mlp", "--loss", loss, "--steps", "4000",
                 "--batch-size", "256", "--out", str(d / loss), "--quiet")
    return {loss: load_trained(d / loss) for loss in ("cfm", "ot-cfm")}


def _sw_ratio(y, n, reps=20):
    from sdesolve.metrics import sliced_wasserstein, two_sample_floor
    sw = np.mean([sliced_wasserstein(y, gmm2d(n, torch.Generator().manual_seed(10_000 + r)), 256,
                                     torch.Generator().manual_seed(r)) for r in range(reps)])
    return sw, two_sample_floor(gmm2d, n, repeats=reps)


@pytest.mark.slow
def test_rectified_flow_from_npy_matches_mixture(flows_2d):
    """4000 Heun(50 steps) samples: proportions within 0.03 of the weights (3.8 binomial SE) and
    the sliced Wasserstein distance within 2x the two-exact-sets floor (both averaged over 20)."""
    tm, n = flows_2d["cfm"], 4000
    with torch.no_grad():
        y = sds.sample(tm.process, tm.score(), sds.Heun(), shape=(n, 2), steps=50, seed=0).y
    y = tm.to_data(y).double()
    props, w = _gmm_props(y)
    assert (props - w).abs().max() < 0.03, props
    sw, floor = _sw_ratio(y, n)
    print(f"\nCFM 2-D: proportions {props.tolist()}; SW {sw:.4f}, floor {floor:.4f}, ratio {sw / floor:.2f}")
    assert sw < 2 * floor


@pytest.mark.slow
def test_ot_cfm_needs_fewer_adaptive_steps(flows_2d):
    """Dopri5 at rtol = atol = 1e-3 on both flows from the same x_T: OT-CFM makes fewer model
    evaluations per sample, at the same quality (both within 2x the SW floor)."""
    n, out = 4000, {}
    for loss, tm in flows_2d.items():
        with torch.no_grad():
            sol = sds.sample(tm.process, tm.score(), sds.Dopri5(1e-3, 1e-3), shape=(n, 2), seed=0)
        y = tm.to_data(sol.y).double()
        sw, floor = _sw_ratio(y, n)
        out[loss] = (sol.stats.sample_nfe / n, sw / floor)
        print(f"\n{loss}: Dopri5(1e-3) {sol.stats.sample_nfe / n:.1f} evaluations per sample, "
              f"{sol.stats.nfe} calls; SW / floor {sw / floor:.2f}")
    assert out["ot-cfm"][0] < out["cfm"][0]
    assert out["ot-cfm"][1] < 2 and out["cfm"][1] < 2


@pytest.mark.slow
def test_digits_rectified_flow_fd_within_vp(tmp_path):
    """The digits recipe (U-Net, 16 channels, 2000 steps, batch 128) trained as a rectified flow
    (CFM) and as the VP model (EDM loss): at 50 NFE (Heun, 25 steps) the flow's FD to the
    held-out split is within 1.2x the VP model's (the same seeds for both)."""
    from sdesolve.metrics import DigitsClassifierFeatures, extract_features, fd_from_features
    from sdesolve.train import load_digits

    common = ["--data", "digits", "--model", "unet", "--channels", "16", "--steps", "2000", "--batch-size", "128",
              "--seed", "0", "--quiet"]
    _run_cli("train", *common, "--loss", "cfm", "--out", str(tmp_path / "flow"))
    _run_cli("train", *common, "--process", "vp", "--loss", "edm", "--out", str(tmp_path / "vp"))
    features = DigitsClassifierFeatures()
    f_test = extract_features(features, load_digits("test")[0])
    fd = {}
    for name in ("flow", "vp"):
        tm = load_trained(tmp_path / name)
        with torch.no_grad():
            y = sds.sample(tm.process, tm.score(), sds.Heun(), shape=(1438, 1, 8, 8), steps=25, seed=0).y
        fd[name] = fd_from_features(extract_features(features, tm.to_data(y)), f_test)
    print(f"\nFD at 50 NFE: flow {fd['flow']:.2f}, VP {fd['vp']:.2f}")
    assert fd["flow"] < 1.2 * fd["vp"]
