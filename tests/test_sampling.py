"""Sampling a 2-D Gaussian mixture with unequal weights from exact scores (VP and VE).

Criteria: component proportions within binomial 4-sigma bounds, and the sliced Wasserstein
distance to an exact reference set within 1.5x the two-exact-sets floor at the same sizes.

The SW of one set of N exact samples against the reference fluctuates with a relative standard
deviation of about 0.47 (measured over 30 seeds at N = 5000; it does not shrink with N, the
mean does), so a single draw against 1.5x its
mean would fail a perfect sampler about 15% of the time. Both the sampler's SW and the floor are
therefore averaged over R = 8 independent sets of N samples (one batch of R N samples, split),
which brings the relative sd to 0.47 / sqrt(8) = 0.17: 1.5x sits three standard deviations out.
"""
import math

import pytest
import torch

import sdesolve as sds
from sdesolve.metrics import sliced_wasserstein

GM = sds.GaussianMixture([0.2, 0.5, 0.3], [[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]], [0.1, 0.3, 0.2])
R, N, M, PROJ = 8, 1000, 20000, 256
REF = GM.sample(M, torch.Generator().manual_seed(123))


def _sw(x):
    """Mean SW of the R sets of N samples in x (R N, 2) against the reference."""
    return sum(sliced_wasserstein(part, REF, PROJ, torch.Generator().manual_seed(7)) for part in x.split(N)) / R


@pytest.fixture(scope="module")
def floor():
    # what a perfect sampler scores: the same statistic on R N exact samples
    return _sw(GM.sample(R * N, torch.Generator().manual_seed(1)))


@pytest.fixture(scope="module")
def classified_weights():
    # proportions that exact samples are assigned by the posterior argmax (components overlap a little)
    x = GM.sample(400_000, torch.Generator().manual_seed(9))
    return torch.bincount(GM.posterior(x).argmax(1), minlength=3).double() / len(x)


def _check(x, floor, w):
    assert torch.isfinite(x).all()
    props = torch.bincount(GM.posterior(x).argmax(1), minlength=3).double() / len(x)
    bound = 4 * torch.sqrt(w * (1 - w) / len(x))
    assert ((props - w).abs() <= bound).all(), (props.tolist(), w.tolist())
    sw = _sw(x)
    assert sw < 1.5 * floor, (sw, floor)
    return props, sw


# VE with score_sde's sigma_max = 50: at sigma_max = 10 the prior N(0, 10^2) differs enough from
# p_T (the data spread is ~2.5) for the deterministic probability-flow map to carry the mismatch
# into the samples (SW 1.6x the floor with RK4 at 100 and at 200 steps alike)
PROCESSES = [sds.VPSDE(), sds.VESDE(sigma_min=0.01, sigma_max=50.0)]
SAMPLERS = [
    (sds.EulerMaruyama(), 1000),
    (sds.ReverseDiffusion(), 1000),
    (sds.Ancestral(), 1000),
    (sds.PredictorCorrector(sds.ReverseDiffusion(), sds.Langevin(snr=0.16, n_steps=1, expected_norms=True)), 500),
    (sds.RK4(), 100),
]


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("solver,steps", SAMPLERS, ids=lambda v: type(v).__name__ if isinstance(v, sds.Solver) else None)
def test_mixture_sampling(process, solver, steps, floor, classified_weights):
    sol = sds.sample(process, GM.score(process), solver, shape=(R * N, 2), steps=steps, seed=0)
    _check(sol.y, floor, classified_weights)
    assert sol.stats.nfe == steps * solver.nfe_per_step


def test_realized_norm_langevin_in_high_dimension():
    # score_sde's realized-norm SNR rule, per sample, keeps a 256-d Gaussian's variance: with
    # data N(0, v I), p_t = N(0, (alpha^2 v + sigma^2) I); PC sampling must end at variance v
    v, D, B = 0.25, 256, 64
    gm = sds.GaussianMixture([1.0], [[0.0] * D], [v])
    p = sds.VPSDE()
    pc = sds.PredictorCorrector(sds.ReverseDiffusion(), sds.Langevin(snr=0.16, n_steps=1, expected_norms=False))
    x = sds.sample(p, gm.score(p), pc, shape=(B, D), steps=300, seed=1, final_noise=False).y.double()
    # B*D = 16384 draws: the variance estimate has relative sd sqrt(2/16384) = 1.1%; the
    # discretisation bias of 300 steps is a few percent at t_min
    assert abs(float(x.var()) / v - 1) < 0.06


def test_batch_invariance():
    p = sds.VPSDE()
    sc = GM.score(p)
    for solver in (sds.EulerMaruyama(), sds.PredictorCorrector(sds.EulerMaruyama(), sds.Langevin(0.16, 2, expected_norms=False))):
        full = sds.sample(p, sc, solver, shape=(64, 2), steps=50, seed=5).y
        alone = sds.sample(p, sc, solver, shape=(10, 2), steps=50, seed=5, sample_offset=10).y
        seeds = sds.noise.streams(5, 64)[10:20]
        by_seed = sds.sample(p, sc, solver, shape=(10, 2), steps=50, seed=seeds).y
        assert torch.equal(full[10:20], alone) and torch.equal(full[10:20], by_seed)


# --- bad input ----------------------------------------------------------------------------------
def test_nonfinite_score_names_step_time_and_samples():
    p = sds.VPSDE()
    exact = GM.score(p)

    def bad(x, t):
        s = exact(x, t)
        s[3:5] = torch.where(t[3:5, None] < 0.55, float("nan"), s[3:5])  # grid 1, 0.9001, ..: step 5 starts at 0.5005
        return s

    with pytest.raises(sds.NonFiniteError) as e:
        sds.sample(p, bad, sds.EulerMaruyama(), shape=(8, 2), steps=10, seed=0)
    assert e.value.step == 5 and e.value.samples == [3, 4]
    assert "step 5" in str(e.value) and "t = 0.5" in str(e.value) and "[3, 4]" in str(e.value)


@pytest.mark.parametrize("first", [(31, 40), (70, 33), (64, 95)])
def test_nonfinite_first_step_across_the_checks_batches(first):
    """The loop checks finiteness in batches of steps: the first non-finite step of each sample,
    wherever it falls in a batch (a batch's first or last step, or across two), is the one
    reported, and the earliest over the samples with the samples that share it."""
    i0, i1 = first
    grid = torch.linspace(1.0, 0.0, 101, dtype=torch.float64)
    where = {0: grid[i0].item(), 1: grid[i1].item()}  # sample b turns NaN at step i_b

    def drift(t, x):
        out = -x
        for b, tb in where.items():
            out[b] = torch.where(t[b] <= tb, float("nan"), out[b])
        return out

    with pytest.raises(sds.NonFiniteError) as e:
        sds.solve(sds.ODE(drift), torch.ones(3, 2), 1.0, 0.0, sds.Euler(), steps=100)
    assert e.value.step == min(i0, i1) and e.value.samples == [0 if i0 < i1 else 1]


def test_nonfinite_first_step_at_every_position_of_a_check():
    """Every first bad step 0..69 is decoded exactly, for NaN, +Inf and -Inf, with later bad steps
    in the same and later batches of the check (which must not hide the first)."""
    steps = 70
    grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    values = [float("nan"), math.inf, -math.inf]
    starts = torch.arange(steps)  # sample b turns bad at step b and stays bad

    def drift(t, x):
        bad = t[:, None] <= grid[starts][:, None] + 1e-12  # the drift of step b, so the state after it
        out = torch.where(bad, torch.full_like(x, values[0]), -x)
        return out

    for v in values:
        values[0] = v
        run = sds.integrate.GridRun(sds.ODE(drift), sds.Euler(), torch.ones(steps, 2),
                                    sds.timeplan.plan_times(None, 1.0, 0.0, steps=steps),
                                    sds.noise.Noise.from_seed(0, steps))
        sds.integrate._loop(run.eq, sds.Euler(), run)
        assert torch.equal(run.first_bad(), starts), v


def test_inf_drift_in_user_sde():
    eq = sds.SDE(lambda t, x: torch.where(t[:, None] > 0.3, torch.full_like(x, math.inf), -x), lambda t, x: 0.1 * torch.ones_like(x))
    with pytest.raises(sds.NonFiniteError, match=r"step 3 .*samples \[0, 1\]"):
        sds.solve(eq, torch.zeros(2, 1), 0.0, 1.0, sds.EulerMaruyama(), steps=10, seed=0)


def test_shape_mismatch():
    p = sds.VPSDE()
    with pytest.raises(ValueError, match=r"returned shape \(4, 1\) for an input of shape \(4, 2\)"):
        sds.sample(p, lambda x, t: x[:, :1], sds.Euler(), shape=(4, 2), steps=3)


def test_times_outside_range_and_steps():
    p = sds.VPSDE()
    sc = GM.score(p)
    with pytest.raises(ValueError, match=r"outside \[t_min, T\]"):
        sds.sample(p, sc, sds.Euler(), shape=(4, 2), schedule=torch.tensor([1.2, 0.5, 0.01]))
    with pytest.raises(ValueError, match=r"outside \[t_min, T\]"):
        sds.solve(p.probability_flow(sc), torch.zeros(4, 2), 1.2, 0.01, sds.Euler(), steps=3)
    with pytest.raises(ValueError, match=r"outside \[t_min, T\]"):  # inner points below t_min
        sds.sample(p, sc, sds.Euler(), shape=(4, 2), schedule=torch.tensor([1.0, 1e-4, 0.0]))
    with pytest.raises(ValueError, match="integer >= 1"):
        sds.sample(p, sc, sds.Euler(), shape=(4, 2), steps=0)
    with pytest.raises(TypeError, match="integrates SDEs"):
        sds.solve(sds.ODE(lambda t, x: x), torch.zeros(2, 1), 0.0, 1.0, sds.EulerMaruyama(), steps=2)
