"""Latent diffusion: a variational autoencoder whose latent prior is a diffusion model, and the
likelihood bound with the prior's exact log-density.

A VAE (Kingma & Welling 2014) has an encoder q(z | x) = N(mu(x), diag sigma(x)^2), a decoder
p(x | z) and a prior p(z). For any prior,

    log p(x) >= ELBO(x) = E_{q(z|x)} [log p(x | z) + log p(z) - log q(z | x)].

Trained with the standard normal prior, the encoder's aggregate posterior q(z) = E_x q(z | x)
does not fill N(0, I) (the "prior hole" problem); a diffusion model fitted to samples of q(z)
(denoising score matching on the encoder's latents, as in Vahdat, Kreis & Kautz 2021, LSGM, and
Rombach et al. 2022) is a better prior, and the bound with it is larger by exactly
E_q [log p_diff(z) - log N(z; 0, I)]. Here log p_diff(z) is the diffusion model's own density
log p_{t_min}(z) from the probability-flow ODE (:func:`sdesolve.log_likelihood`: the
instantaneous change of variables, exact trace in the latent's low dimension), so the bound is a
true bound on the model log p(x) = log int p(x | z) p_diff(z) dz, not an approximation of it.
Samples decode latents drawn by any sdesolve solver from the latent diffusion model.

:class:`ConvVAE` is a small convolutional VAE for (C, H, W) images in [-1, 1] with a Gaussian
decoder N(x; decoder(z), exp(2 log_scale)) (one learned log-scale per pixel); the likelihood of
dequantized images (uniform noise inside each of the ``levels`` bins) turns into bits per
dimension by :func:`bits_per_dim_of`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ConvVAE", "vae_loss", "elbo", "standard_normal_logp", "diffusion_prior_logp", "dequantize_levels",
           "bits_per_dim_of"]

_LOG_2PI = math.log(2.0 * math.pi)


class ConvVAE(nn.Module):
    """Encoder conv(3x3) -> conv(3x3, stride 2) -> linear to (mu, log sigma) of ``latent``
    dimensions; decoder linear -> transposed conv (stride 2) -> conv(3x3) to the pixel means.
    For square images of side ``size`` divisible by 2."""

    def __init__(self, channels: int = 1, size: int = 8, latent: int = 8, width: int = 32):
        super().__init__()
        if size % 2:
            raise ValueError(f"ConvVAE: the image side must be even, got {size}")
        self.channels, self.size, self.latent, self.width = channels, size, latent, width
        h = size // 2
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU(), nn.Flatten(),
            nn.Linear(2 * width * h * h, 256), nn.SiLU(), nn.Linear(256, 2 * latent))
        self.decoder = nn.Sequential(
            nn.Linear(latent, 256), nn.SiLU(), nn.Linear(256, 2 * width * h * h), nn.SiLU(),
            nn.Unflatten(1, (2 * width, h, h)),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(width, channels, 3, padding=1))
        self.log_scale = nn.Parameter(torch.full((channels, size, size), -1.0))

    def encode(self, x: torch.Tensor):
        """(mu, log_sigma), each (B, latent)."""
        mu, log_sigma = self.encoder(x).chunk(2, dim=1)
        return mu, log_sigma.clamp(-8.0, 4.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's mean image (B, C, H, W)."""
        return self.decoder(z)

    def log_px_given_z(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log N(x; decode(z), exp(2 log_scale)) summed over pixels: (B,)."""
        m = self.decode(z)
        ls = self.log_scale[None]
        lp = -0.5 * ((x - m) * torch.exp(-ls)) ** 2 - ls - 0.5 * _LOG_2PI
        return lp.reshape(x.shape[0], -1).sum(1)

    def sample_posterior(self, x: torch.Tensor, k: int = 1, generator: torch.Generator | None = None):
        """k draws z ~ q(z | x) per image, as (k, B, latent), with log q(z | x) (k, B)."""
        mu, log_sigma = self.encode(x)
        eps = torch.randn((k,) + mu.shape, generator=generator, dtype=mu.dtype).to(mu.device)
        z = mu[None] + torch.exp(log_sigma)[None] * eps
        log_q = (-0.5 * eps**2 - log_sigma[None] - 0.5 * _LOG_2PI).sum(-1)
        return z, log_q


def standard_normal_logp(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) per row: (B,)."""
    return (-0.5 * z**2 - 0.5 * _LOG_2PI).reshape(z.shape[0], -1).sum(1)


def vae_loss(vae: ConvVAE, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """-ELBO per pixel with the standard normal prior, one posterior draw, the KL in closed form
    (KL(N(mu, sigma^2) || N(0, 1)) = (mu^2 + sigma^2 - 1) / 2 - log sigma per coordinate)."""
    mu, log_sigma = vae.encode(x)
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device)
    z = mu + torch.exp(log_sigma) * eps
    kl = (0.5 * (mu**2 + torch.exp(2 * log_sigma) - 1.0) - log_sigma).sum(1)
    return (kl - vae.log_px_given_z(x, z)).mean() / x[0].numel()


def elbo(vae: ConvVAE, x: torch.Tensor, prior_logp, k: int = 1, generator: torch.Generator | None = None,
         z=None):
    """Monte Carlo ELBO per image (B,), nats, averaged over k draws of q(z | x) (or over the
    given draws ``z`` = (z (k, B, latent), log q (k, B)), so that two priors can be compared
    on the same latents). ``prior_logp(z (N, latent)) -> (N,)``. Returns (elbo (B,), terms) with
    terms = dict(log_px_z, log_prior, log_q), each (k, B)."""
    zs, log_q = vae.sample_posterior(x, k, generator) if z is None else z
    kk, B = zs.shape[:2]
    flat = zs.reshape(kk * B, -1)
    log_px_z = vae.log_px_given_z(x.repeat(kk, *([1] * (x.dim() - 1))), flat).reshape(kk, B)
    log_prior = prior_logp(flat).reshape(kk, B)
    value = (log_px_z + log_prior - log_q).mean(0)
    return value, dict(log_px_z=log_px_z, log_prior=log_prior, log_q=log_q)


def diffusion_prior_logp(process, score, **likelihood_kwargs):
    """z -> log p_{t_min}(z) of the latent diffusion model by :func:`sdesolve.log_likelihood`
    (exact trace by default: the latent dimension is small; other keywords go to it)."""
    from .likelihood import ExactTrace, log_likelihood

    likelihood_kwargs.setdefault("trace", ExactTrace())

    def logp(z):
        return log_likelihood(process, score, z, **likelihood_kwargs).logp

    return logp


def dequantize_levels(levels: torch.Tensor, n_levels: int, generator: torch.Generator | None = None,
                      data_range=(-1.0, 1.0)) -> torch.Tensor:
    """Integer levels k in {0..n_levels-1} to y = lo + (hi - lo)(k + u) / n_levels, u ~ U[0, 1)."""
    lo, hi = data_range
    u = torch.rand(levels.shape, generator=generator, dtype=torch.float64)
    return (lo + (hi - lo) * (levels.to(torch.float64) + u) / n_levels).to(torch.float32)


def bits_per_dim_of(log_density: torch.Tensor, dims: int, n_levels: int, data_range=(-1.0, 1.0)) -> torch.Tensor:
    """Bits per dimension of discrete images from a (bound on the) log-density of their
    dequantized version y = lo + a (k + u), a = (hi - lo) / n_levels: the density of k + u on
    [0, n_levels)^D is p(y) a^D, so -log2 P(k) <= -E_u log p(y) / ln 2 - D log2 a (Theis et al.
    2016), per dimension: -log p / (D ln 2) - log2 a."""
    lo, hi = data_range
    a = (hi - lo) / n_levels
    return -log_density / (dims * math.log(2.0)) - math.log2(a)
