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

from .tensors import per_sample

__all__ = ["Score", "labels"]


class labels:
    """Time-label conventions: functions (process, t) -> label of shape (B,), float64."""

    @staticmethod
    def continuous(process, t):
        return t

    @staticmethod
    def discrete(N: int):
        """t (N - 1): the label of a model trained on N discrete steps indexed 0..N-1."""
        def label(process, t):
            return t * (N - 1)
        label.__name__ = f"discrete({N})"
        return label

    @staticmethod
    def sigma(process, t):
        return process.sigma_edm(t)

    @staticmethod
    def edm_c_noise(process, t):
        return torch.log(process.sigma_edm(t)) / 4.0


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
        return cls(model, process, "score", time_label, **kw)

    @classmethod
    def from_eps(cls, model, process, time_label=labels.continuous, *, check: bool = True, check_tol: float = 0.5,
                 **kw):
        """A noise-prediction model. ``check=True`` (default) probes the model once, before its
        first use (see below); ``check=False`` skips it."""
        return cls._adapter(model, process, "eps", time_label, check, check_tol, kw)

    @classmethod
    def from_x0(cls, model, process, time_label=labels.continuous, *, check: bool = True, check_tol: float = 0.5,
                **kw):
        """A data-prediction model (first-use check as :meth:`from_eps`)."""
        return cls._adapter(model, process, "x0", time_label, check, check_tol, kw)

    @classmethod
    def from_v(cls, model, process, time_label=labels.continuous, *, check: bool = True, check_tol: float = 0.5,
               **kw):
        """A v-prediction model (first-use check as :meth:`from_eps`)."""
        return cls._adapter(model, process, "v", time_label, check, check_tol, kw)

    @classmethod
    def from_denoiser(cls, model, process, time_label=labels.sigma, *, check: bool = True, check_tol: float = 0.5,
                      **kw):
        """A denoiser D(x, sigma) (first-use check as :meth:`from_eps`)."""
        return cls._adapter(model, process, "denoiser", time_label, check, check_tol, kw)

    @classmethod
    def _adapter(cls, model, process, kind, time_label, check, check_tol, kw):
        """The first-use model check is the one of the external adapters
        (:class:`sdesolve.external.ExternalScore`, :func:`sdesolve.external.check_model`): on the
        first call, before anything is computed, the model is probed on a small batch of pure noise
        at t = T and at a middle noise level (a handful of extra model calls on at most 64 samples,
        once), and a model whose parametrization, time label or input scale does not fit (a
        VE-style eps model on a VP process, an x0 model declared as eps) raises
        :class:`~sdesolve.external.ModelCheckError` instead of sampling noise silently. The check
        reads its figures on the host once; to keep a fixed-step loop free of host synchronisation
        (CUDA graphs), run it beforehand with ``score.check(sample_shape, device, dtype)``."""
        if not check:
            return cls(model, process, kind, time_label, **kw)
        from torch import nn

        from .external import ExternalScore
        return ExternalScore(model, process, kind, time_label, model=model if isinstance(model, nn.Module) else None,
                             check=True, check_tol=check_tol, **kw)

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
