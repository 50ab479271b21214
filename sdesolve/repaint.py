"""RePaint: inpainting by replacement with resampling (Lugmayr et al. 2022, "RePaint:
Inpainting using denoising diffusion probabilistic models", Alg. 1).

:class:`~sdesolve.guidance.Inpaint` replaces the known entries by a fresh draw of their forward
marginal after every step; the unknown entries then follow the unconditional reverse dynamics
given a noisy copy of the known ones, which does not make them agree with the known values
beyond what one step can do (the conditional comes out with the right mean direction but biased
spread; see :mod:`sdesolve.guidance`). RePaint harmonises the two by going back and forth: after
the step t0 -> t1 and the replacement, the whole state is diffused forward again from t1 to t0
with the process's own transition,

    x_{t0} = (alpha_0 / alpha_1) x_{t1} + sqrt(sigma_0^2 - (alpha_0 / alpha_1)^2 sigma_1^2) z,

(exact for any process with marginals x_t = alpha x_0 + sigma z), and the step is taken again;
``resample`` = U passes per step, the last one kept (U = 1 is plain replacement). Each pass u
draws its normals at step counter ``step + u * 2**20`` of the sample's stream (the forward
jump at draw ``Draw.RESAMPLE``), so results stay a pure function of (seed, sample).

The inner solver must be a one-step method (its state is not rewound: multistep histories
would see the repeated steps). Dutordoir et al. (2022, Sec. 4.2) condition neural diffusion
processes this way.
"""
from __future__ import annotations

import torch

from .guidance import KnownReplacement
from .noise import Draw, Noise
from .solvers.base import CONTROLLED, Solver, Step, per_sample

__all__ = ["RePaint", "RESAMPLE_STEP_STRIDE"]

#: pass u of a step draws its noise at step counter step + u * RESAMPLE_STEP_STRIDE
RESAMPLE_STEP_STRIDE = 1 << 20


class RePaint(KnownReplacement):
    """Replacement of the ``known`` entries (``mask`` True) with ``resample`` passes per step."""

    def __init__(self, solver: Solver, known, mask, resample: int = 10):
        super().__init__(solver, known, mask)
        if not isinstance(resample, int) or resample < 1:
            raise ValueError(f"RePaint: resample must be an integer >= 1, got {resample!r}")
        if resample >= 4096:
            raise ValueError("RePaint: resample must be below 4096 (noise step counters are 32-bit)")
        self.resample = resample
        self.nfe_per_step = solver.nfe_per_step * resample

    def step(self, eq, t0, t1, y0, state, noise, at=CONTROLLED):
        p = eq.process
        a0, s0 = p.marginal(t0)
        a1, s1 = p.marginal(t1)
        ratio = a0 / a1
        back = torch.sqrt(torch.clamp(s0**2 - ratio**2 * s1**2, min=0.0))
        y, out = y0, None
        for u in range(self.resample):
            nz = noise if u == 0 else Noise(noise.stream, noise.step + u * RESAMPLE_STEP_STRIDE)
            out = super().step(eq, t0, t1, y, state, nz, at)
            if u < self.resample - 1:
                y = per_sample(ratio, out.y) * out.y + per_sample(back, out.y) * nz.normal(out.y, Draw.RESAMPLE)
        return Step(out.y, out.error, out.state)

    def __repr__(self):
        return f"RePaint({self.solver!r}, known={tuple(self.known.shape)}, resample={self.resample})"
