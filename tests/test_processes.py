"""Processes: marginals consistent with their SDEs, log-SNR inverses, priors."""
import math

import pytest
import torch

import sdesolve as sds

PROCESSES = [sds.VPSDE(), sds.SubVPSDE(), sds.VESDE(), sds.EDM(), sds.VPSDE(beta_min=0.05, beta_max=12.0)]


@pytest.mark.parametrize("p", PROCESSES, ids=repr)
def test_marginals_solve_the_moment_odes(p):
    # x_t = alpha x_0 + sigma z solves dx = f x dt + g dW iff d alpha/dt = f alpha and
    # d(sigma^2)/dt = 2 f sigma^2 + g^2; central differences, error O(h^2)
    t = torch.linspace(p.t_min + 0.05 * (p.T - p.t_min), p.T * 0.95, 7, dtype=torch.float64)
    h = 1e-5 * p.T
    a_p, s_p = p.marginal(t + h)
    a_m, s_m = p.marginal(t - h)
    a, s = p.marginal(t)
    da = (a_p - a_m) / (2 * h)
    ds2 = (s_p**2 - s_m**2) / (2 * h)
    torch.testing.assert_close(da, p.f(t) * a, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ds2, 2 * p.f(t) * s**2 + p.g2(t), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("p", PROCESSES, ids=repr)
def test_lambda_inverse(p):
    t = torch.linspace(p.t_min, p.T, 101, dtype=torch.float64)
    lam = p.lam(t)
    assert (lam[1:] < lam[:-1]).all(), "lambda must decrease in t"
    torch.testing.assert_close(p.t_of_lam(lam), t, rtol=1e-9, atol=1e-9 * p.T)
    a, s = p.marginal(t)
    torch.testing.assert_close(lam, torch.log(a / s))
    torch.testing.assert_close(p.t_of_sigma_edm(p.sigma_edm(t)), t, rtol=1e-9, atol=1e-9 * p.T)


def test_closed_forms():
    vp = sds.VPSDE()
    a, s = vp.marginal(torch.tensor(1.0, dtype=torch.float64))
    assert math.isclose(float(a), math.exp(-0.25 * 19.9 - 0.05), rel_tol=1e-12)
    assert math.isclose(float(s) ** 2 + float(a) ** 2, 1.0, rel_tol=1e-12)
    sub = sds.SubVPSDE()
    assert math.isclose(float(sub.sigma(torch.tensor(0.5, dtype=torch.float64))), 1 - float(vp.alpha(0.5)) ** 2)
    ve = sds.VESDE(sigma_min=0.01, sigma_max=50.0)
    assert math.isclose(float(ve.sigma(torch.tensor(0.5, dtype=torch.float64))), 0.01 * 5000**0.5, rel_tol=1e-12)
    edm = sds.EDM()
    assert edm.T == 80.0 and edm.t_min == 0.002 and float(edm.sigma(torch.tensor(3.0))) == 3.0


@pytest.mark.parametrize("p", PROCESSES, ids=repr)
def test_prior(p):
    x = p.prior_sample((20000, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(x.std() / p.prior_std - 1) < 5 * math.sqrt(0.5 / x.numel())
    lp = p.prior_logp(x[:5])
    ref = torch.distributions.Normal(0.0, p.prior_std).log_prob(x[:5]).sum(1)
    torch.testing.assert_close(lp, ref)


def test_bad_parameters():
    with pytest.raises(ValueError, match="beta_min < beta_max"):
        sds.VPSDE(beta_min=5, beta_max=1)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        sds.VESDE(sigma_min=1.0, sigma_max=0.5)
