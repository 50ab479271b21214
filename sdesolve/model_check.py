"""The model check: is a model what its adapter says it is?

A model trained elsewhere is probed before its first use, on a small batch of pure noise at t = T
and at a middle noise level: a model whose parametrization, time label or input scale does not fit
the process (a VE-style eps model on a VP process, an x0 model declared as eps) gives predictions
whose size is off by orders of magnitude, and :func:`check_model` raises
:class:`ModelCheckError` instead of letting a sampler turn them into noise.

What is measured at t = T, where x_T = sigma_T z is (nearly) pure noise:

    eps, score models        the implied noise prediction reproduces z:  |eps_hat - z| / |z| < tol
    x0, v, denoiser models   the implied x0_hat does not follow z:       |<x0_hat, z>| / |z|^2 < tol
    velocity models          the same x0 criterion; since u = (alpha' - sigma' alpha / sigma) x0_hat
                             + sigma' z, it reads <u, z> / |z|^2 = sigma' + (alpha' - sigma' alpha /
                             sigma) slope: the velocity's component along the noise is about
                             sigma'(T) (1 on the linear path)

Not distinguishable at T: x0 <-> v on a VP process (both predict about the data mean there);
eps <-> velocity on the linear path (u = z - E[x_0] ~ z at pure noise); and on a variance-
preserving path such as the cosine one, where sigma'(T) ~ 0 and u ~ alpha'(T) E[x_0], velocity
<-> x0, v or a sign-flipped velocity (only eps and score models are caught there).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["ModelCheck", "ModelCheckError", "check_model"]


class ModelCheckError(ValueError):
    """An external model does not behave like the parametrization / time label it was declared with."""


def _output(out, where: str) -> torch.Tensor:
    """A model's output tensor: the tensor itself, ``out.sample`` (diffusers) or ``out[0]``."""
    if isinstance(out, torch.Tensor):
        return out
    sample = getattr(out, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"{where} returned {type(out).__name__}; expected a tensor, an object with a .sample tensor "
                    f"(diffusers) or a tuple whose first element is a tensor")


class _Call:
    """``model(x, label, **kwargs)`` with its output normalised to a tensor."""

    def __init__(self, model, where: str):
        self.model, self.where = model, where

    def __call__(self, x, label, **kwargs):
        return _output(self.model(x, label, **kwargs), self.where)


def _name(label) -> str:
    return getattr(label, "__name__", repr(label))


# --- the model check ---------------------------------------------------------------------------------
@dataclass
class ModelCheck:
    """What :func:`check_model` measured (at t = T on x_T = sigma_T z unless said otherwise).

    eps_error: |eps_hat - z| / |z|;  x0_slope: <x0_hat, z> / |z|^2;  rms_T / rms_mid: RMS of the
    model's raw output at T and at the middle noise level;  passed: the verdict for ``kind``."""

    kind: str
    eps_error: float
    x0_slope: float
    rms_T: float
    rms_mid: float
    batch: int
    passed: bool


def _rms(v: torch.Tensor) -> float:
    return float(v.to(torch.float64).pow(2).mean().sqrt())


def _probe_batch(shape) -> int:
    return max(2, min(64, math.ceil(512 / max(1, math.prod(int(s) for s in shape)))))


def check_model(score: Score, process, shape, *, batch: int | None = None, device=None, dtype=torch.float32,
                tol: float = 0.5, seed: int = 0, raise_error: bool = True) -> ModelCheck:
    """Probe ``score``'s model on a few pure-noise inputs of sample shape ``shape`` (see the
    module docstring for what is checked and why). Raises :class:`ModelCheckError` naming what was
    measured, what was expected and the likely causes (or returns the failed report when
    ``raise_error=False``). The batch has ``max(2, 512 / numel)`` samples, at most 64.

    This is an evaluation tool: it runs under ``torch.no_grad``.
    """
    shape = tuple(int(s) for s in shape)
    B = int(batch) if batch is not None else _probe_batch(shape)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((B, *shape), generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    tT = torch.full((B,), float(process.T), dtype=torch.float64, device=z.device)
    lam_T = process.lam(torch.tensor(process.T, dtype=torch.float64))
    lam_0 = process.lam(torch.tensor(max(process.t_min, 1e-12 * process.T), dtype=torch.float64))
    if bool(torch.isfinite(lam_T)):
        tmid = process.t_of_lam(0.5 * (lam_T + lam_0))
    else:  # a flow path to alpha(T) = 0 (lambda(T) = -inf): the middle of the time range instead
        tmid = torch.tensor(0.5 * (process.T + process.t_min), dtype=torch.float64)
    tmid = tmid.to(z.device).expand(B).clone()
    sT = process.sigma(tT).to(device=z.device, dtype=dtype).reshape((-1,) + (1,) * len(shape))
    x = sT * z
    what = f"the {score.kind}-prediction model (time label {_name(score.time_label)}) on {process!r}"
    with torch.no_grad():
        raw = {}
        for name, t in (("t = T", tT), ("the middle noise level", tmid)):
            xi = x if t is tT else z
            try:
                out = score.predict(xi, t, process)
            except (ValueError, TypeError) as e:
                raise ModelCheckError(f"model check: {what} failed at {name} on a probe batch of shape "
                                      f"{tuple(xi.shape)}: {e}") from e
            bad = ~torch.isfinite(out)
            if bad.any():
                samples = torch.nonzero(bad.reshape(B, -1).any(1)).flatten().tolist()
                raise ModelCheckError(f"model check: {what} returned NaN/Inf at {name} (t = {float(t[0]):.6g}) "
                                      f"for probe samples {samples}; pass check=False to skip this check")
            raw[name] = out
        eps = score.eps_of(x, tT, process).to(torch.float64)
        x0 = score.denoised_of(x, tT, process).to(torch.float64)
    zf = z.to(torch.float64)
    eps_error = _rms(eps - zf) / _rms(zf)
    x0_slope = float((x0 * zf).sum() / (zf * zf).sum())
    if score.kind in ("eps", "score"):
        passed = eps_error < tol
    else:
        passed = abs(x0_slope) < tol
    report = ModelCheck(score.kind, eps_error, x0_slope, _rms(raw["t = T"]), _rms(raw["the middle noise level"]),
                        B, passed)
    if passed or not raise_error:
        return report
    if score.kind in ("eps", "score"):
        measured = (f"at t = T (pure noise x_T = sigma_T z) its implied noise prediction should reproduce z "
                    f"(relative error < {tol}); it is off by {eps_error:.3g} (raw output RMS {report.rms_T:.3g})")
    elif score.kind == "velocity":
        measured = (f"at t = T (pure noise x_T = sigma_T z) its velocity should be about sigma'(T) z + alpha'(T) "
                    f"E[x_0], so that the implied denoised prediction does not follow the noise (|<x0_hat, z>| / "
                    f"|z|^2 < {tol}); the slope is {x0_slope:+.3g} (on the linear path: about +2 for a velocity "
                    f"of the opposite convention x_0 - z, with time running from noise to data; about +1 for an "
                    f"x0, v or untrained model; about +2 for a score model)")
    else:
        measured = (f"at t = T (pure noise x_T = sigma_T z) its implied denoised prediction should not follow the "
                    f"noise (|<x0_hat, z>| / |z|^2 < {tol}); the slope is {x0_slope:+.3g} (a noise- or "
                    f"score-predicting model gives about +1 or -1)")
    raise ModelCheckError(
        f"model check failed for {what}: {measured}. Likely causes: the model predicts something else (eps, x0, v, "
        f"score: declare its parametrization), reads time another way (training timesteps 0..N-1, t in [0, 1], "
        f"sigma), expects inputs on another scale (a VE or EDM model on a VP process), or is untrained. "
        f"Pass check=False to skip this check.")


def _first_rows(v, B: int):
    """A per-sample conditioning tensor cut to its first row, repeated B times (for the probe)."""
    if isinstance(v, torch.Tensor) and v.dim() >= 1:
        return v[:1].expand(B, *v.shape[1:])
    return v
