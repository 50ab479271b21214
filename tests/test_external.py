"""Models trained elsewhere: diffusers UNets against diffusers' own sampling loops, EDM /
k-diffusion / score_sde adapters against exact Gaussian-mixture scores, the model check, and
loading from files.

diffusers conventions, set alike on both sides (as in test_oracles.py): the scheduler's final
step goes to timestep 0 (DDIM: ``set_alpha_to_one=False``; DPM-Solver++:
``final_sigmas_type="sigma_min"``), DDIM uses "trailing" or "leading" spacing (equally spaced
timesteps, as its prev_timestep = t - N // steps assumes), no sample clipping. Our grid is
``diffusers_schedule(scheduler, steps)``: the scheduler's timesteps / (N - 1) followed by 0. The
UNet has random weights, so its eps predictions are far from unit scale and an eps-model's
sample reaches |x| ~ 1e2..1e5 through x0 = (x - sigma eps) / alpha; the comparison is the
max-abs difference relative to the largest |value| of diffusers' result (float32 on both sides:
diffusers keeps its sample in float32, measured 2e-7..3e-6), bound 1e-4.
"""

import numpy as np
import pytest
import torch

import sdesolve as sds
from sdesolve.external import (ModelCheckError, check_model, diffusers_schedule, from_diffusers, from_edm,
                               from_kdiffusion, from_score_sde, load_diffusers, load_model)
from sdesolve.train import EpsPrediction, ScorePrediction, VPrediction, X0Prediction

diffusers = pytest.importorskip("diffusers")

TOL = 1e-4


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def small_unet(seed=0, channels=1, num_class_embeds=None):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(sample_size=8, in_channels=channels, out_channels=channels,
                                 block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                                 num_class_embeds=num_class_embeds).eval()


def diffusers_loop(unet, scheduler, x_T, steps, **kw):
    """diffusers' own loop: set_timesteps, then eps = unet(x, t).sample; x = step(eps, t, x)."""
    scheduler.set_timesteps(steps)
    x = x_T.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(unet(x, t, **kw).sample, t, x).prev_sample
    return x


@pytest.fixture(scope="module")
def unet():
    return small_unet()


X_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))


# --- the process ------------------------------------------------------------------------------------
@pytest.mark.parametrize("betas", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_discrete_process_matches_alphas_cumprod(unet, betas):
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=betas)
    process, score = from_diffusers(unet, sched, check=False)
    a = sched.alphas_cumprod.to(torch.float64)
    alpha, sigma = process.marginal(process.time(torch.arange(1000, dtype=torch.float64)))
    assert float((alpha**2 - a).abs().max()) < 1e-14
    assert float((sigma**2 - (1 - a)).abs().max()) < 1e-14
    # the model receives the training timestep (a float between integers)
    seen = []
    hook = unet.register_forward_hook(lambda m, args, out: seen.append(args[1].clone()))
    try:
        score(X_T[:2], torch.tensor([0.5, 1.0], dtype=torch.float64))
    finally:
        hook.remove()
    assert torch.equal(seen[0], torch.tensor([499.5, 999.0]))


# --- against diffusers' sampling loops ------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("spacing,offset", [("trailing", 0), ("leading", 1)])
def test_ddim_reproduces_diffusers(unet, prediction_type, spacing, offset):
    ddpm = diffusers.DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    process, score = from_diffusers(unet, ddpm, check=False)
    sched = diffusers.DDIMScheduler.from_config(ddpm.config, set_alpha_to_one=False, clip_sample=False,
                                                timestep_spacing=spacing, steps_offset=offset)
    with torch.no_grad():
        ours = sds.sample(process, score, sds.DDIM(), x_T=X_T, schedule=diffusers_schedule(sched, 10)).y
        theirs = diffusers_loop(unet, sched, X_T, 10)
    assert rel(ours, theirs) < TOL


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_dpmsolverpp_reproduces_diffusers(unet, prediction_type):
    ddpm = diffusers.DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type,
                                   beta_schedule="scaled_linear")
    process, score = from_diffusers(unet, ddpm, check=False)
    sched = diffusers.DPMSolverMultistepScheduler.from_config(ddpm.config, solver_order=2, algorithm_type="dpmsolver++",
                                                              final_sigmas_type="sigma_min")
    with torch.no_grad():
        ours = sds.sample(process, score, sds.DPMSolverPP(2), x_T=X_T, schedule=diffusers_schedule(sched, 10)).y
        theirs = diffusers_loop(unet, sched, X_T, 10)
    assert rel(ours, theirs) < TOL
    assert sched.timesteps.numel() == 10  # diffusers_schedule worked on a copy; the loop set its own


def test_diffusers_schedule_does_not_touch_the_scheduler():
    sched = diffusers.DDIMScheduler(timestep_spacing="trailing")
    sched.set_timesteps(7)
    grid = diffusers_schedule(sched, 4)
    assert sched.timesteps.numel() == 7
    assert torch.allclose(grid * 999, torch.tensor([999.0, 749.0, 499.0, 249.0, 0.0], dtype=torch.float64))


def test_class_conditional_unet_gets_its_labels():
    unet = small_unet(num_class_embeds=3)
    sched = diffusers.DDPMScheduler()
    labels = torch.tensor([0, 2, 1, 2])
    _, score = from_diffusers(unet, sched, check=False, class_labels=labels)
    t = torch.full((4,), 0.3, dtype=torch.float64)
    with torch.no_grad():
        ours = score.eps_of(X_T, t, score.process)
        theirs = unet(X_T, t.float() * 999, class_labels=labels).sample
    assert torch.equal(ours, theirs)


class ExactEps(torch.nn.Module):
    """A 'UNet' (sample, timestep) -> eps, exact for GM on the scheduler's discrete process."""

    def __init__(self, process, wrap):
        super().__init__()
        self.process, self.wrap = process, wrap

    def forward(self, sample, timestep):
        t = self.process.time(timestep.to(torch.float64))
        eps = GM.score(self.process).eps_of(sample, t, self.process)
        return self.wrap(eps)


@pytest.mark.parametrize("wrap", [lambda e: e, lambda e: (e,), lambda e: type("Out", (), {"sample": e})()],
                         ids=["tensor", "tuple", "sample-attribute"])
def test_any_module_with_the_unet_call_signature(wrap):
    sched = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    exact_process = sds.DiscreteVP.from_scheduler(sched)
    process, score = from_diffusers(ExactEps(exact_process, wrap), sched)  # no config: checked at the first call
    x = _points(8)
    t = process.time(torch.tensor([0, 1, 10, 140, 500, 871, 998, 999], dtype=torch.float64))  # float32-exact labels
    got = score(x, t)
    assert score.last_check.passed and score.last_check.eps_error < 0.05
    assert torch.allclose(got, GM.score_at(x, t, process), rtol=1e-9, atol=0)


def test_unsupported_schedulers_are_refused(unet):
    with pytest.raises(ValueError, match="prediction_type 'flow_prediction'"):
        from_diffusers(unet, diffusers.DPMSolverMultistepScheduler(prediction_type="flow_prediction"), check=False)
    with pytest.raises(TypeError, match="no alphas_cumprod"):
        from_diffusers(unet, diffusers.ScoreSdeVeScheduler(), check=False)


# --- save_pretrained -> load -> sample, offline ---------------------------------------------------------
@pytest.mark.parametrize("layout", ["pipeline", "flat"])
def test_save_pretrained_load_sample_offline(unet, tmp_path, monkeypatch, layout):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    if layout == "pipeline":
        unet.save_pretrained(tmp_path / "unet")
        sched.save_pretrained(tmp_path / "scheduler")
    else:
        unet.save_pretrained(tmp_path)
        sched.save_pretrained(tmp_path)
    unet2, sched2 = load_diffusers(tmp_path)
    process, score = from_diffusers(unet2, sched2, check=False)
    p0, s0 = from_diffusers(unet, sched, check=False)
    with torch.no_grad():
        loaded = sds.sample(process, score, sds.DPMSolverPP(2), shape=(3, 1, 8, 8), steps=6, seed=5).y
        original = sds.sample(p0, s0, sds.DPMSolverPP(2), shape=(3, 1, 8, 8), steps=6, seed=5).y
    assert score.kind == "v"
    assert torch.equal(loaded, original)


def test_load_diffusers_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no UNet config.json"):
        load_diffusers(tmp_path)


# --- exact models: EDM, k-diffusion, score_sde -------------------------------------------------------------
GM = sds.GaussianMixture([0.6, 0.4], [[1.5, 0.5], [-1.0, -1.0]], [0.3, 0.2])


class ExactDenoiser(torch.nn.Module):
    """D(x, sigma) = E[x_0 | x_0 + sigma z = x] for the mixture (an EDM-style denoiser)."""

    sigma_min, sigma_max = 0.01, 40.0

    def forward(self, x, sigma):
        p = sds.EDM()
        return GM.score(p).denoised_of(x, sigma.to(torch.float64), p)


def _points(n=64, seed=0):
    return 2.0 * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("process", [None, sds.VPSDE(), sds.SubVPSDE()], ids=["EDM", "VP", "subVP"])
def test_edm_denoiser_gives_the_exact_score(process):
    p, score = from_edm(ExactDenoiser(), process, sigma_min=0.01, sigma_max=40.0, shape=(2,))
    assert isinstance(p, type(process) if process is not None else sds.EDM)
    x = _points()
    t = torch.linspace(p.t_min * 2, p.T, 64, dtype=torch.float64)
    exact = GM.score_at(x, t, p)
    assert torch.allclose(score(x, t), exact, rtol=1e-9, atol=1e-9 * float(exact.abs().max()))


def test_kdiffusion_model_brings_its_noise_range():
    p, score = from_kdiffusion(ExactDenoiser())
    assert (p.sigma_min, p.sigma_max) == (0.01, 40.0)
    x, t = _points(), torch.full((64,), 3.0, dtype=torch.float64)
    assert torch.allclose(score(x, t), GM.score_at(x, t, p), rtol=1e-9, atol=1e-12)


def _exact_model(kind, process, label):
    """A 'network' with the given parametrization and time label, exact for GM under process."""
    exact = GM.score(process)

    def time_of(lab):
        lab = lab.to(torch.float64)
        return process.t_of_sigma_edm(lab) if label is sds.labels.sigma else lab / 999

    def model(x, lab):
        t = time_of(lab)
        if kind == "v":
            a, s = (c[:, None] for c in process.marginal(t))
            return a * exact.eps_of(x, t, process) - s * exact.denoised_of(x, t, process)
        return {"eps": exact.eps_of, "x0": exact.denoised_of, "score": exact.score_of}[kind](x, t, process)
    return model


PARAM = {"eps": EpsPrediction(), "x0": X0Prediction(), "v": VPrediction(), "score": ScorePrediction()}
PROCESSES = [(sds.VPSDE(), sds.labels.discrete(1000)), (sds.VESDE(sigma_max=20.0), sds.labels.sigma),
             (sds.EDM(), sds.labels.sigma)]


@pytest.mark.parametrize("process,label", PROCESSES, ids=["VP", "VE", "EDM"])
@pytest.mark.parametrize("kind", list(PARAM))
def test_score_sde_adapter_is_exact_and_passes_the_check(process, label, kind):
    p, score = from_score_sde(_exact_model(kind, process, label), process, parametrization=PARAM[kind], label=label,
                              shape=(2,))
    assert score.last_check.passed
    x = _points()
    t = torch.linspace(max(p.t_min, 1e-3 * p.T), p.T, 64, dtype=torch.float64)
    exact = GM.score_at(x, t, p)
    assert torch.allclose(score(x, t), exact, rtol=1e-8, atol=1e-8 * float(exact.abs().max()))


# Mismatches the check must catch on the VP process: every declared kind other than the true one,
# except x0 <-> v (at t = T both output about the data mean: not distinguishable there).
MISMATCHES = [(true, declared) for true in PARAM for declared in PARAM
              if true != declared and {true, declared} != {"x0", "v"}]


@pytest.mark.parametrize("true,declared", MISMATCHES, ids=[f"{a}-as-{b}" for a, b in MISMATCHES])
def test_check_catches_a_wrong_parametrization(true, declared):
    process, label = PROCESSES[0]
    model = _exact_model(true, process, label)
    with pytest.raises(ModelCheckError, match=f"{declared}-prediction model.*check=False"):
        from_score_sde(model, process, parametrization=PARAM[declared], label=label, shape=(2,))
    # without a shape, the check runs at the first call, on that call's shape
    _, lazy = from_score_sde(model, process, parametrization=PARAM[declared], label=label)
    with pytest.raises(ModelCheckError):
        lazy(_points(4), torch.full((4,), 0.5, dtype=torch.float64))
    _, unchecked = from_score_sde(model, process, parametrization=PARAM[declared], label=label, check=False)
    unchecked(_points(4), torch.full((4,), 0.5, dtype=torch.float64))  # check=False: no error


def test_check_catches_a_wrong_input_scale():
    """A VE model (trained on x_0 + sigma z, sigma up to 20) used on VP inputs."""
    ve, vp = sds.VESDE(sigma_max=20.0), sds.VPSDE()
    model = _exact_model("eps", ve, sds.labels.sigma)
    with pytest.raises(ModelCheckError, match="off by"):
        from_score_sde(model, vp, parametrization=EpsPrediction(), label=sds.labels.sigma, shape=(2,))


def test_check_catches_shape_and_nonfinite_outputs():
    process = sds.VPSDE()
    with pytest.raises(ModelCheckError, match="shape"):
        from_score_sde(lambda x, t: x[:, :1], process, parametrization=EpsPrediction(), label=sds.labels.continuous,
                       shape=(2,))
    with pytest.raises(ModelCheckError, match="NaN/Inf at t = T"):
        from_score_sde(lambda x, t: x / (1.0 - t[:, None]), process, parametrization=EpsPrediction(),
                       label=sds.labels.continuous, shape=(2,))


def test_check_flags_an_untrained_unet(unet):
    with pytest.raises(ModelCheckError, match="eps-prediction model.*discrete\\(1000\\)"):
        from_diffusers(unet, diffusers.DDPMScheduler())
    report = check_model(from_diffusers(unet, diffusers.DDPMScheduler(), check=False)[1], sds.DiscreteVP.from_scheduler(
        diffusers.DDPMScheduler()), (1, 8, 8), raise_error=False)
    assert not report.passed and report.eps_error > 0.5 and report.batch == 8


# --- files ---------------------------------------------------------------------------------------------------
class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x, t):
        return self.lin(torch.cat([x, t[:, None].to(x.dtype)], 1))


def test_load_torchscript_and_state_dict(tmp_path):
    torch.manual_seed(0)
    net = Tiny()
    x, t = torch.randn(5, 2), torch.rand(5)
    torch.jit.save(torch.jit.script(net), tmp_path / "net.ts")
    torch.save(net.state_dict(), tmp_path / "net.pt")
    torch.save({"state_dict": net.state_dict()}, tmp_path / "wrapped.pt")
    with torch.no_grad():
        want = net(x, t)
        assert torch.equal(load_model(tmp_path / "net.ts")(x, t), want)
        assert torch.equal(load_model(tmp_path / "net.pt", Tiny)(x, t), want)
        assert torch.equal(load_model(tmp_path / "wrapped.pt", Tiny)(x, t), want)
    with pytest.raises(ValueError, match="not a TorchScript file.*constructor="):
        load_model(tmp_path / "net.pt")
    with pytest.raises(ValueError, match="does not fit"):
        load_model(tmp_path / "net.pt", lambda: torch.nn.Linear(4, 2))
    torch.save({"model": Tiny()}, tmp_path / "pickled.pt")  # a pickled module: refused by weights_only
    with pytest.raises(ValueError, match="weights-only"):
        load_model(tmp_path / "pickled.pt", Tiny)


# --- the command line -------------------------------------------------------------------------------------
def _save_pipeline(path, unet, sched):
    unet.save_pretrained(path / "unet")
    sched.save_pretrained(path / "scheduler")


def test_cli_samples_a_diffusers_folder(tmp_path, monkeypatch):
    from sdesolve import cli

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    unet, sched = small_unet(num_class_embeds=3), diffusers.DDPMScheduler(prediction_type="v_prediction")
    _save_pipeline(tmp_path / "model", unet, sched)
    known = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 8, 8)
    mask = np.zeros((1, 8, 8), dtype=bool)
    mask[:, :, :4] = True
    np.save(tmp_path / "known.npy", known)
    np.save(tmp_path / "mask.npy", mask)
    common = ["sample", "--diffusers", str(tmp_path / "model"), "--solver", "ddim", "--steps", "5", "--n", "3",
              "--seed", "2", "--no-check", "--class-label", "1"]
    assert cli.main(common + ["--out", str(tmp_path / "a.npy")]) == 0
    assert cli.main(common + ["--guidance-scale", "3", "--null-label", "0", "--out", str(tmp_path / "g.npy")]) == 0
    assert cli.main(common + ["--mask", str(tmp_path / "mask.npy"), "--known", str(tmp_path / "known.npy"),
                              "--out", str(tmp_path / "i.npy")]) == 0
    a, g, i = (np.load(tmp_path / f"{k}.npy") for k in "agi")
    assert a.shape == g.shape == i.shape == (3, 1, 8, 8)
    # the same as the library call
    process, score = from_diffusers(unet, sched, check=False, class_labels=torch.tensor(1))
    with torch.no_grad():
        lib = sds.sample(process, score, sds.DDIM(), shape=(3, 1, 8, 8), steps=5, seed=2).y
    assert np.array_equal(a, lib.numpy())
    assert np.abs(g - a).max() > 1e-3  # guidance acted
    assert np.array_equal(i[:, mask], np.broadcast_to(known[mask], (3, int(mask.sum()))))  # known pixels kept
