"""Latent diffusion: the VAE's bound, the diffusion prior's exact log-density, bits per dimension."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import sdesolve as sds
from sdesolve.latent import (ConvVAE, bits_per_dim_of, dequantize_levels, diffusion_prior_logp, elbo,
                             standard_normal_logp, vae_loss)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_elbo_with_standard_normal_prior_matches_closed_form_kl():
    """The Monte Carlo ELBO's prior and entropy terms average to -KL(q || N(0, I)) in closed form
    (within 4 standard errors), and vae_loss is the same bound per pixel."""
    torch.manual_seed(0)
    vae = ConvVAE(latent=4, width=8).double()
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64) * 2 - 1
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        _, terms = elbo(vae, x, standard_normal_logp, k=1000, generator=g)
        mu, log_sigma = vae.encode(x)
    kl = (0.5 * (mu**2 + torch.exp(2 * log_sigma) - 1.0) - log_sigma).sum(1)
    est = terms["log_prior"] - terms["log_q"]  # (k, B)
    se = est.std(0) / math.sqrt(est.shape[0])
    assert float(((est.mean(0) + kl).abs() / se).max()) < 4.0
    with torch.no_grad():
        a = vae_loss(vae, x, torch.Generator().manual_seed(3))
        e, _ = elbo(vae, x, standard_normal_logp, k=1, generator=torch.Generator().manual_seed(4))
    assert abs(float(a) * 64 + float(e.mean())) < 3 * float(e.std()) + 20  # same scale: one draw each


@pytest.mark.parametrize("mu,s", [(0.0, 1.0), (0.0, 0.4)])
def test_diffusion_prior_logp_is_the_exact_density(mu, s):
    """For latents N(mu, s^2 I) and the exact score under VP, the probability-flow log-density at
    t_min equals the exact marginal log-density log N(alpha mu, alpha^2 s^2 + sigma^2). (Centred:
    the model's prior N(0, I) at T then equals p_T to ~1e-5, so no prior mismatch enters.)"""
    p = sds.VPSDE()
    mix = sds.GaussianMixture([1.0], [[mu] * 3], [s**2])
    z = mu + s * torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lp = diffusion_prior_logp(p, mix.score(p), solver=sds.Dopri5(1e-6, 1e-6))(z)
    exact = mix.log_prob(z, p.t_min, p)
    assert torch.allclose(lp, exact, atol=1e-4)
    if mu == 0.0 and s == 1.0:
        assert torch.allclose(lp, standard_normal_logp(z), atol=1e-4)


def test_bits_per_dim_of_the_uniform_density_is_log2_levels():
    D, L = 64, 17
    log_uniform = torch.full((5,), -D * math.log(2.0))  # density 2^-D on [-1, 1]^D
    assert torch.allclose(bits_per_dim_of(log_uniform, D, L), torch.full((5,), math.log2(L)))
    y = dequantize_levels(torch.randint(L, (1000, D)), L, torch.Generator().manual_seed(0))
    assert float(y.min()) >= -1.0 and float(y.max()) < 1.0
    k = torch.floor((y.double() + 1) / 2 * L).long()  # the level each point came from
    assert int(k.max()) <= L - 1


@pytest.mark.slow
def test_latent_diffusion_prior_gives_the_better_bound(tmp_path):
    """The example's recipe: the paired gain in bits/dim of the diffusion prior over N(0, I) on
    held-out digits has a 95% interval above zero."""
    out = tmp_path / "ld.json"
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, os.path.join(ROOT, "examples", "latent_diffusion.py"), "--k", "2",
                    "--samples", "300", "--grid", str(tmp_path / "grid.png"), "--json", str(out)],
                   check=True, env=env, cwd=ROOT, timeout=3000)
    res = json.loads(out.read_text())
    assert res["gain_ci"][0] > 0, res
