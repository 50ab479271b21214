"""Gaussian mixtures: densities against scipy, scores against autograd, exact samples."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

import sdesolve as sds

COV = [[[0.5, 0.2], [0.2, 0.3]], [[0.2, -0.05], [-0.05, 0.4]], [[1.0, 0.0], [0.0, 0.1]]]
GM = sds.GaussianMixture([0.2, 0.5, 0.3], [[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]], COV)


@pytest.mark.parametrize("p", [sds.VPSDE(), sds.SubVPSDE(), sds.VESDE(sigma_max=10), sds.EDM()], ids=repr)
def test_log_prob_against_scipy(p):
    x = torch.randn(7, 2, dtype=torch.float64) * 2
    t = torch.full((7,), 0.3 * p.T, dtype=torch.float64)
    a, s = (float(v[0]) for v in p.marginal(t))
    ref = np.log(sum(w * multivariate_normal(a * np.array(m), a * a * np.array(c) + s * s * np.eye(2)).pdf(x.numpy())
                     for w, m, c in zip([0.2, 0.5, 0.3], [[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]], COV)))
    np.testing.assert_allclose(GM.log_prob(x, t, p).numpy(), ref, rtol=1e-10)
    np.testing.assert_allclose(GM.log_prob(x).numpy(), np.log(sum(
        w * multivariate_normal(np.array(m), np.array(c)).pdf(x.numpy())
        for w, m, c in zip([0.2, 0.5, 0.3], [[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]], COV))), rtol=1e-10)


def test_score_is_gradient_of_log_prob():
    p = sds.VPSDE()
    x = torch.randn(9, 2, dtype=torch.float64, requires_grad=True)
    t = torch.linspace(0.01, 0.9, 9, dtype=torch.float64)
    (g,) = torch.autograd.grad(GM.log_prob(x, t, p).sum(), x)
    torch.testing.assert_close(GM.score_at(x.detach(), t, p), g)
    torch.testing.assert_close(GM.score(p)(x.detach(), t), g)
    # per-component scores too
    for k in range(3):
        (gk,) = torch.autograd.grad(GM.component(k).log_prob(x, t, p).sum(), x)
        torch.testing.assert_close(GM.score_at(x.detach(), t, p, component=k), gk)


def test_samples_have_the_right_moments():
    n = 200_000
    x, k = GM.sample(n, torch.Generator().manual_seed(0), return_labels=True, dtype=torch.float64)
    freq = torch.bincount(k, minlength=3).double() / n
    assert (freq - GM.weights).abs().max() < 5 * math.sqrt(0.25 / n)
    for j in range(3):
        xj = x[k == j]
        # mean: sd sqrt(var / n_j) per coordinate; covariance entries: sd <= sqrt(2) var / sqrt(n_j)
        assert (xj.mean(0) - GM.means[j]).abs().max() < 5 * math.sqrt(1.0 / len(xj))
        assert (torch.cov(xj.T) - GM.covs[j]).abs().max() < 5 * math.sqrt(2.0 / len(xj))
    # marginal at time t: exact moments of the mixture at t
    p = sds.VPSDE()
    xt = GM.sample(n, torch.Generator().manual_seed(1), t=0.5, process=p, dtype=torch.float64)
    a, s = (float(v) for v in p.marginal(torch.tensor(0.5, dtype=torch.float64)))
    mean = a * (GM.weights[:, None] * GM.means).sum(0)
    assert (xt.mean(0) - mean).abs().max() < 5 * math.sqrt(3.0 / n)


def test_posterior_is_bayes():
    x = torch.tensor([[2.0, 1.0], [-2.0, 0.0]], dtype=torch.float64)
    r = GM.posterior(x)
    comps = torch.stack([GM.component(k).log_prob(x) for k in range(3)], 1) + GM.weights.log()
    torch.testing.assert_close(r, torch.softmax(comps, 1))
    assert r[0, 1] > 0.99 and r[1, 0] > 0.99


def test_bad_mixtures():
    with pytest.raises(ValueError, match="positive definite"):
        sds.GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]])
    with pytest.raises(ValueError, match="weights"):
        sds.GaussianMixture([1.0, -1.0], [[0.0], [1.0]], [1.0, 1.0])
    with pytest.raises(ValueError, match="variances"):
        sds.GaussianMixture([1.0], [[0.0, 0.0]], [[1.0, 1.0, 1.0]])
