"""EDM preconditioning (Karras et al. 2022, "Elucidating the design space of diffusion-based
generative models", Table 1): a network F becomes the denoiser

    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))

    c_skip  = sigma_data^2 / (sigma^2 + sigma_data^2)
    c_out   = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in    = 1 / sqrt(sigma^2 + sigma_data^2)
    c_noise = log(sigma) / 4

on the variance-exploding scale x = x_0 + sigma z. ``EDMPrecond(net, sigma_data)(x, sigma)`` is
D; ``Score.from_denoiser(precond, process)`` turns it into the score of any process (it calls D
on x / alpha with sigma = sigma / alpha).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["EDMPrecond"]


class EDMPrecond(nn.Module):
    def __init__(self, net: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        if not sigma_data > 0:
            raise ValueError(f"EDMPrecond: sigma_data must be positive, got {sigma_data}")
        self.net, self.sigma_data = net, float(sigma_data)
        self.config = dict(net=net, sigma_data=self.sigma_data)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if sigma.dim() != 1 or sigma.shape[0] != x.shape[0]:
            raise ValueError(f"EDMPrecond: sigma must have shape ({x.shape[0]},), got {tuple(sigma.shape)}")
        s = sigma.to(torch.float64)
        sd2 = self.sigma_data**2
        c_skip = sd2 / (s * s + sd2)
        c_out = s * self.sigma_data / torch.sqrt(s * s + sd2)
        c_in = 1.0 / torch.sqrt(s * s + sd2)
        c_noise = torch.log(s) / 4.0
        shape = (-1,) + (1,) * (x.dim() - 1)
        cast = lambda c: c.to(x.dtype).reshape(shape)  # noqa: E731
        out = self.net(cast(c_in) * x, c_noise.to(x.dtype))
        return cast(c_skip) * x + cast(c_out) * out
