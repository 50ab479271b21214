"""Annealed Langevin dynamics (NCSN) and the 2020 paper's helpers for its hyperparameters."""
import math

import pytest

import torch

import sdesolve as sds
from sdesolve.solvers.langevin import AnnealedLangevin as ALD

Phi = lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2)))


def test_sigma_ratio_solves_technique_2():
    with pytest.raises(ValueError, match="no solution in 2 dimensions"):
        ALD.sigma_ratio(2)
    for D in (5, 64, 3072):
        g = ALD.sigma_ratio(D)
        c = math.sqrt(2 * D) * (g - 1)
        assert abs(Phi(c + 3 * g) - Phi(c - 3 * g) - 0.5) < 1e-9
    assert ALD.sigma_ratio(3072) < ALD.sigma_ratio(64)  # more dimensions, finer levels


def test_noise_levels_and_initial_sigma():
    s = ALD.noise_levels(50.0, 0.01, 64)
    assert float(s[0]) == 50.0 and abs(float(s[-1]) - 0.01) < 1e-12
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    assert ALD.initial_sigma(x) == 5.0


def test_variance_ratio_against_simulation():
    # point-mass data: p_sigma = N(0, sigma^2), score -x / sigma^2. Start at variance (gamma sigma)^2,
    # run T steps of x += a s + sqrt(2a) z with a = eps sigma^2 / sigma_L^2: the variance ratio is the formula
    sig, sig_L, gamma, eps, T, n = 0.7, 0.1, 1.3, 2e-4, 20, 400_000
    g = torch.Generator().manual_seed(0)
    x = gamma * sig * torch.randn(n, generator=g, dtype=torch.float64)
    a = eps * sig**2 / sig_L**2
    for _ in range(T):
        x = x - a * x / sig**2 + math.sqrt(2 * a) * torch.randn(n, generator=g, dtype=torch.float64)
    ratio = ALD.variance_ratio(eps, T, gamma, sig_L)
    assert abs(float(x.var()) / sig**2 - ratio) < 5 * ratio * math.sqrt(2 / n)
    best = ALD.step_size(T, gamma, sig_L)
    r_best = ALD.variance_ratio(best, T, gamma, sig_L)
    assert 1 <= r_best < min(ALD.variance_ratio(best * f, T, gamma, sig_L) for f in (0.8, 1.25))


def _ald(n_steps, n=4000):
    gm = sds.GaussianMixture([0.3, 0.7], [[-2.0, 0.0], [2.0, 0.0]], [0.2, 0.2])
    p = sds.VESDE(sigma_min=0.01, sigma_max=10.0)
    grid = p.t_of_sigma_edm(ALD.noise_levels(10.0, 0.01, ratio=1.15))  # Technique 2 has no solution in 2-D
    eps = ALD.step_size(n_steps, 1.15, 0.01)
    sol = sds.sample(p, gm.score(p), ALD(n_steps=n_steps, step_lr=eps), shape=(n, 2), schedule=grid, seed=0)
    x = sol.y.double()
    k = gm.posterior(x).argmax(1)
    return sol, float((k == 1).double().mean()), float(x[k == 1].var(0).mean()), eps, len(grid)


def test_annealed_langevin_samples_a_mixture():
    sol, frac, var10, eps, levels = _ald(10)
    assert abs(frac - 0.7) < 4 * math.sqrt(0.21 / 4000)
    assert sol.stats.nfe == 10 * (levels - 1) + 1  # + the final denoising step
    # ALD leaves each level with variance ratio >= 1 (Technique 4), so component variances come
    # out inflated, less so with more steps per level: the bias shrinks with n_steps and stays
    # within twice the Technique-4 excess (var_ratio - 1) of the true 0.2, plus 5 standard errors
    se = 0.2 * math.sqrt(2 / (2 * 0.7 * 4000))
    _, _, var40, _, _ = _ald(40)
    assert 0.2 - 5 * se < var40 < var10
    assert var10 - 0.2 < 2 * 0.2 * (ALD.variance_ratio(eps, 10, 1.15, 0.01) - 1) + 5 * se
