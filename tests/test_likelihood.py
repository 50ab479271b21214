"""Likelihoods by the probability-flow ODE against closed forms, a peer, and themselves.

* Gaussian mixtures (exact scores) under VP, subVP and VE in 2-D and 8-D: the exact-trace
  log-likelihood against the mixture's exact log p_{t_min}(x), once the prior's mismatch at T
  (the process's N(0, prior_std^2) against the exact p_T) is accounted for; its size is printed.
* Hutchinson: on a fixed grid the estimate is exactly v^T M v + (the exact-trace value - tr M)
  with M the solver's quadrature of the drift's Jacobian along the trajectory; over many probes
  its mean and variance match 2 sum_{i != j} M_ij^2 / P (Rademacher) and 2 ||M||_F^2 / P
  (Gaussian).
* k-diffusion's ``log_likelihood`` on the same probe, in its sigma parametrization.
* Finite-difference gradients, float64; bits/dim against a Gaussian's closed form; clear errors.

Run with ``-s`` to see the figures.
"""
from __future__ import annotations

import math

import pytest
import torch

import sdesolve as sds
from sdesolve.likelihood import (DEQUANTIZATION_STEP, PROBE_STEP, ExactTrace, Hutchinson, bits_per_dim,
                                 dequantize, log_likelihood, pixel_levels)
from sdesolve.noise import Noise, streams

from peers import kdiffusion_sampling

F64 = torch.float64


def _gm2():
    cov = torch.tensor([[0.20, 0.08], [0.08, 0.10]], dtype=F64)
    covs = torch.stack([0.05 * torch.eye(2, dtype=F64), cov, 0.1 * torch.eye(2, dtype=F64)])
    return sds.GaussianMixture([0.3, 0.5, 0.2], [[-1.0, 0.5], [1.0, 1.0], [0.5, -1.0]], covs)


def _gm8():
    g = torch.Generator().manual_seed(8)
    means = 1.5 * torch.randn(4, 8, generator=g, dtype=F64)
    variances = 0.05 + 0.3 * torch.rand(4, 8, generator=g, dtype=F64)
    return sds.GaussianMixture([0.1, 0.2, 0.3, 0.4], means, variances)


MIXTURES = {2: _gm2, 8: _gm8}
PROCESSES = {"vp": sds.VPSDE, "subvp": sds.SubVPSDE, "ve": sds.VESDE}


def _dopri5(tol):
    return dict(solver=sds.Dopri5(tol, tol))


def _exact_check(process, gm, x, **kw):
    """(errors, prior mismatch, result): per-sample |corrected logp - exact log p_{t_min}(x)|."""
    res = log_likelihood(process, gm.score(process), x, trace=ExactTrace(), **kw)
    exact_T = gm.log_prob(res.z, process.T, process)
    mismatch = res.prior_logp - exact_T
    corrected = res.logp - mismatch
    exact = gm.log_prob(x, process.t_min, process)
    return (corrected - exact).abs(), mismatch, res


# --- exact trace against the mixtures' exact densities ------------------------------------------
@pytest.mark.parametrize("dim", [2, 8])
@pytest.mark.parametrize("name", list(PROCESSES))
def test_exact_trace_matches_mixture_density(name, dim):
    process, gm = PROCESSES[name](), MIXTURES[dim]()
    x = gm.sample(12, torch.Generator().manual_seed(dim), dtype=F64)
    err, mismatch, res = _exact_check(process, gm, x, **_dopri5(1e-6))
    print(f"\n{name} {dim}-D Dopri5(1e-6): MAE {err.mean():.2e} nats (max {err.max():.2e}), "
          f"prior mismatch log N(z) - log p_T(z): mean {mismatch.mean():+.2e}, |.| max {mismatch.abs().max():.2e}, "
          f"nfe {res.nfe}")
    assert err.mean() < 2e-3
    # the returned logp keeps the prior's mismatch: it is log N(z) + delta, not the corrected value
    assert torch.allclose(res.logp, res.prior_logp + res.delta_logp)
    assert torch.allclose(res.prior_logp, process.prior_logp(res.z))


def test_exact_trace_fixed_grid_converges_at_fourth_order():
    # RK4 on a uniform grid: the error of the corrected log-likelihood falls ~16x per halving
    process, gm = sds.VPSDE(), _gm2()
    x = gm.sample(8, torch.Generator().manual_seed(1), dtype=F64)
    errs = [_exact_check(process, gm, x, solver=sds.RK4(), steps=n)[0].mean().item() for n in (20, 40)]
    print(f"\nRK4 VP 2-D: MAE {errs[0]:.2e} (20 steps), {errs[1]:.2e} (40 steps), ratio {errs[0] / errs[1]:.1f}")
    assert 8.0 < errs[0] / errs[1] < 32.0  # order 4 within a band: 2^3 .. 2^5


@pytest.mark.slow
@pytest.mark.parametrize("dim", [2, 8])
@pytest.mark.parametrize("name", list(PROCESSES))
def test_error_against_tolerance(name, dim):
    process, gm = PROCESSES[name](), MIXTURES[dim]()
    x = gm.sample(64, torch.Generator().manual_seed(10 + dim), dtype=F64)
    errs = {}
    for tol in (1e-3, 1e-4, 1e-5, 1e-6):
        err, mismatch, res = _exact_check(process, gm, x, **_dopri5(tol))
        errs[tol] = err.mean().item()
        print(f"\n{name} {dim}-D tol {tol:.0e}: MAE {errs[tol]:.2e} nats, max {err.max():.2e}, nfe {res.nfe}, "
              f"prior mismatch |.| mean {mismatch.abs().mean():.2e}")
    assert errs[1e-6] < 2e-3
    assert errs[1e-6] < errs[1e-3]


def test_any_data_shape():
    # a 4-D mixture seen as (B, 1, 2, 2) images gives the same likelihood as flat (B, 4) data
    g = torch.Generator().manual_seed(4)
    gm = sds.GaussianMixture([0.5, 0.5], torch.randn(2, 4, generator=g, dtype=F64), [0.2, 0.3])
    process = sds.VPSDE()
    flat = gm.score(process)
    x = gm.sample(6, g, dtype=F64)
    img_score = lambda y, t: flat(y.reshape(-1, 4), t).reshape(y.shape)
    kw = dict(solver=sds.RK4(), steps=30, seed=3)
    for trace in (ExactTrace(), Hutchinson(probes=2)):
        a = log_likelihood(process, flat, x, trace=trace, **kw)
        b = log_likelihood(process, img_score, x.reshape(6, 1, 2, 2), trace=trace, **kw)
        assert b.z.shape == (6, 1, 2, 2)
        torch.testing.assert_close(b.logp, a.logp, rtol=0, atol=1e-12)


# --- Hutchinson ----------------------------------------------------------------------------------
def _jacobian_quadrature(process, score, x, grid):
    """M (B, D, D): RK4's quadrature of the drift's Jacobian along the trajectory of x on
    ``grid``, the same stages at which log_likelihood evaluates the trace."""
    pf = process.probability_flow(score)
    B, D = x.shape

    def field(t, y):
        xs = y[:, :D]
        jac = torch.func.vmap(torch.func.jacrev(lambda xi, ti: pf.drift(ti[None], xi[None])[0]))(xs, t)
        return torch.cat([pf.drift(t, xs), jac.reshape(B, D * D)], 1)

    y0 = torch.cat([x, torch.zeros(B, D * D, dtype=x.dtype)], 1)
    y = sds.solve(sds.ODE(field), y0, None, None, sds.RK4(), schedule=grid, seed=0).y
    return y[:, D:].reshape(B, D, D)


def _var_log_sample_variance(e: torch.Tensor) -> float:
    """Delta-method variance of log(sample variance): (m4 / s^4 - (n - 3) / (n - 1)) / n."""
    n = e.numel()
    c = e - e.mean()
    s2 = c.pow(2).mean()
    return float((c.pow(4).mean() / s2**2 - (n - 3) / (n - 1)) / n)


@pytest.fixture(scope="module")
def hutchinson_case():
    process, gm = sds.VPSDE(), _gm8()
    x0 = gm.sample(1, torch.Generator().manual_seed(5), dtype=F64)
    steps = 24
    grid = torch.linspace(process.t_min, process.T, steps + 1, dtype=F64)
    kw = dict(solver=sds.RK4(), steps=steps)
    exact = log_likelihood(process, gm.score(process), x0, trace=ExactTrace(), **kw).logp[0].item()
    M = _jacobian_quadrature(process, gm.score(process), x0, grid)[0]
    M = 0.5 * (M + M.T)  # the drift's Jacobian is symmetric (a Hessian plus f I); symmetrise rounding
    return process, gm, x0, kw, exact, M


def test_hutchinson_is_the_quadratic_form_of_its_probes(hutchinson_case):
    # on a fixed grid the trajectory does not depend on the probes, so the estimate is exactly
    # exact - tr M + v^T M v (P = 1) or the mean over probes: a deterministic identity
    process, gm, x0, kw, exact, M = hutchinson_case
    n = 16
    x = x0.expand(n, -1).clone()
    for trace in (Hutchinson(probes=1), Hutchinson(probes=3, noise="gaussian")):
        res = log_likelihood(process, gm.score(process), x, trace=trace, seed=11, **kw)
        v = trace.draw(Noise(streams(11, n)).at(PROBE_STEP), x)  # (P, n, D)
        quad = torch.einsum("pbi,ij,pbj->pb", v, M, v).mean(0)
        torch.testing.assert_close(res.logp, exact - torch.trace(M) + quad, rtol=0, atol=1e-9)
    assert (v.mean(0).abs() > 0).all()  # the probes differ between samples


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_unbiased_with_variance_over_probes(hutchinson_case, noise):
    process, gm, x0, kw, exact, M = hutchinson_case
    offdiag = M.pow(2).sum() - M.diagonal().pow(2).sum()
    var1 = float(2 * (offdiag if noise == "rademacher" else M.pow(2).sum()))
    n = 2000
    x = x0.expand(n, -1).clone()
    est = {}
    for P in (1, 4):
        res = log_likelihood(process, gm.score(process), x, trace=Hutchinson(probes=P, noise=noise), seed=100 + P, **kw)
        e = res.logp
        est[P] = e
        se = math.sqrt(float(e.var()) / n)
        print(f"\n{noise} P={P}: mean - exact {float(e.mean()) - exact:+.4f} (SE {se:.4f}), "
              f"variance {float(e.var()):.4f} (theory {var1 / P:.4f})")
        # the mean is within 3 standard errors of the exact-trace value
        assert abs(float(e.mean()) - exact) < 3 * se
        # the variance matches 2 sum M_ij^2 / P: log s^2 is ~normal with the delta-method variance
        # (which uses the sample's own kurtosis); 4 of its standard deviations
        assert abs(math.log(float(e.var()) / (var1 / P))) < 4 * math.sqrt(_var_log_sample_variance(e))
    ratio = float(est[1].var() / est[4].var())
    band = 4 * math.sqrt(_var_log_sample_variance(est[1]) + _var_log_sample_variance(est[4]))
    print(f"{noise}: variance ratio P=1 / P=4 = {ratio:.3f}, band exp(+-{band:.3f}) around 4")
    assert abs(math.log(ratio / 4.0)) < band


def test_rademacher_has_lower_variance_than_gaussian(hutchinson_case):
    process, gm, x0, kw, exact, M = hutchinson_case
    n = 2000
    x = x0.expand(n, -1).clone()
    e = {noise: log_likelihood(process, gm.score(process), x, trace=Hutchinson(noise=noise), seed=7, **kw).logp
         for noise in ("rademacher", "gaussian")}
    vr, vg = float(e["rademacher"].var()), float(e["gaussian"].var())
    theory = float(1 - M.diagonal().pow(2).sum() / M.pow(2).sum())
    print(f"\nvariance per sample: Rademacher {vr:.4f}, Gaussian {vg:.4f}, ratio {vr / vg:.3f} "
          f"(theory 1 - sum M_ii^2 / ||M||_F^2 = {theory:.3f})")
    band = 4 * math.sqrt(_var_log_sample_variance(e["rademacher"]) + _var_log_sample_variance(e["gaussian"]))
    assert math.log(vg / vr) > band  # lower, beyond the noise of the two sample variances


def test_per_sample_probes_do_not_depend_on_the_batch():
    process, gm = sds.VESDE(), _gm2()
    x = gm.sample(6, torch.Generator().manual_seed(2), dtype=F64)
    seeds = torch.tensor([5, 9, 13, 17, 21, 25])
    kw = dict(solver=sds.RK4(), steps=20, trace=Hutchinson(probes=2))
    full = log_likelihood(process, gm.score(process), x, seed=seeds, **kw).logp
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    permuted = log_likelihood(process, gm.score(process), x[perm], seed=seeds[perm], **kw).logp
    torch.testing.assert_close(permuted, full[perm], rtol=0, atol=1e-12)
    alone = log_likelihood(process, gm.score(process), x[2:3], seed=seeds[2:3], **kw).logp
    torch.testing.assert_close(alone, full[2:3], rtol=0, atol=1e-12)


def test_adaptive_active_set_keeps_each_samples_probes():
    # a per-sample adaptive solver evaluates only unfinished samples; each sample's probes must
    # follow it: alone or in a batch (where others finish earlier or later) its result is the same
    # up to the rounding of batched against single evaluations, while another sample's probe moves
    # it by the estimator's spread (~0.1 nats); the row index it carries must not steer its steps
    process, gm = sds.VPSDE(), _gm2()
    x = torch.cat([gm.sample(5, torch.Generator().manual_seed(3), dtype=F64),
                   torch.tensor([[4.0, -4.0]], dtype=F64)])  # an outlier that needs other steps
    seeds = torch.arange(100, 106)
    kw = dict(**_dopri5(1e-6), trace=Hutchinson(noise="gaussian"))  # (2-D Rademacher has 2 outcomes)
    full = log_likelihood(process, gm.score(process), x, seed=seeds, **kw)
    steps = torch.as_tensor(full.stats.accepted)
    print(f"\naccepted steps per sample in the batch: {steps.tolist()}")
    assert steps.unique().numel() > 1  # the samples do finish at different iterations
    for b in (0, 5):
        alone = log_likelihood(process, gm.score(process), x[b:b + 1], seed=seeds[b:b + 1], **kw)
        other = log_likelihood(process, gm.score(process), x[b:b + 1], seed=seeds[(b + 1) % 6:(b + 1) % 6 + 1], **kw)
        diff = (alone.logp - full.logp[b]).abs().item()
        print(f"sample {b}: |alone - in batch| {diff:.1e}, with another sample's probe "
              f"{(other.logp - full.logp[b]).abs().item():.1e}")
        assert diff < 1e-9 * (1 + full.logp[b].abs().item())
        assert torch.equal(alone.stats.accepted, full.stats.accepted[b:b + 1])
        assert (other.logp - full.logp[b]).abs().item() > 1e-3


# --- the peer: k-diffusion ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["edm", "ve"])
def test_agrees_with_kdiffusion(name):
    """k-diffusion integrates dx/dsigma = (x - D(x, sigma)) / sigma from sigma_min to sigma_max,
    with the prior N(0, sigma_max^2) and a Rademacher probe. The EDM process is that ODE with
    t = sigma; for VE, sigma(t) = sigma_min (sigma_max/sigma_min)^t makes dx/dt = (dsigma/dt)
    dx/dsigma the same ODE in another clock (a change of the integration variable leaves both
    the flow and int div dt unchanged). The denoiser is D(x, sigma) = x + sigma^2 s(x, t(sigma))."""
    K = kdiffusion_sampling()
    process = sds.EDM() if name == "edm" else sds.VESDE()
    gm = _gm2()
    x = gm.sample(8, torch.Generator().manual_seed(6), dtype=F64)
    s_min, s_max = (float(process.sigma(process.t_min)), float(process.sigma(process.T)))

    def denoiser(xs, sigma):
        t = process.t_of_sigma_edm(sigma.to(F64))
        return xs + sigma[:, None] ** 2 * gm.score_at(xs, t, process)

    torch.manual_seed(0)
    ll_kd, info = K.log_likelihood(denoiser, x, s_min, s_max, atol=1e-7, rtol=1e-7)
    torch.manual_seed(0)
    v = torch.randint_like(x, 2) * 2 - 1  # the probe k-diffusion drew

    class SameProbe(Hutchinson):
        def draw(self, noise, like):
            return v[None]

    ours = log_likelihood(process, gm.score(process), x, trace=SameProbe(), **_dopri5(1e-7))
    diff = (ours.logp - ll_kd).abs()
    print(f"\n{name}: |ours - k-diffusion| max {diff.max():.2e} nats (nfe ours {ours.nfe}, k-diffusion "
          f"{info['fevals']})")
    # both at rtol = atol = 1e-7 on |logp| ~ 1..10 over O(100) steps: global errors ~ 1e-5 each
    assert diff.max() < 1e-4


# --- gradients -----------------------------------------------------------------------------------
class _TinyScore(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))

    def forward(self, x, t):
        return -x + 0.5 * self.net(torch.cat([x, t[:, None].to(x.dtype)], 1))


@pytest.mark.parametrize("trace", [ExactTrace(), Hutchinson(probes=2, noise="gaussian")], ids=["exact", "hutchinson"])
def test_gradient_matches_finite_differences(trace):
    torch.manual_seed(0)
    model = _TinyScore().double()
    process = sds.VPSDE()
    x = torch.randn(3, 2, dtype=F64, requires_grad=True)
    kw = dict(solver=sds.RK4(), steps=6, trace=trace, seed=4)

    def loss():
        return log_likelihood(process, model, x, **kw).logp.sum()

    params = list(model.parameters())
    grads = torch.autograd.grad(loss(), params + [x])
    worst = 0.0
    eps = 1e-6
    with torch.no_grad():
        for p, g in zip(params + [x], grads):
            flat, gflat = p.view(-1), g.reshape(-1)
            for i in range(flat.numel()):
                old = flat[i].item()
                flat[i] = old + eps
                up = loss().item()
                flat[i] = old - eps
                down = loss().item()
                flat[i] = old
                fd = (up - down) / (2 * eps)
                worst = max(worst, abs(fd - gflat[i].item()) / max(1.0, abs(fd)))
    print(f"\n{type(trace).__name__}: worst relative gradient error {worst:.2e} over "
          f"{sum(p.numel() for p in params) + x.numel()} entries")
    # central differences: truncation ~ eps^2 |f'''| ~ 1e-12, rounding ~ 1e-16 |f| / eps ~ 1e-9
    assert worst < 1e-6


# --- bits per dimension ---------------------------------------------------------------------------
def _u(seed, shape, k):
    z = Noise(streams(seed, shape[0])).at(DEQUANTIZATION_STEP).normal(torch.empty(shape, dtype=F64), draw=k)
    return 0.5 * torch.erfc(-z / math.sqrt(2.0))


def test_bits_per_dim_bookkeeping():
    # each draw is -(log p_model(y_k)) / (D ln 2) + offset, with y_k = lo + (hi - lo)(levels + u_k)/256
    process, gm = sds.VPSDE(), _gm2()
    levels = torch.tensor([[0, 255], [128, 7], [64, 200]], dtype=torch.uint8)
    for data_range, offset in (((-1.0, 1.0), 7.0), ((0.0, 1.0), 8.0)):
        kw = dict(solver=sds.RK4(), steps=10, trace=Hutchinson())
        res = bits_per_dim(process, gm.score(process), levels, data_range=data_range, dequantizations=3, seed=1,
                           dtype=F64, **kw)
        assert res.offset == pytest.approx(offset)
        for k in range(3):
            y = dequantize(levels, _u(1, levels.shape, k), data_range, dtype=F64)
            lo, hi = data_range
            assert ((y >= lo) & (y < hi)).all()
            ll = log_likelihood(process, gm.score(process), y, noise=Noise(streams(1, 3)).at(PROBE_STEP + k), **kw)
            torch.testing.assert_close(res.draws[k], -ll.logp / (2 * math.log(2)) + offset, rtol=0, atol=1e-12)
        torch.testing.assert_close(res.dequantization_var, res.draws.var(0))
        assert res.draws.var(0).min() > 0  # the draws differ


def test_bits_per_dim_against_a_gaussian_closed_form():
    # model N(0, s^2 I) on 12 dims (exact score, EDM: prior mismatch ~ D s^2 / (2 sigma_max^2)
    # ~ 2e-4 nats and t_min noise 4e-6 in variance, both far below the tolerance);
    # E_u[-log N(y; 0, s^2)] = D/2 log(2 pi s^2) + sum_i ((lo + a (k_i + 1/2))^2 + a^2 / 12) / (2 s^2)
    s, D = 0.6, 12
    gm = sds.GaussianMixture([1.0], torch.zeros(1, D, dtype=F64), [s * s])
    process = sds.EDM()
    levels = torch.randint(0, 256, (4, 3, 2, 2), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    flat = gm.score(process)
    score = lambda y, t: flat(y.reshape(-1, D), t).reshape(y.shape)
    K = 6
    res = bits_per_dim(process, score, levels, data_range=(-1, 1), dequantizations=K, seed=2, dtype=F64,
                       trace=ExactTrace(), **_dopri5(1e-6))
    a = 2.0 / 256
    centre = -1.0 + a * (levels.to(F64).reshape(4, D) + 0.5)
    nll = 0.5 * D * math.log(2 * math.pi * s * s) + (centre.pow(2) + a * a / 12).sum(1) / (2 * s * s)
    expect = nll / (D * math.log(2)) + 7.0
    se = (res.dequantization_var / K).sqrt()
    print(f"\nbpd {res.bpd.tolist()} vs closed form {expect.tolist()}; dequantization SE {se.tolist()}")
    assert ((res.bpd - expect).abs() < 4 * se + 1e-4).all()
    # Jensen: the dequantized bound is above the exact discrete bits/dim of the same model
    norm = torch.distributions.Normal(0.0, s)
    lo_edge = -1.0 + a * levels.to(F64).reshape(4, D)
    discrete = -torch.log(norm.cdf(lo_edge + a) - norm.cdf(lo_edge)).sum(1) / (D * math.log(2))
    assert (res.bpd > discrete - 4 * se).all()


def test_pixel_levels_and_their_errors():
    x = torch.tensor([[0, 255], [3, 4]], dtype=torch.uint8)
    assert torch.equal(pixel_levels(x), x.long())
    assert torch.equal(pixel_levels(x.float() / 255 * 2 - 1, (-1, 1)), x.long())
    assert torch.equal(pixel_levels(x.float() / 255, (0, 1)), x.long())
    with pytest.raises(ValueError, match=r"outside their declared data_range .*samples \[1\]"):
        pixel_levels(torch.tensor([[0.0, 0.5], [0.2, 1.5]]), (0, 1))
    with pytest.raises(ValueError, match="not 8-bit.*samples \\[0\\]"):
        pixel_levels(torch.tensor([[0.3, 0.0], [0.0, 0.0]]), (0, 1))
    with pytest.raises(ValueError, match=r"\[0, 255\].*samples \[0\]"):
        pixel_levels(torch.tensor([[300, 0], [1, 2]]))
    with pytest.raises(ValueError, match="shape"):
        pixel_levels(torch.tensor([1, 2], dtype=torch.uint8))


def test_clear_errors():
    process, gm = sds.VPSDE(), _gm2()
    x = gm.sample(3, torch.Generator().manual_seed(0), dtype=F64)
    kw = dict(solver=sds.RK4(), steps=4)

    def nan_gradient(y, t):  # finite values, NaN derivative: d sqrt(u)/du at u = 0 times du/dy = 0
        return -y + 0.0 * torch.sqrt(y * y - y * y)

    for trace in (ExactTrace(), Hutchinson()):
        with pytest.raises(sds.NonFiniteError, match="divergence"):
            log_likelihood(process, nan_gradient, x, trace=trace, **kw)
        with pytest.raises(sds.NonFiniteError, match="divergence"):
            log_likelihood(process, nan_gradient, x, trace=trace, seed=0)  # the default adaptive Dopri5
    with pytest.raises(ValueError, match="returned shape"):
        log_likelihood(process, lambda y, t: y[:, :1], x, trace=ExactTrace(), **kw)
    with pytest.raises(ValueError, match="3 per-sample seeds for a batch of 2|2 samples"):
        log_likelihood(process, gm.score(process), x[:2], seed=torch.arange(3), **kw)
    with pytest.raises(TypeError, match="floating point"):
        log_likelihood(process, gm.score(process), x.long(), **kw)
    with pytest.raises(ValueError, match="steps= or schedule="):
        log_likelihood(process, gm.score(process), x, solver=sds.RK4())
    with pytest.raises(ValueError, match="t_min"):
        log_likelihood(process, gm.score(process), x, t_min=0.5, T=0.2, **kw)
    with pytest.raises(ValueError, match="noise must be one of"):
        Hutchinson(noise="uniform")
    with pytest.raises(ValueError, match="probes"):
        Hutchinson(probes=0)
