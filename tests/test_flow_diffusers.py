"""diffusers' flow-matching schedulers as oracles, on the same velocity model and the same x_T.

The model is a small ``UNet2DModel`` built offline (untrained, seeded; its output is a fixed
smooth function of (x, timestep), which is all an oracle test needs), read as a flow-matching
velocity model through ``from_diffusers``; both sides run in float32 from the same x_T on the
scheduler's own sigmas (``diffusers_schedule``), and agree within 1e-5 relative:

* ``FlowMatchEulerDiscreteScheduler`` (shift 1 and 3): ``Euler`` on the probability-flow ODE;
* ``FlowMatchHeunDiscreteScheduler``: ``Heun``, whose last step (to sigma = 0) diffusers takes
  with Euler (2N - 1 evaluations), so ours is Heun on the grid up to the last nonzero sigma and
  one Euler step to 0;
* ``DPMSolverMultistepScheduler`` (DPM-Solver++(2M)) and ``UniPCMultistepScheduler`` (bh2) with
  ``use_flow_sigmas=True``, ``prediction_type="flow_prediction"`` (shift 1 and 3): ``DPMSolverPP(2)``
  and ``UniPC(2)`` in the log-SNR of the linear path.

Also: dynamic shifting (``dynamic_shift``) against diffusers' own shifted sigmas.
"""
from __future__ import annotations

import pytest
import torch

import sdesolve as sds

diffusers = pytest.importorskip("diffusers")

B, TOL = 4, 1e-5


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                                 layers_per_block=1, norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()


@pytest.fixture(scope="module")
def x_T():
    return torch.randn(B, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _theirs(unet, sched, x, steps):
    sched.set_timesteps(steps)
    x = x.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x).prev_sample
    return x


def _ours(unet, sched, x, steps, solver, split_last=False):
    process, score = sds.from_diffusers(unet, sched, check=False)
    grid = sds.diffusers_schedule(sched, steps)
    eq = process.probability_flow(score)
    with torch.no_grad():
        if split_last:  # diffusers' Heun: Euler into sigma = 0
            y = sds.solve(eq, x, None, None, solver, schedule=grid[:-1]).y
            return sds.solve(eq, y, None, None, sds.Euler(), schedule=grid[-2:]).y
        return sds.solve(eq, x, None, None, solver, schedule=grid).y


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_match_euler(unet, x_T, shift):
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    process, _ = sds.from_diffusers(unet, sched, check=False)
    assert isinstance(process, sds.RectifiedFlow) and process.T == 1.0
    d = rel(_ours(unet, sched, x_T, 8, sds.Euler()), _theirs(unet, sched, x_T, 8))
    print(f"\nFlowMatchEuler shift {shift}: max rel diff {d:.2e}")
    assert d < TOL


def test_flow_match_heun(unet, x_T):
    sched = diffusers.FlowMatchHeunDiscreteScheduler(shift=3.0)
    d = rel(_ours(unet, sched, x_T, 6, sds.Heun(), split_last=True), _theirs(unet, sched, x_T, 6))
    print(f"\nFlowMatchHeun shift 3: max rel diff {d:.2e}")
    assert d < TOL


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("name", ["dpmsolver++", "unipc"])
def test_multistep_with_flow_sigmas(unet, x_T, name, shift):
    kw = dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=shift, solver_order=2)
    if name == "unipc":
        sched, solver = diffusers.UniPCMultistepScheduler(solver_type="bh2", predict_x0=True, **kw), sds.UniPC(2)
    else:
        sched, solver = diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", **kw), sds.DPMSolverPP(2)
    d = rel(_ours(unet, sched, x_T, 8, solver), _theirs(unet, sched, x_T, 8))
    print(f"\n{name} flow sigmas shift {shift}: max rel diff {d:.2e}")
    assert d < TOL


def test_from_diffusers_flow_process_and_label(unet):
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    process, score = sds.from_diffusers(unet, sched, check=False)
    assert score.kind == "velocity"
    t = torch.full((2,), 0.25, dtype=torch.float64)
    assert torch.equal(score.time_label(process, t), t * 1000)
    grid = sds.diffusers_schedule(sched, 5)
    sched.set_timesteps(5)
    assert torch.equal(grid, sched.sigmas.to(torch.float64))
    heun = diffusers.FlowMatchHeunDiscreteScheduler()
    assert sds.diffusers_schedule(heun, 5).numel() == 6
    with pytest.raises(ValueError, match="flow_prediction"):
        sds.from_diffusers(unet, diffusers.DPMSolverMultistepScheduler(use_flow_sigmas=True), check=False)


def test_dynamic_shift_matches_diffusers():
    kw = dict(base_image_seq_len=256, max_image_seq_len=4096, base_shift=0.5, max_shift=1.15)
    n = 1024
    m = (kw["max_shift"] - kw["base_shift"]) / (kw["max_image_seq_len"] - kw["base_image_seq_len"])
    mu = kw["base_shift"] + m * (n - kw["base_image_seq_len"])
    for kind in ("exponential", "linear"):
        sched = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, time_shift_type=kind, **kw)
        sched.set_timesteps(10, mu=mu)
        s = sds.dynamic_shift(n, 256, 4096, 0.5, 1.15, exponential=kind == "exponential")
        # diffusers shifts its unshifted sigmas (timesteps / 1000) by the time shift of mu
        raw = torch.linspace(1.0, 1.0 / 1000, 10, dtype=torch.float64)
        ours = sds.TimeShift(sds.RectifiedFlow(T=1.0), s).sigma(raw)
        theirs = torch.as_tensor(sched.sigmas[:-1], dtype=torch.float64)
        assert torch.allclose(ours, theirs, rtol=1e-6, atol=0), (kind, ours, theirs)
        assert torch.equal(sds.diffusers_schedule(sched, 10, mu=mu), sched.sigmas.to(torch.float64))


@pytest.mark.parametrize("second_order", [False, True])
def test_bench_peer_rows_match_their_counterparts(second_order):
    from sdesolve.bench.peers import DiffusersFlow, PeerUnavailable

    rf = sds.RectifiedFlow()
    gm = sds.GaussianMixture([0.4, 0.6], [[-1.0, 0.5], [1.0, -0.5]], [0.2, 0.1])
    peer = DiffusersFlow.heun() if second_order else DiffusersFlow.euler()
    peer.check(rf)
    with pytest.raises(PeerUnavailable, match="linear path"):
        peer.check(sds.VPSDE())
    x_T = rf.prior_sample((16, 2), torch.Generator().manual_seed(0))
    y, calls = peer.sample(rf, gm.velocity(rf), x_T, steps=6)
    ours = sds.sample(rf, gm.velocity(rf), sds.Heun() if second_order else sds.Euler(), x_T=x_T, steps=6)
    assert calls == ours.stats.nfe == (12 if second_order else 6)
    assert rel(y, ours.y) < TOL
