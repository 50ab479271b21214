"""Training losses for score networks, for any process with Gaussian marginals.

Notation: x_t = alpha(t) x_0 + sigma(t) z with z ~ N(0, I); the conditional score is
grad log p(x_t | x_0) = -z / sigma; d is the number of elements of one sample.

Parametrizations. The network's output ``out`` predicts one of (targets as in
:mod:`sdesolve.scores`, whose ``Score`` converts each back to a score):

    ScorePrediction  target -z / sigma                score = out                        c = 1
    EpsPrediction    target z                         score = -out / sigma               c = 1 / sigma
    X0Prediction     target x_0                       score = (alpha out - x) / sigma^2  c = alpha / sigma^2
    VPrediction      target alpha z - sigma x_0       score = -(sigma x + alpha out)
                                                              / ((alpha^2 + sigma^2) sigma)
                                                                                 c = alpha / ((alpha^2 + sigma^2) sigma)

Each conversion is affine in ``out`` with slope c(t), so the score error is
|s_theta - s| = c(t) |out - target|. Every loss below is therefore one weighted score-matching
objective, whatever the parametrization:

    L = E_t E_{x_0, z} lambda(t) c(t)^2 |out - target|^2 / d

The parametrization changes what the network outputs, not the objective's minimizer. For
example, lambda = sigma^2 gives |out - z|^2 for EpsPrediction (DDPM's loss) and
(alpha / sigma)^2 |out - x_0|^2 (SNR weighting) for X0Prediction.

Losses:

* :class:`DenoisingScoreMatching`: lambda(t) = sigma(t)^2, t ~ U(t_min, T) (Song et al. 2021,
  score_sde, Eq. 7 with their choice lambda ~ 1 / E|grad log p(x_t|x_0)|^2).
* :class:`LikelihoodWeighted`: lambda(t) = g(t)^2 (Song, Durkan, Murray & Ermon 2021, "Maximum
  likelihood training of score-based diffusion models", Thm. 1: the integral
  (1/2) int g^2 E|s_theta - grad log p_t|^2 dt bounds the KL divergence). The estimated
  quantity is the integral I = int_{t_min}^T g^2 E|s_theta - s|^2 / d dt. Writing
  g^2 |s_theta - s|^2 = (g^2 / sigma^2) |sigma s_theta + z|^2, and sampling t with density
  q(t) = (g^2 / sigma^2) / Z gives I = Z E_{t~q} |sigma s_theta + z|^2 / d, whose integrand is
  O(1) at every t (for EpsPrediction it is just Z |out - z|^2 / d). The importance density has
  a closed form: for a linear SDE, d sigma^2/dt = 2 f sigma^2 + g^2 and d log alpha^2/dt = 2 f,
  so g^2 / sigma^2 = d/dt log(sigma^2 / alpha^2) = -2 d lambda/dt with lambda = log(alpha / sigma)
  the half log-SNR. Hence q is uniform in lambda: its CDF is
  F(t) = (lambda(t_min) - lambda(t)) / (lambda(t_min) - lambda(T)), Z = 2 (lambda(t_min) - lambda(T)),
  and t = F^{-1}(u), u ~ U(0, 1), is computed from ``process.sigma_edm`` (= exp(-lambda)) by
  bracketing on a grid and Newton steps (:class:`LogSNRUniformTimes`). For VE this is uniform t,
  for EDM log-uniform sigma, for VP/subVP a density ~ 1 / t near 0. With ``importance=False``
  t ~ U(t_min, T) and the weight is (T - t_min) g^2 c^2: the same I, with more variance.
* :class:`EDMLoss` (Karras et al. 2022, Sec. 5 and Table 1): ln sigma ~ N(P_mean, P_std^2),
  x = x_0 + sigma z, weight (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 on
  |D(x, sigma) - x_0|^2 / d, where D is an :class:`EDMPrecond` denoiser. The noise levels are
  those of the variance-exploding scale, so the trained denoiser serves every process through
  ``Score.from_denoiser(D, process)``.

A loss is called as ``loss(model, x0, generator) -> scalar`` (mean over the batch). It is
``compute(model, x0, *draw(x0, generator))``: ``draw`` takes all the randomness of a batch (times
and noise) from ``generator``, so a data-parallel trainer can draw for the global batch and
compute each rank's shard. ``loss.score(model)`` is the :class:`~sdesolve.scores.Score` of a model
trained with it; ``loss.wrap(net)`` is the module the loss trains (``net`` itself, or
``EDMPrecond(net, sigma_data)``).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..scores import Score, labels
from .arguments import constructor_arguments
from .models.edm import EDMPrecond

__all__ = ["Parametrization", "EpsPrediction", "ScorePrediction", "X0Prediction", "VPrediction",
           "Loss", "DenoisingScoreMatching", "LikelihoodWeighted", "EDMLoss", "LogSNRUniformTimes"]


def _pc(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample (B,) coefficient broadcast against x (B, ...) in x's dtype."""
    return c.to(device=x.device, dtype=x.dtype).reshape((-1,) + (1,) * (x.dim() - 1))


# --- parametrizations ------------------------------------------------------------------------
class Parametrization:
    """What a network predicts: its regression ``target`` and the slope ``score_factor`` c(t) of
    the affine map from its output to the score. ``kind`` is the matching ``Score`` kind."""

    kind: str = ""

    def target(self, x0, z, alpha, sigma):
        raise NotImplementedError

    def score_factor(self, alpha, sigma):
        raise NotImplementedError

    def score(self, model, process, time_label) -> Score:
        return Score(model, process, self.kind, time_label)

    def __eq__(self, other):
        return type(self) is type(other)

    def __hash__(self):
        return hash(type(self))

    def __repr__(self):
        return f"{type(self).__name__}()"


class ScorePrediction(Parametrization):
    kind = "score"

    def target(self, x0, z, alpha, sigma):
        return -z / sigma

    def score_factor(self, alpha, sigma):
        return torch.ones_like(sigma)


class EpsPrediction(Parametrization):
    kind = "eps"

    def target(self, x0, z, alpha, sigma):
        return z

    def score_factor(self, alpha, sigma):
        return 1.0 / sigma


class X0Prediction(Parametrization):
    kind = "x0"

    def target(self, x0, z, alpha, sigma):
        return x0

    def score_factor(self, alpha, sigma):
        return alpha / sigma**2


class VPrediction(Parametrization):
    """v = alpha z - sigma x_0 (Salimans & Ho 2022), for any alpha, sigma."""

    kind = "v"

    def target(self, x0, z, alpha, sigma):
        return alpha * z - sigma * x0

    def score_factor(self, alpha, sigma):
        return alpha / ((alpha**2 + sigma**2) * sigma)


# --- time samplers ---------------------------------------------------------------------------
class LogSNRUniformTimes:
    """Times t in [t_min, T] with density proportional to g(t)^2 / sigma(t)^2 = -2 d lambda / dt,
    i.e. lambda(t) = -log sigma_edm(t) uniform on [lambda(T), lambda(t_min)].

    Inversion of F(t) = (lambda(t_min) - lambda(t)) / (lambda(t_min) - lambda(T)): lambda is
    tabulated on a grid of ``grid`` uniform plus ``grid`` geometric times (the geometric part
    resolves the fast change of lambda near t_min, e.g. lambda = -log t for EDM); the target
    lambda is bracketed on it and interpolated linearly, then ``newton`` Newton steps on
    lambda(t) - lambda_target, using lambda'(t) = -g^2 / (2 sigma^2) and kept inside the bracket,
    make the solution exact to rounding (|F(t) - u| ~ 1e-12). ``normalizer`` is
    Z = 2 (lambda(t_min) - lambda(T)) = int g^2 / sigma^2 dt.
    """

    def __init__(self, process, grid: int = 1024, newton: int = 3):
        self.process, self.newton = process, newton
        lo, hi = float(process.t_min), float(process.T)
        ts = torch.linspace(lo, hi, grid + 1, dtype=torch.float64)
        if lo > 0:
            ts = torch.cat([ts, torch.logspace(math.log10(lo), math.log10(hi), grid + 1, dtype=torch.float64)[1:-1]])
        self.ts = torch.unique(ts.clamp(lo, hi))
        self.lams = self._lam(self.ts)
        if not bool((self.lams[1:] < self.lams[:-1]).all()):
            raise ValueError(f"{process!r}: lambda(t) = -log sigma_edm(t) is not strictly decreasing on "
                             f"[t_min, T]; the log-SNR-uniform time sampler needs it to be")
        self._neg_lams = (-self.lams).numpy()
        self.lam_min, self.lam_max = float(self.lams[-1]), float(self.lams[0])
        self.normalizer = 2.0 * (self.lam_max - self.lam_min)

    def _lam(self, t):
        return -torch.log(torch.as_tensor(self.process.sigma_edm(t), dtype=torch.float64))

    def cdf(self, t: torch.Tensor) -> torch.Tensor:
        """F(t) = (lambda(t_min) - lambda(t)) / (lambda(t_min) - lambda(T))."""
        return (self.lam_max - self._lam(torch.as_tensor(t, dtype=torch.float64))) / (self.lam_max - self.lam_min)

    def density(self, t: torch.Tensor) -> torch.Tensor:
        """q(t) = g(t)^2 / (sigma(t)^2 Z)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        _, s = self.process.marginal(t)
        return torch.as_tensor(self.process.g2(t), dtype=torch.float64) / s**2 / self.normalizer

    def inverse_cdf(self, u: torch.Tensor) -> torch.Tensor:
        lam = self.lam_max - torch.as_tensor(u, dtype=torch.float64) * (self.lam_max - self.lam_min)
        # lams is decreasing: bracket lam between grid points i - 1 and i, interpolate linearly
        # (numpy's searchsorted: torch's parallel one is slow on small inputs under CPU contention)
        i = torch.from_numpy(np.searchsorted(self._neg_lams, -lam.numpy())).clamp(1, len(self.ts) - 1)
        lo, hi, l_lo, l_hi = self.ts[i - 1], self.ts[i], self.lams[i - 1], self.lams[i]
        t = lo + (hi - lo) * ((l_lo - lam) / (l_lo - l_hi)).clamp(0, 1)
        for _ in range(self.newton):
            _, sigma = self.process.marginal(t)
            dlam = -0.5 * torch.as_tensor(self.process.g2(t), dtype=torch.float64) / sigma**2
            t = torch.minimum(torch.maximum(t - (self._lam(t) - lam) / dlam, lo), hi)
        return t

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.inverse_cdf(torch.rand(n, generator=generator, dtype=torch.float64))


# --- losses ----------------------------------------------------------------------------------
class Loss:
    """Base class: ``loss(model, x0, generator) = compute(model, x0, *draw(x0, generator))``."""

    process = None

    def draw(self, x0: torch.Tensor, generator: torch.Generator | None = None):
        """(t, z): float64 times (B,) and standard normal noise shaped like x0 (on x0's device),
        all drawn from ``generator`` (on the CPU, so a run draws the same on every device)."""
        raise NotImplementedError

    def per_sample(self, model, x0, t, z) -> torch.Tensor:
        raise NotImplementedError

    def compute(self, model, x0, t, z) -> torch.Tensor:
        return self.per_sample(model, x0, t, z).mean()

    def __call__(self, model, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.compute(model, x0, *self.draw(x0, generator))

    def wrap(self, net: nn.Module) -> nn.Module:
        """The module this loss trains, built around a bare network."""
        return net

    def score(self, model) -> Score:
        raise NotImplementedError

    def _noise(self, x0, generator):
        return torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)

    def __repr__(self):
        show = lambda v: v.__name__ if callable(v) and hasattr(v, "__name__") else repr(v)  # noqa: E731
        return f"{type(self).__name__}({', '.join(f'{k}={show(v)}' for k, v in constructor_arguments(self).items())})"


class _WeightedScoreMatching(Loss):
    """E_t w(t) c(t)^2 |model(x_t, label(t)) - target|^2 / d, with t and w from the subclass."""

    def __init__(self, process, param: Parametrization, time_label):
        if not isinstance(param, Parametrization):
            raise TypeError(f"{type(self).__name__}: param must be a Parametrization object "
                            f"(EpsPrediction(), ...), got {param!r}")
        self.process, self.param, self.time_label = process, param, time_label

    def times(self, n, generator):
        raise NotImplementedError

    def weight(self, t, alpha, sigma):
        raise NotImplementedError

    def draw(self, x0, generator=None):
        return self.times(x0.shape[0], generator), self._noise(x0, generator)

    def per_sample(self, model, x0, t, z):
        alpha, sigma = self.process.marginal(t)
        a, s = _pc(alpha, x0), _pc(sigma, x0)
        xt = a * x0 + s * z
        out = model(xt, self.time_label(self.process, t).to(device=x0.device, dtype=x0.dtype))
        err = (out - self.param.target(x0, z, a, s)).pow(2).reshape(x0.shape[0], -1).mean(1)
        w = self.weight(t, alpha, sigma) * self.param.score_factor(alpha, sigma) ** 2
        return w.to(device=x0.device, dtype=x0.dtype) * err

    def score(self, model) -> Score:
        return self.param.score(model, self.process, self.time_label)


class DenoisingScoreMatching(_WeightedScoreMatching):
    """lambda(t) = sigma(t)^2, t ~ U(t_min, T)."""

    def __init__(self, process, param: Parametrization = EpsPrediction(), time_label=labels.edm_c_noise):
        super().__init__(process, param, time_label)

    def times(self, n, generator):
        p = self.process
        return p.t_min + (p.T - p.t_min) * torch.rand(n, generator=generator, dtype=torch.float64)

    def weight(self, t, alpha, sigma):
        return sigma**2


class LikelihoodWeighted(_WeightedScoreMatching):
    """lambda(t) = g(t)^2; with ``importance`` t ~ g^2 / sigma^2 (log-SNR uniform), else uniform."""

    def __init__(self, process, param: Parametrization = EpsPrediction(), time_label=labels.edm_c_noise,
                 importance: bool = True):
        super().__init__(process, param, time_label)
        self.importance = bool(importance)
        self.sampler = LogSNRUniformTimes(process) if importance else None

    def times(self, n, generator):
        if self.importance:
            return self.sampler.sample(n, generator)
        p = self.process
        return p.t_min + (p.T - p.t_min) * torch.rand(n, generator=generator, dtype=torch.float64)

    def weight(self, t, alpha, sigma):
        if self.importance:
            return torch.full_like(sigma, self.sampler.normalizer) * sigma**2
        p = self.process
        return (p.T - p.t_min) * torch.as_tensor(p.g2(t), dtype=torch.float64)


class EDMLoss(Loss):
    """Karras et al. 2022: ln sigma ~ N(P_mean, P_std^2), weight (sigma^2 + sigma_data^2) / (sigma sigma_data)^2.

    ``model`` is the denoiser D(x, sigma) (an :class:`EDMPrecond`; ``wrap(net)`` builds it)."""

    time_label = staticmethod(labels.sigma)

    def __init__(self, process, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 0.5):
        if not (P_std > 0 and sigma_data > 0):
            raise ValueError(f"EDMLoss: need P_std > 0 and sigma_data > 0, got {P_std}, {sigma_data}")
        self.process, self.P_mean, self.P_std, self.sigma_data = process, float(P_mean), float(P_std), float(sigma_data)

    def draw(self, x0, generator=None):
        n = torch.randn(x0.shape[0], generator=generator, dtype=torch.float64)
        return torch.exp(self.P_mean + self.P_std * n), self._noise(x0, generator)

    def per_sample(self, model, x0, sigma, z):
        sd2 = self.sigma_data**2
        w = (sigma**2 + sd2) / (sigma * self.sigma_data) ** 2
        d = model(x0 + _pc(sigma, x0) * z, sigma.to(device=x0.device, dtype=x0.dtype))
        return w.to(device=x0.device, dtype=x0.dtype) * (d - x0).pow(2).reshape(x0.shape[0], -1).mean(1)

    def wrap(self, net):
        return EDMPrecond(net, self.sigma_data)

    def score(self, model) -> Score:
        return Score.from_denoiser(model, self.process, check=False)  # the checkpoint records what it is
