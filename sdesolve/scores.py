"""Scores from models of any parametrization, labelled with any time convention.

A model trained elsewhere predicts one of (with x_t = alpha x_0 + sigma z):

    score     s = grad log p_t(x_t)
    eps       z_hat,                     s = -z_hat / sigma
    x0        x0_hat,                    s = (alpha x0_hat - x) / sigma^2
    v         v_hat = alpha z - sigma x0 (Salimans & Ho 2022); x0_hat = alpha x - sigma v_hat,
              z_hat = sigma x + alpha v_hat   (for alpha^2 + sigma^2 = 1; in general we use
              x0_hat = (alpha x - sigma v_hat) / (alpha^2 + sigma^2) and the matching z_hat)
    denoiser  D(x / alpha, sigma / alpha) = x0_hat: an EDM-style denoiser trained on the
              variance-exploding scale (Karras et al. 2022), called on the rescaled input

and reads time through a label: ``labels.continuous`` (t itself), ``labels.discrete(N)``
(t (N - 1), score_sde's and DDPM's integer-valued label), ``labels.sigma`` (sigma / alpha) or
``labels.edm_c_noise`` (log(sigma / alpha) / 4, EDM's c_noise). A ``Score`` is called as
``score(x, t)`` with x of shape (B, ...) and t a float64 tensor of shape (B,), and converts to
any of the other predictions exactly, given the process.
"""
from __future__ import annotations

import torch

from . import labels
from .tensors import per_sample

__all__ = ["Score", "labels"]


class Score:
    """A score function s(x, t) built from a model with a known parametrization.

    ``Score(fn)`` wraps a plain ``fn(x, t) -> score``. The ``from_*`` constructors wrap a model
    called as ``model(x, label, **kwargs)``; ``label_dtype`` (default: x's dtype) is what the
    label is cast to before the call. The native prediction is converted to whichever quantity a
    solver asks for (``score_of``, ``denoised_of``, ``eps_of``), so no precision is lost going
    through the score when the solver wants the denoised prediction.
    """

    kinds = ("score", "eps", "x0", "v", "denoiser")

    def __init__(self, fn, process=None, kind: str = "score", time_label=labels.continuous,
                 label_dtype=None, **model_kwargs):
        if kind not in self.kinds:
            raise ValueError(f"kind must be one of {self.kinds}, got {kind!r}")
        self.fn, self.process, self.kind = fn, process, kind
        self.time_label, self.label_dtype, self.model_kwargs = time_label, label_dtype, model_kwargs
        self._plain = kind == "score" and time_label is labels.continuous and not model_kwargs

    # constructors --------------------------------------------------------------------------
    @classmethod
    def from_score(cls, model, process=None, time_label=labels.continuous, **kw):
        """A model of the score itself: model(x_t, label(t), **kw) = grad_x log p_t(x_t)."""
        return cls(model, process, "score", time_label, **kw)

    @classmethod
    def from_eps(cls, model, process, time_label=labels.continuous, **kw):
        """A noise-prediction model (DDPM, score_sde's VP models): model(x_t, label(t)) = z_hat, the
        estimate of z in x_t = alpha x_0 + sigma z; score = -z_hat / sigma."""
        return cls(model, process, "eps", time_label, **kw)

    @classmethod
    def from_x0(cls, model, process, time_label=labels.continuous, **kw):
        """A data-prediction model: model(x_t, label(t)) = x0_hat = E[x_0 | x_t];
        score = (alpha x0_hat - x_t) / sigma^2 (Tweedie)."""
        return cls(model, process, "x0", time_label, **kw)

    @classmethod
    def from_v(cls, model, process, time_label=labels.continuous, **kw):
        """A v-prediction model (Salimans & Ho 2022; diffusers' ``prediction_type="v_prediction"``):
        model(x_t, label(t)) = v_hat = alpha z - sigma x_0; x0_hat = (alpha x_t - sigma v_hat) /
        (alpha^2 + sigma^2)."""
        return cls(model, process, "v", time_label, **kw)

    @classmethod
    def from_denoiser(cls, model, process, time_label=labels.sigma, **kw):
        """An EDM-style denoiser (Karras et al. 2022; k-diffusion): D(x_t / alpha, label) = x0_hat on
        the variance-exploding scale, labelled by sigma / alpha by default."""
        return cls(model, process, "denoiser", time_label, **kw)

    # the model call --------------------------------------------------------------------------
    def _process(self, process):
        p = process if process is not None else self.process
        if p is None and self.kind != "score":
            raise ValueError(f"a Score from a {self.kind} model needs a process to convert its prediction")
        return p

    def predict(self, x: torch.Tensor, t: torch.Tensor, process=None) -> torch.Tensor:
        """The model's native prediction at (x, t)."""
        p = self._process(process)
        if self._plain:
            return self.fn(x, t)
        label = self.time_label(p, t).to(device=x.device, dtype=self.label_dtype or x.dtype)
        inp = x
        if self.kind == "denoiser":
            inp = x / per_sample(p.alpha(t), x)
        out = self.fn(inp, label, **self.model_kwargs)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the {self.kind} model returned {type(out).__name__}, not a tensor")
        if out.shape != x.shape:
            raise ValueError(f"the {self.kind} model returned shape {tuple(out.shape)} for input shape "
                             f"{tuple(x.shape)} (a model predicting something else, or wrong channels?)")
        return out

    def graph_key(self) -> tuple:
        """(key, refs): the identity of this score for a captured CUDA graph (the model and its
        time label by id, its parametrization and extra model arguments), and the objects named."""
        kwargs = tuple(sorted(self.model_kwargs.items()))
        key = (id(self.fn), self.kind, id(self.time_label), self.label_dtype, tuple((k, id(v)) for k, v in kwargs))
        return key, (self.fn, self.time_label, kwargs)

    def __call__(self, x, t, process=None):
        return self.score_of(x, t, process)

    # conversions -------------------------------------------------------------------------------
    def _coeffs(self, t, x, process):
        a, s = process.marginal(t)
        return per_sample(a, x), per_sample(s, x)

    def denoised_of(self, x, t, process=None):
        p = self._process(process)
        out = self.predict(x, t, p)
        if self.kind in ("x0", "denoiser"):
            return out
        a, s = self._coeffs(t, x, p)
        if self.kind == "score":
            return (x + s * s * out) / a
        if self.kind == "eps":
            return (x - s * out) / a
        return (a * x - s * out) / (a * a + s * s)  # v

    def eps_of(self, x, t, process=None):
        p = self._process(process)
        out = self.predict(x, t, p)
        if self.kind == "eps":
            return out
        a, s = self._coeffs(t, x, p)
        if self.kind == "score":
            return -s * out
        if self.kind == "v":
            return (s * x + a * out) / (a * a + s * s)
        return (x - a * out) / s  # x0, denoiser

    def score_of(self, x, t, process=None):
        p = self._process(process) if self.kind != "score" else process
        out = self.predict(x, t, p)
        if self.kind == "score":
            return out
        a, s = self._coeffs(t, x, p)
        if self.kind == "eps":
            return -out / s
        if self.kind == "v":
            return -(s * x + a * out) / ((a * a + s * s) * s)
        return (a * out - x) / (s * s)  # x0, denoiser

    def __repr__(self):
        return f"Score(kind={self.kind}, time_label={getattr(self.time_label, '__name__', self.time_label)})"
