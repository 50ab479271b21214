"""Score matching (Hyvarinen, sliced, denoising) for score and energy models; Langevin sampling.

Closed forms: for data N(mu, Sigma) and the Gaussian model s(x) = -A (x - m) (or its energy
E = (x - m)^T A (x - m) / 2), Hyvarinen's objective -tr A + tr(A^2 (S + (xbar - m)(xbar - m)^T)) / 2
on a sample is minimised exactly at m = xbar, A = S^{-1} (S the sample covariance, 1/N), and the
population minimiser of every unbiased member of the family is (mu, Sigma^{-1}); denoising at
level sigma fits the perturbed density N(mu, Sigma + sigma^2 I), so A = (Sigma + sigma^2 I)^{-1}.
"""
import math

import pytest
import torch
from torch import nn

import sdesolve as sds
from sdesolve.langevin_sampling import langevin, noise_conditional
from sdesolve.train import GMM2D
from sdesolve.train.score_matching import Denoising, EnergyScore, Hyvarinen, Sliced, geometric_levels

D = 3
MU = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
L_ = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [-0.3, 0.4, 0.5]], dtype=torch.float64)
SIGMA = L_ @ L_.T


class GaussianScore(nn.Module):
    """s(x) = -A (x - m) with A = (B + B^T) / 2."""

    def __init__(self, m, A):
        super().__init__()
        self.m = nn.Parameter(m.clone())
        self.B = nn.Parameter(A.clone())

    def A(self):
        return 0.5 * (self.B + self.B.T)

    def forward(self, x):
        return -(x - self.m) @ self.A()


class GaussianEnergy(GaussianScore):
    def forward(self, x):
        r = x - self.m
        return 0.5 * ((r @ self.A()) * r).sum(1)


def _model(kind, m, A):
    return GaussianScore(m, A) if kind == "score" else EnergyScore(GaussianEnergy(m, A))


def _params(model):
    inner = model.energy if isinstance(model, EnergyScore) else model
    return inner.m, inner.A()


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    return MU + torch.randn(n, D, generator=g, dtype=torch.float64) @ L_.T


@pytest.mark.parametrize("kind", ["score", "energy"])
def test_hyvarinen_exact_minimiser_is_sample_mean_and_inverse_covariance(kind):
    x = _data(2000, 0)
    xbar = x.mean(0)
    S = (x - xbar).T @ (x - xbar) / x.shape[0]
    model = _model(kind, torch.zeros(D, dtype=torch.float64), torch.eye(D, dtype=torch.float64))
    loss = Hyvarinen(sds.ExactTrace())
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=200, tolerance_grad=1e-12,
                            tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        v = loss(model, x)
        v.backward()
        return v

    for _ in range(3):
        opt.step(closure)
    m, A = _params(model)
    assert torch.allclose(m.detach(), xbar, atol=1e-6)
    assert torch.allclose(A.detach(), torch.linalg.inv(S), atol=1e-6)
    # the minimum value is closed form too: -tr S^{-1} + tr(S^{-2} S) / 2 = -tr S^{-1} / 2
    assert abs(float(loss(model, x).detach()) + 0.5 * float(torch.trace(torch.linalg.inv(S)))) < 1e-8


def _chunk_gradients(model, loss, x, chunks, seed):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for xc in x.chunk(chunks):
        model.zero_grad()
        loss(model, xc, g).backward()
        rows.append(torch.cat([p.grad.reshape(-1).clone() for p in model.parameters()]))
    G = torch.stack(rows)
    return G.mean(0), G.std(0) / math.sqrt(chunks)


SIGMA_DSM = 0.7
LOSSES = {
    "hyvarinen-exact": (lambda: Hyvarinen(sds.ExactTrace()), 0.0),
    "hyvarinen-hutchinson": (lambda: Hyvarinen(sds.Hutchinson(1, "gaussian")), 0.0),
    "sliced": (lambda: Sliced(1, "gaussian", variance_reduction=False), 0.0),
    "sliced-vr": (lambda: Sliced(1, "rademacher", variance_reduction=True), 0.0),
    "denoising": (lambda: Denoising(SIGMA_DSM), SIGMA_DSM),
}


@pytest.mark.parametrize("name,kind", [(n, "score") for n in LOSSES]
                         + [("hyvarinen-hutchinson", "energy"), ("sliced", "energy"), ("denoising", "energy")])
def test_population_minimiser_of_each_loss(name, kind):
    """The expected gradient vanishes at the closed-form minimiser (within its standard error
    over 40 independent chunks of data, probes and noise) and not at a wrong parameter."""
    make, sigma = LOSSES[name]
    A_true = torch.linalg.inv(SIGMA + sigma**2 * torch.eye(D, dtype=torch.float64))
    x = _data(8000, 1)
    mean, se = _chunk_gradients(_model(kind, MU, A_true), make(), x, 40, 2)
    z = (mean / se).abs()
    assert float(z.max()) < 4.5, (name, z)
    wrong = A_true @ (torch.eye(D, dtype=torch.float64) + 0.2 * torch.diag(torch.tensor([1.0, -1.0, 0.5],
                                                                                        dtype=torch.float64)))
    wrong = 0.5 * (wrong + wrong.T)
    mean_w, se_w = _chunk_gradients(_model(kind, MU + 0.2, wrong), make(), x, 40, 2)
    assert float((mean_w / se_w).abs().max()) > 10.0


def _mlp(d_in, d_out, seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, d_out)).double()


@pytest.mark.parametrize("kind,noise,vr", [("score", "rademacher", True), ("score", "gaussian", False),
                                           ("energy", "rademacher", False), ("energy", "gaussian", True)])
def test_sliced_averages_to_exact(kind, noise, vr):
    """The sliced estimate, averaged over probe draws, equals Hyvarinen's exact objective within
    4 standard errors of the average (a non-Gaussian score: an MLP in 4 dimensions)."""
    d = 4
    model = _mlp(d, d, 0) if kind == "score" else EnergyScore(_mlp(d, 1, 0))
    x = torch.randn(64, d, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        exact = Hyvarinen(sds.ExactTrace()).per_sample(model, x)
        loss = Sliced(probes=1, noise=noise, variance_reduction=vr)
        g = torch.Generator().manual_seed(4)
        draws = torch.stack([loss.per_sample(model, x, g) for _ in range(200)])  # (R, B)
    est = draws.mean(1)  # batch means, one per draw of the probes
    se = float(est.std() / math.sqrt(est.numel()))
    assert abs(float(est.mean()) - float(exact.mean())) < 4 * se
    # and per sample: the standardized differences behave as standard normals
    zs = (draws.mean(0) - exact) / (draws.std(0) / math.sqrt(draws.shape[0]))
    assert float(zs.abs().max()) < 4.5
    assert 0.6 < float(zs.std()) < 1.4


def test_loss_options_are_checked():
    with pytest.raises(ValueError, match="needs noise_levels"):
        Denoising(None)
    with pytest.raises(ValueError, match="positive"):
        Hyvarinen(noise_levels=[1.0, -1.0])
    with pytest.raises(TypeError, match="Trace object"):
        Hyvarinen(trace="exact")
    bad = EnergyScore(nn.Linear(2, 3))
    with pytest.raises(ValueError, match="energy network returned"):
        bad(torch.zeros(4, 2))


def test_noise_conditional_levels_and_energy_gradient():
    levels = geometric_levels(5.0, 0.05, 12)
    seen = []

    def model(x, sigma):
        seen.append(float(sigma[0]))
        return -x / (1.0 + sigma[:, None] ** 2)

    process, score, schedule = noise_conditional(model, levels)
    sds.sample(process, score, sds.AnnealedLangevin(n_steps=1, step_lr=1e-3, denoise=False),
               x_T=torch.zeros(3, 2), schedule=schedule, seed=0)
    assert torch.allclose(torch.tensor(seen, dtype=torch.float64), levels.float().double(), rtol=1e-5)
    # EnergyScore is -grad E, to rounding
    E = _mlp(2, 1, 5)
    x = torch.randn(7, 2, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(E(x).sum(), x)
    assert torch.allclose(EnergyScore(E)(x), -g, atol=1e-12)


def _mixture_score(x, sigma):
    """The exact score of GMM2D convolved with N(0, sigma^2 I), per-sample sigma (B,)."""
    w = torch.tensor(GMM2D["weights"], dtype=x.dtype)
    mu = torch.tensor(GMM2D["means"], dtype=x.dtype)
    v = torch.tensor(GMM2D["variances"], dtype=x.dtype)[None] + sigma[:, None] ** 2  # (B, K)
    r = x[:, None, :] - mu[None]
    logc = torch.log(w)[None] - 0.5 * (r * r).sum(-1) / v - torch.log(v)
    resp = torch.softmax(logc, 1)
    return -(resp[..., None] * r / v[..., None]).sum(1)


def _proportions(x):
    mix = sds.GaussianMixture(GMM2D["weights"], GMM2D["means"], GMM2D["variances"])
    k = mix.posterior(x.double()).argmax(1)
    return torch.bincount(k, minlength=3).double() / x.shape[0]


def _start(n, seed):
    """Chains start from N(0, I): the basins of the three modes catch about 0.59 / 0.31 / 0.10 of
    it, against weights 0.5 / 0.3 / 0.2."""
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))


def test_annealed_langevin_restores_weights_plain_does_not_exact_score():
    """With the exact scores: plain Langevin from N(0, I) keeps the basins' shares after 300
    steps; annealed Langevin over NCSN levels gets the weights within 4 standard
    errors of a multinomial proportion."""
    n = 2000
    w = torch.tensor(GMM2D["weights"], dtype=torch.float64)
    x, _ = langevin(_mixture_score, _start(n, 0), 0.01, 300, seed=1, sigma=0.01)
    plain = _proportions(x)
    levels = geometric_levels(6.0, 0.05, 20)
    process, score, schedule = noise_conditional(_mixture_score, levels)
    step_lr = 0.1 * 0.05**2
    y = sds.sample(process, score, sds.AnnealedLangevin(n_steps=20, step_lr=step_lr, denoise=False),
                   x_T=_start(n, 0), schedule=schedule, seed=2).y
    annealed = _proportions(y)
    se = (w * (1 - w) / n).sqrt()
    assert float(((annealed - w).abs() / se).max()) < 4.0, annealed
    assert float((plain - w).abs().max()) > 0.05, plain


def _example(name):
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_energy_model_sliced_score_matching_recovers_mixture_weights():
    """examples/energy_langevin.py's recipe: an energy network trained by sliced score matching
    (VR) at NCSN levels on GMM2D; annealed Langevin (10 updates per level, 1000 chains from
    N(0, I)) recovers the component proportions within 0.05; plain Langevin at the smallest
    level does not within 300 steps."""
    ex = _example("energy_langevin")
    model, levels, _ = ex.train_energy(3000, log=False)
    w = torch.tensor(GMM2D["weights"], dtype=torch.float64)
    with torch.no_grad():
        y = ex.annealed_sample(model, levels, ex.start(1000), 10)
        x, _ = langevin(model, ex.start(1000), 0.01, 300, seed=1, sigma=float(levels[-1]))
    annealed, plain = _proportions(y), _proportions(x)
    assert float((annealed - w).abs().max()) < 0.05, annealed
    assert float((plain - w).abs().max()) > 0.05, plain
