"""Score matching without the data score: Hyvarinen, sliced and denoising, for score networks
and energy networks.

A model of the score s(x) ~ grad log p(x) is fitted by minimising the Fisher divergence
F = E_p |s(x) - grad log p(x)|^2 / 2, which needs the unknown data score. Three rewritings
remove it; each is one :class:`ScoreMatchingLoss` here, called ``loss(model, x, generator)``:

* :class:`Hyvarinen` (Hyvarinen 2005, Thm. 1): integrating by parts,
  F = E_p [tr(grad_x s(x)) + |s(x)|^2 / 2] + C, with C independent of the model. The trace is
  a :class:`~sdesolve.likelihood.Trace`: :class:`~sdesolve.likelihood.ExactTrace` (D
  vector-Jacobian products: low dimension) or :class:`~sdesolve.likelihood.Hutchinson`
  (v^T (grad s) v with E[v v^T] = I, unbiased).
* :class:`Sliced` (Song, Garg, Shi & Ermon 2019, "Sliced score matching", Eq. 7-8): the
  Fisher divergence of the projections v^T s along random directions v,
  E_v E_p [v^T (grad s) v + (v^T s)^2 / 2]; since E_v (v^T s)^2 = |s|^2 for E[v v^T] = I, its
  variance-reduced form ("SSM-VR") replaces (v^T s)^2 by |s|^2, which is Hyvarinen's objective
  with the Hutchinson trace. Both are unbiased estimates of the same objective, so their
  expectations (and minimisers) coincide with :class:`Hyvarinen`'s.
* :class:`Denoising` (Vincent 2011): for the data perturbed by x~ = x + sigma z,
  E |s(x~) + z / sigma|^2 / 2 equals the Fisher divergence to the perturbed density
  p_sigma = p * N(0, sigma^2 I) plus a constant: the minimiser is grad log p_sigma.

Noise levels. ``noise_levels=None`` fits the data as it is, calling ``model(x)``. A float sigma
fits the perturbed data x + sigma z (required by :class:`Denoising`), still ``model(x)``. A
sequence of levels (NCSN, Song & Ermon 2019) draws one level per sample, uniformly, and calls
``model(x~, sigma)`` with sigma a (B,) tensor in x's dtype; each sample's loss is weighted by
lambda(sigma) = sigma^2 (their Eq. 6), so every level contributes O(1). Hyvarinen's and the
sliced objectives on perturbed samples also fit grad log p_sigma (score matching of p_sigma
from its samples), so any member of the family trains a noise-conditional model for annealed
Langevin dynamics.

Models. A score network returns the score, shaped like x. An energy network E(x) (density
exp(-E) / Z, Z unknown) returns (B,) energies; wrap it in :class:`EnergyScore`, whose output is
-grad_x E computed with ``torch.func.grad``, so that the trace's vector-Jacobian products
(``torch.func.vjp``) nest over it and the loss stays differentiable in the parameters.

Every loss returns the per-sample values by :meth:`ScoreMatchingLoss.per_sample` and their mean
by ``__call__``; all the randomness (noise levels, perturbations, probes) comes from the given
``torch.Generator``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..likelihood import ExactTrace, Hutchinson, Trace, _quadratic_forms
from ..noise import Noise

__all__ = ["EnergyScore", "ScoreMatchingLoss", "Hyvarinen", "Sliced", "Denoising", "geometric_levels"]


class EnergyScore(nn.Module):
    """The score -grad_x E(x, ...) of an energy network ``energy(x, *args) -> (B,)`` (or (B, 1)).

    The gradient is taken with ``torch.func.grad`` of sum_b E(x_b): samples do not interact
    in E, so row b of the result is -grad E(x_b). It is differentiable in x and in E's
    parameters (a loss on it trains E)."""

    def __init__(self, energy: nn.Module):
        super().__init__()
        self.energy = energy

    def _energy(self, x, *args):
        e = self.energy(x, *args)
        if e.dim() == 2 and e.shape[1] == 1:
            e = e[:, 0]
        if e.shape != x.shape[:1]:
            raise ValueError(f"EnergyScore: the energy network returned shape {tuple(e.shape)} for a batch of "
                             f"{x.shape[0]}; expected ({x.shape[0]},) or ({x.shape[0]}, 1)")
        return e

    def forward(self, x: torch.Tensor, *args) -> torch.Tensor:
        return -torch.func.grad(lambda y: self._energy(y, *args).sum())(x)

    def unnormalized_log_prob(self, x: torch.Tensor, *args) -> torch.Tensor:
        """-E(x): the log-density up to the (unknown) log-normalizer."""
        return -self._energy(x, *args)


def _probe_noise(batch: int, generator: torch.Generator | None) -> Noise:
    """A per-sample counter-based noise source keyed by a seed drawn from ``generator``."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    return Noise.from_seed(seed, batch)


class ScoreMatchingLoss:
    """Base of the family: ``loss(model, x, generator)`` = mean of ``per_sample(...)`` (B,).

    ``noise_levels``: None (model(x) on the data), a float sigma (model(x) on x + sigma z), or
    a sequence of levels (model(x + sigma z, sigma), sigma drawn per sample, weight sigma^2).
    Subclasses define ``objective(fn, x, z, sigma, generator) -> (B,)`` for the perturbed
    samples x and the score function ``fn`` (the model at each sample's level)."""

    requires_noise = False

    def __init__(self, noise_levels=None):
        if noise_levels is None:
            self.levels, self.conditional = None, False
        elif isinstance(noise_levels, (int, float)):
            if not noise_levels > 0:
                raise ValueError(f"{type(self).__name__}: the noise level must be positive, got {noise_levels}")
            self.levels, self.conditional = torch.tensor([float(noise_levels)], dtype=torch.float64), False
        else:
            lv = torch.as_tensor(noise_levels, dtype=torch.float64).reshape(-1)
            if lv.numel() == 0 or not bool((lv > 0).all()):
                raise ValueError(f"{type(self).__name__}: noise levels must be positive, got {lv.tolist()}")
            self.levels, self.conditional = lv, True
        if self.requires_noise and self.levels is None:
            raise ValueError(f"{type(self).__name__} needs noise_levels (a float sigma or a sequence of levels)")

    def objective(self, fn, x, z, sigma, generator) -> torch.Tensor:
        raise NotImplementedError

    def per_sample(self, model, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        B = x.shape[0]
        if self.levels is None:
            return self.objective(model, x, None, None, generator)
        if self.conditional:
            idx = torch.randint(len(self.levels), (B,), generator=generator)
            sigma = self.levels[idx].to(device=x.device, dtype=x.dtype)
        else:
            sigma = torch.full((B,), float(self.levels[0]), device=x.device, dtype=x.dtype)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        s = sigma.reshape((B,) + (1,) * (x.dim() - 1))
        xt = x + s * z
        fn = (lambda y: model(y, sigma)) if self.conditional else model
        out = self.objective(fn, xt, z, s, generator)
        return sigma**2 * out if self.conditional else out

    def __call__(self, model, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.per_sample(model, x, generator).mean()

    def _levels_repr(self):
        if self.levels is None:
            return None
        lv = [round(float(v), 6) for v in self.levels]
        return lv if self.conditional else lv[0]

    def __repr__(self):
        return f"{type(self).__name__}(noise_levels={self._levels_repr()})"


class Hyvarinen(ScoreMatchingLoss):
    """tr(grad_x s) + |s|^2 / 2 per sample; the trace by ``trace`` (default exact)."""

    def __init__(self, trace: Trace | None = None, noise_levels=None):
        super().__init__(noise_levels)
        self.trace = ExactTrace() if trace is None else trace
        if not isinstance(self.trace, Trace):
            raise TypeError(f"Hyvarinen: trace must be a Trace object (ExactTrace(), Hutchinson()), got {trace!r}")

    def objective(self, fn, x, z, sigma, generator):
        probes = self.trace.draw(_probe_noise(x.shape[0], generator), x) if self.trace.needs_probes else None
        s, div = self.trace.divergence(fn, x, probes)
        return div + 0.5 * s.reshape(x.shape[0], -1).pow(2).sum(1)

    def __repr__(self):
        return f"Hyvarinen(trace={self.trace!r}, noise_levels={self._levels_repr()})"


class Sliced(ScoreMatchingLoss):
    """Sliced score matching: mean over ``probes`` directions v of v^T (grad s) v + (v^T s)^2 / 2,
    or with ``variance_reduction`` v^T (grad s) v + |s|^2 / 2 (SSM-VR). ``noise``: the law of v,
    "rademacher" or "gaussian" (both E[v v^T] = I)."""

    def __init__(self, probes: int = 1, noise: str = "rademacher", variance_reduction: bool = True,
                 noise_levels=None):
        super().__init__(noise_levels)
        self.hutchinson = Hutchinson(probes, noise)
        self.variance_reduction = bool(variance_reduction)

    def objective(self, fn, x, z, sigma, generator):
        B = x.shape[0]
        v = self.hutchinson.draw(_probe_noise(B, generator), x)  # (P, B, ...)
        s, vjp_fn = torch.func.vjp(fn, x)
        vjv = _quadratic_forms(vjp_fn, v).mean(0)
        if self.variance_reduction:
            second = 0.5 * s.reshape(B, -1).pow(2).sum(1)
        else:
            second = 0.5 * (v.reshape(v.shape[0], B, -1) * s.reshape(1, B, -1)).sum(-1).pow(2).mean(0)
        return vjv + second

    def __repr__(self):
        return (f"Sliced(probes={self.hutchinson.probes}, noise={self.hutchinson.noise!r}, "
                f"variance_reduction={self.variance_reduction}, noise_levels={self._levels_repr()})")


class Denoising(ScoreMatchingLoss):
    """|s(x + sigma z) + z / sigma|^2 / 2 per sample (Vincent 2011): fits grad log p_sigma."""

    requires_noise = True

    def __init__(self, noise_levels):
        super().__init__(noise_levels)

    def objective(self, fn, x, z, sigma, generator):
        s = fn(x)
        return 0.5 * (s + z / sigma).reshape(x.shape[0], -1).pow(2).sum(1)


def geometric_levels(sigma_max: float, sigma_min: float, n: int) -> torch.Tensor:
    """n noise levels, geometric from sigma_max down to sigma_min (float64), as in NCSN."""
    if not (sigma_max > sigma_min > 0) or n < 2:
        raise ValueError(f"geometric_levels: need sigma_max > sigma_min > 0 and n >= 2, got {sigma_max}, "
                         f"{sigma_min}, {n}")
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64))

