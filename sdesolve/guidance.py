"""Controllable generation: score transforms and solver hooks.

Score transforms take a :class:`~sdesolve.scores.Score` and return a Score, so the equation and
every solver stay as they are:

    ClassifierGuidance(score, classifier, y, scale)
        s(x, t) + scale * grad_x log p_t(y | x)                       (Dhariwal & Nichol 2021;
        Song et al. 2021, Sec. 5). ``classifier(x, t)`` returns logits (or log-probabilities) of
        shape (B, K); or give ``log_prob_grad(x, t, y)`` directly. With the exact time-dependent
        classifier, scale 1 gives the exact class-conditional score: grad log p_t(x) +
        grad log p_t(y | x) = grad log p_t(x | y).
    ClassifierFreeGuidance(score, cond, uncond, scale)
        s_u + scale (s_c - s_u)  (Ho & Salimans 2021), for a model taking its condition as a keyword
        argument; conditional and unconditional predictions come from ONE model call on the
        batch concatenated with itself. The combination is made on the model's native prediction
        (eps, x0, v, ...): every conversion to the score is affine in it with the same
        coefficients, so this is the same as combining scores. Written s_c + (scale - 1)(s_c - s_u),
        scale 1 returns the conditional prediction exactly.

Note that s_u + w (s_c - s_u) = grad log p_t(x) + w grad log p_t(y | x): classifier-free
guidance at scale w is classifier guidance at scale w with the implicit classifier. For w != 1
the guided scores are the scores of p_t(x) p_t(y | x)^w at each t, which are not the marginals of
one diffusion, so samplers do not draw from p_0(x) p_0(y | x)^w (see tests/test_guidance.py for
numbers on a Gaussian mixture).

Solver hooks wrap a solver and are solvers themselves (state passes through, so multistep
solvers compose):

    Inpaint(solver, known, mask)
        after every step to t1, the known entries (mask True) are replaced by a draw of the
        forward marginal alpha(t1) known + sigma(t1) z (Song et al. 2021, App. I.2: score_sde's
        PC inpainting, which replaces after each predictor and corrector update), with z from the
        step's noise at draw ``Draw.REPLACEMENT`` (= 64; solvers use draws < 16, the Langevin
        corrector 16 + j). The last step of the solve (t1 = the end time) puts the clean known
        values, so they are kept exactly. (score_sde uses the marginal at the step's start time;
        here it is the time the state has reached.) With a PredictorCorrector inside, the
        replacement follows the whole corrector-plus-predictor step.
    Colorize(solver, gray, channels=3)
        the same replacement in a rotated channel basis (score_sde's decoupling): an orthogonal
        C x C matrix whose first column is (1, ..., 1) / sqrt(C) maps an image to coordinates of
        which the first is sqrt(C) * gray (gray = the channel mean); the other columns complete it
        (Helmert's basis). The process adds isotropic noise, so it is the same process in the
        rotated coordinates, and the first one is replaced each step.
    AnnealedLangevinInpaint(known, mask, n_steps, step_lr)
        NCSN's inpainting (Song & Ermon 2019, App. B.3, Alg. 2): annealed Langevin dynamics where,
        at each noise level, one noisy copy y = alpha known + sigma z of the known values is drawn
        and put into the known entries after every Langevin update of that level.

Replacement is an approximation: the unknown entries follow the unconditional score given a
freshly drawn noisy copy of the known ones, not the conditional score given the known clean
values. On a correlated Gaussian the conditional mean comes out close and the variance is biased
(quantified in tests/test_guidance.py).

Per-sample conditions (``y``, ``cond``, ``known``, ``mask`` with a batch dimension) must match
the batch they are called with; shared ones (no batch dimension, or a batch of 1) broadcast.
Adaptive solvers evaluate subsets of the batch and are not accepted by the hooks.
"""
from __future__ import annotations

import copy
import math
import torch

from .equations import DiffusionEquation
from .noise import Draw
from .scores import Score
from .solvers.base import CONTROLLED, Solver, Step, per_sample
from .solvers.langevin import AnnealedLangevin

__all__ = ["ClassifierGuidance", "ClassifierFreeGuidance", "Inpaint", "Colorize", "KnownReplacement",
           "AnnealedLangevinInpaint", "helmert_basis"]

#: noise draw used by the replacement hooks (solvers use draws < 16, Langevin correctors 16 + j)


def _as_score(score) -> Score:
    return score if isinstance(score, Score) else Score(score)


def _rows(v, B: int, device, what: str) -> torch.Tensor:
    """A condition as B rows: per-sample (B, ...) as is, a shared value (scalar or batch 1) repeated."""
    v = torch.as_tensor(v, device=device)
    if v.dim() == 0:
        return v.expand(B)
    if v.shape[0] == B:
        return v
    if v.shape[0] == 1:
        return v.expand(B, *v.shape[1:])
    raise ValueError(f"{what} has {v.shape[0]} rows for a batch of {B} (give one per sample, or one shared value)")


class _Transform(Score):
    """A Score computed from another one; subclasses define ``predict`` (in ``kind``)."""

    def __init__(self, score, kind: str = "score"):
        self.inner = _as_score(score)
        super().__init__(None, self.inner.process, kind)
        self._plain = False

    def _p(self, process):
        return process if process is not None else self.process


class ClassifierGuidance(_Transform):
    """score(x, t) + scale * grad_x log p_t(y | x) (see the module docstring).

    ``classifier(x, t) -> (B, K)`` logits or log-probabilities, called with the sampler's time t
    (wrap it to give it another label, e.g. ``lambda x, t: clf(x, process.timestep(t))``); its
    gradient in x is taken with autograd, differentiably when x itself requires grad. Or give
    ``log_prob_grad(x, t, y) -> grad_x log p(y | x_t)``. ``y``: a class index, or one per sample.
    """

    def __init__(self, score, classifier=None, y=None, scale: float = 1.0, *, log_prob_grad=None):
        super().__init__(score, "score")
        if (classifier is None) == (log_prob_grad is None):
            raise ValueError("ClassifierGuidance needs exactly one of classifier (x, t -> logits) and "
                             "log_prob_grad (x, t, y -> grad_x log p(y | x_t))")
        if y is None:
            raise ValueError("ClassifierGuidance needs the class y to guide towards")
        self.classifier, self.log_prob_grad, self.y, self.scale = classifier, log_prob_grad, y, float(scale)

    def class_log_prob_grad(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """grad_x log p_t(y | x), shaped like x."""
        if self.log_prob_grad is not None:
            return self.log_prob_grad(x, t, _rows(self.y, x.shape[0], x.device, "y").long())
        outer = torch.is_grad_enabled() and x.requires_grad
        # under inference_mode the inputs are inference tensors, which autograd cannot record: copies
        with torch.inference_mode(False), torch.enable_grad():
            y = _rows(self.y, x.shape[0], x.device, "y").long().clone()
            t = t.clone() if t.is_inference() else t
            xi = x if outer else x.detach().clone().requires_grad_(True)
            logits = self.classifier(xi, t)
            if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
                raise ValueError(f"the classifier returned shape {tuple(logits.shape)}; expected (B, K) = "
                                 f"({x.shape[0]}, K) logits")
            logp = torch.log_softmax(logits, dim=1).gather(1, y[:, None].to(logits.device)).sum()
            (grad,) = torch.autograd.grad(logp, xi, create_graph=outer)
        return grad.to(x.dtype)

    def predict(self, x, t, process=None):
        s = self.inner.score_of(x, t, self._p(process))
        if self.scale == 0.0:
            return s
        return s + self.scale * self.class_log_prob_grad(x, t)

    def __repr__(self):
        return f"ClassifierGuidance({self.inner!r}, scale={self.scale})"


class ClassifierFreeGuidance(_Transform):
    """s_u + scale (s_c - s_u), from one batched call of a conditional model.

    ``score``: a Score whose model takes the condition as the keyword argument ``keyword``
    (``class_labels`` for a diffusers UNet2DModel, ``y`` by default); ``cond`` / ``uncond``: the
    condition and the "no condition" value (e.g. a null class), each one shared value or one per
    sample. The model is called once per evaluation on ``cat([x, x])`` with the keyword
    ``cat([cond, uncond])``; the guided prediction keeps the model's kind.
    """

    def __init__(self, score, cond, uncond, scale: float, *, keyword: str = "y"):
        inner = _as_score(score)
        if isinstance(inner, _Transform):
            raise TypeError(f"ClassifierFreeGuidance needs the Score of a model that takes the condition as a keyword "
                            f"argument, not another transform ({inner!r})")
        super().__init__(inner, inner.kind)
        self.cond, self.uncond, self.scale, self.keyword = cond, uncond, float(scale), keyword
        # the model called with the doubled batch: same labels and conversions, the condition added
        self._call = copy.copy(inner)
        self._base_kwargs = dict(inner.model_kwargs)
        if inner._plain:
            self._call._plain = False
            self._call.label_dtype = torch.float64  # a plain score function gets float64 t, as always

    def predict(self, x, t, process=None):
        B = x.shape[0]
        both = torch.cat([_rows(self.cond, B, x.device, "cond"), _rows(self.uncond, B, x.device, "uncond")])
        self._call.model_kwargs = {**self._base_kwargs, self.keyword: both}
        out = self._call.predict(torch.cat([x, x]), torch.cat([t, t]), self._p(process))
        c, u = out[:B], out[B:]
        return c + (self.scale - 1.0) * (c - u)

    def __repr__(self):
        return f"ClassifierFreeGuidance({self.inner!r}, scale={self.scale}, keyword={self.keyword!r})"


# --- replacement hooks -------------------------------------------------------------------------------
def helmert_basis(channels: int) -> torch.Tensor:
    """An orthogonal C x C matrix (float64) whose first column is (1, ..., 1) / sqrt(C): column k
    >= 1 is (1, ..., 1, -k, 0, ..., 0) / sqrt(k (k + 1)) with k ones (Helmert). Multiplying the
    channels of an image by it (``x^T H``) gives coordinates whose first is sqrt(C) * channel mean."""
    C = int(channels)
    if C < 1:
        raise ValueError(f"helmert_basis needs channels >= 1, got {channels}")
    H = torch.zeros(C, C, dtype=torch.float64)
    H[:, 0] = 1.0 / math.sqrt(C)
    for k in range(1, C):
        H[:k, k] = 1.0
        H[k, k] = -float(k)
        H[:, k] /= math.sqrt(k * (k + 1))
    return H


def _bool_mask(mask, what: str) -> torch.Tensor:
    mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"{what}: the mask must be boolean or 0/1 (1 = known)")
        mask = mask != 0
    return mask


class _Known:
    """Known values and a mask (True = known), in pixel coordinates or in a rotated channel basis."""

    def _set_known(self, known, mask, basis=None):
        self.known = torch.as_tensor(known)
        self.mask = _bool_mask(mask, type(self).__name__)
        self.basis = basis

    def _validate(self, y: torch.Tensor):
        name = type(self).__name__
        for what, v in (("known values", self.known), ("mask", self.mask)):
            try:
                shape = torch.broadcast_shapes(v.shape, y.shape)
            except RuntimeError:
                shape = None
            if shape != y.shape:
                raise ValueError(f"{name}: the {what} of shape {tuple(v.shape)} do not broadcast to the state's "
                                 f"shape {tuple(y.shape)} (give one per sample (B, ...) or one shared (...))")
        if self.basis is not None and (y.dim() < 2 or y.shape[1] != self.basis.shape[0]):
            raise ValueError(f"{name}: the state has shape {tuple(y.shape)}; expected {self.basis.shape[0]} channels "
                             f"in dimension 1")

    def _rotate(self, y, H):
        return torch.einsum("bc...,cd->bd...", y, H)

    def _unrotate(self, u, H):
        return torch.einsum("bd...,cd->bc...", u, H)

    def _put(self, y: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """y with its known entries set to alpha * known + sigma * z (per-sample alpha, sigma (B,))."""
        known = self.known.to(device=y.device, dtype=y.dtype)
        mask = self.mask.to(y.device)
        value = per_sample(alpha, y) * known + per_sample(sigma, y) * z
        if self.basis is None:
            return torch.where(mask, value, y)
        H = self.basis.to(device=y.device, dtype=y.dtype)
        return self._unrotate(torch.where(mask, value, self._rotate(y, H)), H)


class KnownReplacement(_Known, Solver):
    """A solver wrapper: ``solver``'s step, then the known entries replaced (see the module
    docstring). ``basis``: an orthogonal C x C matrix acting on dimension 1 in which ``known`` and
    ``mask`` are given (None: pixel coordinates)."""

    equation = DiffusionEquation

    def __init__(self, solver: Solver, known, mask, basis: torch.Tensor | None = None):
        if not isinstance(solver, Solver):
            raise TypeError(f"{type(self).__name__} wraps a solver object, got {type(solver).__name__}")
        if solver.adaptive:
            raise TypeError(f"{type(self).__name__}: {type(solver).__name__} is adaptive; replacement hooks need a "
                            f"fixed grid (adaptive controllers step subsets of the batch)")
        self.solver = solver
        self._set_known(known, mask, basis)
        self.order, self.weak_order, self.stochastic = solver.order, solver.weak_order, solver.stochastic
        self.nfe_per_step, self.noise_types = solver.nfe_per_step, solver.noise_types
        self.default_schedule = solver.default_schedule

    def check(self, eq) -> None:
        self.solver.check(eq)
        super().check(eq)

    def init(self, eq, t0, y0):
        self._validate(y0)
        return self.solver.init(eq, t0, y0)

    def step(self, eq, t0, t1, y0, state, noise, at=CONTROLLED):
        out = self.solver.step(eq, t0, t1, y0, state, noise, at)
        if at.last:  # the result keeps the clean known values
            alpha, sigma = torch.ones_like(t1), torch.zeros_like(t1)
        else:
            alpha, sigma = eq.process.marginal(t1)
        y = self._put(out.y, alpha, sigma, noise.normal(out.y, Draw.REPLACEMENT))
        return Step(y, out.error, out.state)

    def __repr__(self):
        return f"{type(self).__name__}({self.solver!r}, known={tuple(self.known.shape)})"


class Inpaint(KnownReplacement):
    """Inpainting: ``known`` values where ``mask`` is True (1), kept exactly in the result."""

    def __init__(self, solver: Solver, known, mask):
        super().__init__(solver, known, mask)


class Colorize(KnownReplacement):
    """Colorization of ``gray`` images (B, 1, H, W) or (1, H, W) into ``channels`` channels whose
    mean is the gray image (see the module docstring)."""

    def __init__(self, solver: Solver, gray, channels: int = 3):
        gray = torch.as_tensor(gray)
        if gray.dim() >= 3 and gray.shape[1] == 1:
            pass  # (B, 1, ...)
        elif gray.dim() >= 2 and gray.shape[0] == 1:
            gray = gray[None]  # (1, ...): one image for the whole batch
        else:
            raise ValueError(f"Colorize: gray images must have one channel, (B, 1, ...) or (1, ...); got "
                             f"{tuple(gray.shape)}")
        C = int(channels)
        known = torch.zeros(gray.shape[0], C, *gray.shape[2:], dtype=gray.dtype if gray.is_floating_point()
                            else torch.float32)
        known[:, :1] = math.sqrt(C) * gray
        mask = torch.zeros(1, C, *gray.shape[2:], dtype=torch.bool)
        mask[:, 0] = True
        super().__init__(solver, known, mask, helmert_basis(C))

    @staticmethod
    def to_gray(images: torch.Tensor) -> torch.Tensor:
        """The channel mean (B, 1, ...) of images (B, C, ...): what colorization keeps."""
        return images.mean(1, keepdim=True)


class AnnealedLangevinInpaint(_Known, AnnealedLangevin):
    """Inpainting with annealed Langevin dynamics (Song & Ermon 2019, App. B.3, Alg. 2).

    As :class:`~sdesolve.solvers.AnnealedLangevin` (step i runs ``n_steps`` updates
    x += a alpha^2 s + sqrt(2 a) alpha z at the level of t_{i+1}, a = step_lr sigma_i^2 /
    sigma_L^2 in the variance-exploding noise level sigma = sigma / alpha, noise draw j for update
    j), with the known entries set after every update to y = alpha known + sigma z~, one draw
    (``Draw.REPLACEMENT``) per level; after the last level (and its final denoising step, with
    ``denoise=True``) they are set to the clean known values.
    """

    def __init__(self, known, mask, n_steps: int = 5, step_lr: float = 2e-5, denoise: bool = True):
        AnnealedLangevin.__init__(self, n_steps, step_lr, denoise)
        self._set_known(known, mask)

    def init(self, eq, t0, y0):
        self._validate(y0)
        return None

    def step(self, eq, t0, t1, y0, state, noise, at=CONTROLLED):
        alpha, sigma = eq.process.marginal(t1)
        z_known = noise.normal(y0, Draw.REPLACEMENT)
        x = self.anneal(eq, t1, y0, at, noise, after=lambda x: self._put(x, alpha, sigma, z_known))
        if at.last:
            if self.denoise:
                x = eq.denoised(t1, x)
            x = self._put(x, torch.ones_like(alpha), torch.zeros_like(sigma), z_known)
        return Step(x)

    def __repr__(self):
        return (f"AnnealedLangevinInpaint(n_steps={self.n_steps}, step_lr={self.step_lr}, denoise={self.denoise}, "
                f"known={tuple(self.known.shape)})")
