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
    velocity  u_hat = alpha' x0_hat + sigma' z_hat (flow matching; alpha', sigma' = d/dt on the
              model's own path, ``Score.process``)

One table (a = alpha, s = sigma, a' s' their time derivatives, det = a s' - s a' = -a s dlambda/dt):

    from \ to   x0_hat                 z_hat                   score                u (velocity)
    score sc    (x + s^2 sc) / a        -s sc                   sc                   a' x0 + s' z
    eps z_hat   (x - s z_hat) / a       z_hat                   -z_hat / s           a' x0 + s' z
    x0          x0_hat                  (x - a x0_hat) / s      (a x0 - x) / s^2     a' x0 + s' z
    v           (a x - s v)/(a^2+s^2)   (s x + a v)/(a^2+s^2)   -z_hat / s           a' x0 + s' z
    velocity u  (s' x - s u) / det      (a u - a' x) / det      -z_hat / s           u
    (v = a z - s x0 is diffusers' v_prediction; on the linear path u = z - x0, x0 = x - t u,
     z = x + (1 - t) u; on a variance-preserving path with a = cos, s = sin of (pi t / 2),
     u = (pi / 2) v)

A velocity is a time derivative, so unlike the other predictions it depends on how the path is
timed: a velocity model evaluated on another process (a time-shifted one, say) is called at the
time of the same log-SNR on its own path, with its input rescaled by sigma_own / sigma, and its
prediction converted through x0_hat and z_hat (which do not depend on the timing).

and reads time through a label: ``labels.continuous`` (t itself), ``labels.discrete(N)``
(t (N - 1), score_sde's and DDPM's integer-valued label), ``labels.sigma`` (sigma / alpha) or
``labels.edm_c_noise`` (log(sigma / alpha) / 4, EDM's c_noise). A ``Score`` is called as
``score(x, t)`` with x of shape (B, ...) and t a float64 tensor of shape (B,), and converts to
any of the other predictions exactly, given the process.
"""
from __future__ import annotations

import copy
import functools

import torch

from . import labels
from .model_check import ModelCheck, _first_rows, _probe_batch, check_model
from .tensors import PointTable, per_sample, shared_time

__all__ = ["Score", "ExternalScore", "labels"]


class Score:
    """A score function s(x, t) built from a model with a known parametrization.

    ``Score(fn)`` wraps a plain ``fn(x, t) -> score``. The ``from_*`` constructors wrap a model
    called as ``model(x, label, **kwargs)``; ``label_dtype`` (default: x's dtype) is what the
    label is cast to before the call. The native prediction is converted to whichever quantity a
    solver asks for (``score_of``, ``denoised_of``, ``eps_of``), so no precision is lost going
    through the score when the solver wants the denoised prediction.
    """

    kinds = ("score", "eps", "x0", "v", "denoiser", "velocity")
    _marginals = None  # (process, PointTable of its alpha, sigma, sigma^2): the conversions on a fixed grid

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
    def from_eps(cls, model, process, time_label=labels.continuous, *, check: bool = True, check_tol: float = 0.5,
                 **kw):
        """A noise-prediction model (DDPM, score_sde's VP models): model(x_t, label(t)) = z_hat, the
        estimate of z in x_t = alpha x_0 + sigma z; score = -z_hat / sigma. ``check=True`` (default)
        probes the model once, before its first use (see :meth:`_adapter`); ``check=False`` skips it."""
        return cls._adapter(model, process, "eps", time_label, check, check_tol, kw)

    @classmethod
    def from_x0(cls, model, process, time_label=labels.continuous, *, check: bool = True, check_tol: float = 0.5,
                **kw):
        """A data-prediction model: model(x_t, label(t)) = x0_hat = E[x_0 | x_t];
        score = (alpha x0_hat - x_t) / sigma^2 (Tweedie). First-use check as :meth:`from_eps`."""
        return cls._adapter(model, process, "x0", time_label, check, check_tol, kw)

    @classmethod
    def from_v(cls, model, process, time_label=labels.continuous, *, check: bool = True, check_tol: float = 0.5,
               **kw):
        """A v-prediction model (Salimans & Ho 2022; diffusers' ``prediction_type="v_prediction"``):
        model(x_t, label(t)) = v_hat = alpha z - sigma x_0; x0_hat = (alpha x_t - sigma v_hat) /
        (alpha^2 + sigma^2). First-use check as :meth:`from_eps`."""
        return cls._adapter(model, process, "v", time_label, check, check_tol, kw)

    @classmethod
    def from_velocity(cls, model, process, time_label=labels.continuous, *, check: bool = True,
                      check_tol: float = 0.5, **kw):
        """A flow-matching model: u = alpha'(t) x_0 + sigma'(t) z on ``process`` (its training path).
        First-use check as :meth:`from_eps` (at pure noise, the velocity's component along z must be
        about sigma'(T): see :func:`sdesolve.model_check.check_model`)."""
        if process is None:
            raise ValueError("Score.from_velocity needs the path the velocity is defined on")
        return cls._adapter(model, process, "velocity", time_label, check, check_tol, kw)

    @classmethod
    def from_denoiser(cls, model, process, time_label=labels.sigma, *, check: bool = True, check_tol: float = 0.5,
                      **kw):
        """An EDM-style denoiser (Karras et al. 2022; k-diffusion): D(x_t / alpha, label) = x0_hat on
        the variance-exploding scale, labelled by sigma / alpha by default. First-use check as
        :meth:`from_eps`."""
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
        """(alpha, sigma, sigma^2) at t, per sample against x (one-element on a fixed grid's point)."""
        memo = self._marginals
        if memo is None or memo[0] is not process:
            memo = self._marginals = (process, PointTable(functools.partial(_marginal_and_variance, process)))
        row = memo[1].lookup(t, x.dtype if x.dtype in _ROW_DTYPES else torch.float64)
        if row is not None:  # one-element CPU tensors: numbers in arithmetic with x
            return row
        a, s, s2 = _marginal_and_variance(process, shared_time(t))
        return per_sample(a, x), per_sample(s, x), per_sample(s2, x)

    def _x0_eps(self, x, t, p):
        """(x0_hat, z_hat) of a velocity model from one call (see the module docstring)."""
        p0 = self.process
        if p0 is p:
            tau, xin = t, x
        else:  # the same log-SNR on the model's own path, the input rescaled to it
            tau = p0.t_of_lam(p.lam(t))
            xin = x * per_sample(p0.sigma(tau) / p.sigma(t), x)
        u = self.predict(xin, tau, p0)
        a, s = p0.marginal(tau)
        da, ds = p0.d_marginal(tau)
        det = a * ds - s * da
        x0 = per_sample(ds / det, x) * xin - per_sample(s / det, x) * u
        eps = per_sample(a / det, x) * u - per_sample(da / det, x) * xin
        return x0, eps, u

    def velocity_of(self, x, t, process=None):
        """u = alpha'(t) x0_hat + sigma'(t) z_hat on ``process`` (the model's output itself for a
        velocity model on its own path)."""
        p = self._process(process)
        if self.kind == "velocity":
            x0, eps, u = self._x0_eps(x, t, p)
            if p is self.process:
                return u
        else:
            x0 = self.denoised_of(x, t, p)
            a, s, _ = self._coeffs(t, x, p)
            eps = (x - a * x0) / s
        da, ds = p.d_marginal(t)
        return per_sample(da, x) * x0 + per_sample(ds, x) * eps

    def velocity_and_score(self, x, t, process=None):
        """(velocity, score) from one model call."""
        p = self._process(process)
        if self.kind == "velocity":
            x0, eps, u = self._x0_eps(x, t, p)
            if p is not self.process:
                da, ds = p.d_marginal(t)
                u = per_sample(da, x) * x0 + per_sample(ds, x) * eps
        else:
            x0 = self.denoised_of(x, t, p)
            a, s, _ = self._coeffs(t, x, p)
            eps = (x - a * x0) / s
            da, ds = p.d_marginal(t)
            u = per_sample(da, x) * x0 + per_sample(ds, x) * eps
        return u, -eps / per_sample(p.sigma(t), x)

    def denoised_of(self, x, t, process=None):
        p = self._process(process)
        if self.kind == "velocity":
            return self._x0_eps(x, t, p)[0]
        out = self.predict(x, t, p)
        if self.kind in ("x0", "denoiser"):
            return out
        a, s, s2 = self._coeffs(t, x, p)
        if self.kind == "score":
            return _addcmul(x, out, s2) / a
        if self.kind == "eps":
            return _addcmul(x, out, s, -1.0) / a
        return (a * x - s * out) / (a * a + s2)  # v

    def eps_of(self, x, t, process=None):
        p = self._process(process)
        if self.kind == "velocity":
            return self._x0_eps(x, t, p)[1]
        out = self.predict(x, t, p)
        if self.kind == "eps":
            return out
        a, s, s2 = self._coeffs(t, x, p)
        if self.kind == "score":
            return -s * out
        if self.kind == "v":
            return (s * x + a * out) / (a * a + s2)
        return (x - a * out) / s  # x0, denoiser

    def score_of(self, x, t, process=None):
        p = self._process(process) if self.kind != "score" else process
        if self.kind == "velocity":
            return -self._x0_eps(x, t, p)[1] / per_sample(p.sigma(t), x)
        out = self.predict(x, t, p)
        if self.kind == "score":
            return out
        a, s, s2 = self._coeffs(t, x, p)
        if self.kind == "eps":
            return -out / s
        if self.kind == "v":
            return -(s * x + a * out) / ((a * a + s2) * s)
        return (a * out - x) / s2  # x0, denoiser

    def __repr__(self):
        return f"Score(kind={self.kind}, time_label={getattr(self.time_label, '__name__', self.time_label)})"


#: state dtypes whose fixed-grid coefficients are handed out in the state's dtype (float64 otherwise)
_ROW_DTYPES = (torch.float32, torch.float64)


def _marginal_and_variance(process, t):
    a, s = process.marginal(t)
    return a, s, s * s


def _addcmul(x, v, c, value: float = 1.0):
    """x + value c v, in one pass when c is a tensor (one-element or per sample)."""
    return torch.addcmul(x, v, c, value=value) if isinstance(c, torch.Tensor) else x + (value * c) * v


class ExternalScore(Score):
    """A :class:`Score` of an external model that runs :func:`check_model` once, before its first
    evaluation, on the sample shape, device and dtype it is first called with (or at once, when
    the adapter knows the sample shape). ``model`` is the wrapped module (for ``.to(device)``)."""

    def __init__(self, fn, process, kind, time_label, *, model=None, check: bool = True, check_tol: float = 0.5,
                 label_dtype=None, **model_kwargs):
        super().__init__(fn, process, kind, time_label, label_dtype=label_dtype, **model_kwargs)
        self.model = model
        self.check_tol = float(check_tol)
        self._pending = bool(check)
        self.last_check: ModelCheck | None = None

    def check(self, shape, device=None, dtype=torch.float32) -> ModelCheck:
        """Run the model check now (see :func:`check_model`). Per-sample conditioning tensors among
        the model's keyword arguments are probed with their first row, repeated."""
        self._pending = False
        kwargs = self.model_kwargs
        B = _probe_batch(shape)
        probe = copy.copy(self)
        probe.model_kwargs = {k: _first_rows(v, B) for k, v in kwargs.items()}
        try:
            self.last_check = check_model(probe, self.process, shape, batch=B, device=device, dtype=dtype,
                                          tol=self.check_tol)
        except BaseException:
            self._pending = True  # every later use raises again
            raise
        return self.last_check

    def predict(self, x, t, process=None):
        if self._pending:
            self.check(x.shape[1:], device=x.device, dtype=x.dtype)
        return super().predict(x, t, process)

    def without_check(self) -> "ExternalScore":
        """A copy that never runs the check (used by transforms that call the model in other ways)."""
        other = copy.copy(self)
        other._pending = False
        return other
