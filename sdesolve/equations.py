"""Equations a solver integrates: a drift, a diffusion, and for diffusion models the process and
the model's predictions. A solver sees only these methods, never a model.

    ODE(vector_field)            dx = v(t, x) dt
    SDE(drift, diffusion, noise) dx = f(t, x) dt + g(t, x) dW      (Ito, diagonal/scalar/additive)
    ReverseSDE(process, score)   dx = [f(t) x - g(t)^2 s(x, t)] dt + g(t) dW_bar,  t from T down
    ProbabilityFlowODE(process, score)  dx/dt = f(t) x - g(t)^2 s(x, t) / 2

Every evaluation of the drift (for diffusion equations: of the score model) is counted in
``nfe`` (calls) and ``sample_nfe`` (per-sample evaluations, i.e. the summed batch sizes).
``t`` is always a float64 tensor of shape (B,).
"""
from __future__ import annotations

import torch

from .tensors import PointTable, per_sample, shared_time

__all__ = ["Equation", "ODE", "SDE", "DiffusionEquation", "ReverseSDE", "ProbabilityFlowODE", "VelocityODE", "VelocitySDE",
           "NOISE_TYPES"]

NOISE_TYPES = ("diagonal", "scalar", "additive")


class Equation:
    """Base class: counts evaluations and validates what user callables return."""

    is_sde: bool = False
    noise_type: str | None = None
    process = None

    def __init__(self):
        self.reset_counts()

    def reset_counts(self):
        self.nfe = 0
        self.sample_nfe = 0

    def _count(self, x: torch.Tensor):
        self.nfe += 1
        self.sample_nfe += x.shape[0]

    @staticmethod
    def _check_out(out, x: torch.Tensor, what: str) -> torch.Tensor:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"{what} must return a tensor, got {type(out).__name__}")
        if out.shape != x.shape:
            raise ValueError(f"{what} returned shape {tuple(out.shape)} for an input of shape {tuple(x.shape)}")
        return out

    def drift(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def diffusion(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} is an ODE: it has no diffusion")

    def score_linear(self):
        """``(f, c, g)``, functions of the float64 time, when this equation is
        dx = [f(t) x + c(t) score(t, x)] dt + g(t) dW (``g`` None for an ODE): what lets a solver
        fold the coefficients of a fixed grid's steps into one fused update each
        (:class:`sdesolve.EulerMaruyama`); None (the default) for any other equation."""
        return None

    def graph_key(self) -> tuple:
        """(key, refs): what a captured CUDA graph of a loop over this equation depends on (the
        key, compared by value), and the objects the key names by id (kept alive with the graph)."""
        return (id(self),), (self,)


class ODE(Equation):
    """dx/dt = vector_field(t, x), ``t`` of shape (B,)."""

    def __init__(self, vector_field):
        super().__init__()
        self.vector_field = vector_field

    def drift(self, t, x):
        self._count(x)
        return self._check_out(self.vector_field(t, x), x, "the vector field")


class SDE(Equation):
    """Ito SDE dx = drift(t, x) dt + diffusion(t, x) dW.

    ``noise`` declares the structure of the diffusion: "diagonal" (diffusion returns a tensor
    shaped like x, one independent Brownian motion per element), "scalar" (as diagonal, one
    Brownian motion shared by all elements of a sample) or "additive" (diagonal and independent
    of x, which is what order-1.5 additive-noise schemes need).
    """

    is_sde = True

    def __init__(self, drift, diffusion, noise: str = "diagonal"):
        super().__init__()
        if noise not in NOISE_TYPES:
            raise ValueError(f"noise must be one of {NOISE_TYPES}, got {noise!r}")
        self._drift, self._diffusion, self.noise_type = drift, diffusion, noise

    def drift(self, t, x):
        self._count(x)
        return self._check_out(self._drift(t, x), x, "the drift")

    def diffusion(self, t, x):
        g = self._diffusion(t, x)
        if not isinstance(g, torch.Tensor):
            g = torch.full((), float(g), dtype=x.dtype, device=x.device)
        if g.dim() == 1 and g.shape[0] == x.shape[0] and x.dim() > 1:
            g = per_sample(g, x)
        return g


class DiffusionEquation(Equation):
    """An equation of a diffusion model: what the diffusion-specific solvers (DDIM, DPM-Solver,
    UniPC, EDM's Heun, ancestral and reverse-diffusion steps, Langevin correctors) ask for.

    ``process``: the forward process (its marginals x_t = alpha(t) x_0 + sigma(t) z, log-SNR, SDE
    coefficients); ``score_at(t, x)`` = grad_x log p_t(x); ``denoised(t, x)`` = E[x_0 | x_t = x];
    ``eps(t, x)`` = E[z | x_t = x]; each one model evaluation, counted in ``nfe``. The drift is the
    reverse SDE's (:class:`ReverseSDE`) or the probability-flow ODE's (:class:`ProbabilityFlowODE`);
    ``companion()`` is the other one, on the same process and score.
    """

    def __init__(self, process, score):
        super().__init__()
        from .scores import Score

        self.process = process
        self.score = score if isinstance(score, Score) else Score(score)
        # f, g^2, g and g^2 / 2 at the points of a fixed grid, computed for the whole grid at once
        self._on_grid = PointTable(_coefficients_of(process))

    def _f_g2(self, t):
        """(f(t), g(t)^2): one-element for a time the batch shares, else (B,)."""
        row = self._on_grid.lookup(t)
        if row is not None:
            return row[0], row[1]
        t = shared_time(t)
        return self.process.f(t), self.process.g2(t)

    def _predict(self, t, x, kind: str) -> torch.Tensor:
        if not (isinstance(t, torch.Tensor) and t.dim() == 1 and t.shape[0] == x.shape[0]):
            if isinstance(t, torch.Tensor) and t.dim() <= 1 and t.numel() == 1:
                t = t.reshape(1).expand(x.shape[0])  # one time for the batch (see sdesolve.tensors.shared_time)
            else:
                raise ValueError(f"the score needs t of shape ({x.shape[0]},), got "
                                 f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        self._count(x)
        out = getattr(self.score, kind)(x, t, self.process)
        if isinstance(out, torch.Tensor) and out.shape == x.shape:
            return out
        return self._check_out(out, x, f"the score model ({kind})")

    def score_at(self, t, x):
        """grad_x log p_t(x)."""
        return self._predict(t, x, "score_of")

    def denoised(self, t, x):
        """E[x_0 | x_t = x] (Tweedie): (x + sigma^2 score) / alpha."""
        return self._predict(t, x, "denoised_of")

    def eps(self, t, x):
        """E[z | x_t = x] = -sigma score."""
        return self._predict(t, x, "eps_of")

    def g2(self, t, x):
        return per_sample(self._f_g2(t)[1], x)

    def companion(self) -> "DiffusionEquation":
        """The other equation of this process and score (the probability-flow ODE of a reverse
        SDE, and the reverse SDE of a probability-flow ODE), whose model evaluations are counted
        on this one: what a predictor-corrector step with a deterministic predictor integrates."""
        other = (ProbabilityFlowODE if self.is_sde else ReverseSDE)(self.process, self.score)
        other._count = self._count
        return other

    def graph_key(self) -> tuple:
        what, refs = self.score.graph_key()
        return (type(self), id(self.process), repr(self.process)) + what, (self.process,) + refs


def _coefficients_of(process):
    def columns(t):
        g2 = process.g2(t)
        return process.f(t), g2, torch.sqrt(g2), 0.5 * g2
    return columns


class ReverseSDE(DiffusionEquation):
    """The reverse-time SDE of Anderson (1982) / Song et al. (2021), integrated with dt < 0:
    dx = [f(t) x - g(t)^2 s(x, t)] dt + g(t) dW_bar. The noise is additive."""

    is_sde = True
    noise_type = "additive"

    def drift(self, t, x):
        s = self.score_at(t, x)
        f, g2 = self._f_g2(t)
        return per_sample(f, x) * x - per_sample(g2, x) * s

    def diffusion(self, t, x):
        row = self._on_grid.lookup(t)
        return per_sample(row[2] if row is not None else torch.sqrt(self.process.g2(shared_time(t))), x)

    def score_linear(self):
        p = self.process
        return p.f, lambda t: -p.g2(t), lambda t: torch.sqrt(p.g2(t))


class ProbabilityFlowODE(DiffusionEquation):
    """dx/dt = f(t) x - g(t)^2 s(x, t) / 2, whose solution has the marginals p_t of the process."""

    def drift(self, t, x):
        s = self.score_at(t, x)
        row = self._on_grid.lookup(t)
        if row is not None:
            return row[0] * x - row[3] * s
        t = shared_time(t)
        return per_sample(self.process.f(t), x) * x - 0.5 * per_sample(self.process.g2(t), x) * s

    def score_linear(self):
        p = self.process
        return p.f, lambda t: -0.5 * p.g2(t), None


class VelocityODE(ProbabilityFlowODE):
    """The probability-flow ODE of a Gaussian path in velocity form: dx/dt = u(x, t) =
    alpha' E[x_0|x] + sigma' E[z|x] (one model call; the model's own output for a velocity model)."""

    def drift(self, t, x):
        return self._predict(t, x, "velocity_of")

    def score_linear(self):
        return None  # the drift is the model's velocity


class VelocitySDE(ReverseSDE):
    """dx = [u(x, t) - g~(t)^2 score / 2] dt + g~(t) dW_bar, integrated from T down: the reverse
    SDE of a Gaussian path with diffusion g~ (``diffusion``: None for g, a number, or a function of
    the float64 times (B,)); one model call per drift evaluation."""

    def __init__(self, process, score, diffusion=None):
        super().__init__(process, score)
        self.extra = diffusion

    def score_linear(self):
        return None  # the drift is the model's velocity

    def g2_tilde(self, t) -> torch.Tensor:
        if self.extra is None:
            return self.process.g2(t)
        g = self.extra(t) if callable(self.extra) else self.extra
        g = torch.as_tensor(g, dtype=torch.float64, device=t.device)
        if (g < 0).any():
            raise ValueError(f"the reverse SDE's diffusion g~(t) must be >= 0, got {g.min().item():.3g} at some t")
        return torch.broadcast_to(g, t.shape) ** 2

    def drift(self, t, x):
        self._count(x)
        p = self.process
        u, s = self.score.velocity_and_score(x, t, p)
        self._check_out(u, x, "the score model (velocity)")
        return u - 0.5 * per_sample(self.g2_tilde(t), x).to(x.dtype) * s

    def diffusion(self, t, x):
        return per_sample(torch.sqrt(self.g2_tilde(t)), x)
