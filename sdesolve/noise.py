"""Counter-based Gaussian noise: a pure function of (stream, step, draw, element).

Every random number sdesolve uses is

    z[b, i] = N(stream_b, step_b, draw, i)

where ``stream_b`` is the 64-bit stream of sample ``b``, ``step_b`` its step counter, ``draw``
which draw within the step (a predictor and a corrector, or the two normals of a stochastic
Runge-Kutta step, use different draws) and ``i`` the element index inside the flattened sample.
Nothing depends on the batch size, the batch position or the device split, so a sample's
trajectory is the same wherever it runs.

The generator is Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
SC 2011), the same block cipher Triton exposes as ``tl.philox``, so fused kernels regenerate
the same numbers in registers:

    key     = (lo32(stream_b), hi32(stream_b))
    counter = (i // 4, step_b, draw, 0)
    (r0, r1, r2, r3) = philox4x32_10(counter, key)
    lane    = i % 4;  (ua, ub) = (r0, r1) for lanes 0, 1 and (r2, r3) for lanes 2, 3
    u(r)    = (r if r < 2**31 else ~r as int32) * 4.6566127342e-10       (Triton's uint->[0,1))
    z       = sqrt(-2 log max(u(ua), 1e-7)) * (cos if lane is even else sin)(2 pi u(ub))

Four normals per Philox call (both Box-Muller outputs of both pairs). The float part is float32,
as in the kernels. On the CPU the numbers come from :mod:`sdesolve.philox`: eager PyTorch, or a
fused compiled function (environment variable ``SDESOLVE_NOISE``; the same Philox integers, the
normals equal to float32 rounding).

Seeds: an int ``seed`` in [0, 2**32) gives sample ``b`` the stream ``seed + b * 2**32``
(:func:`streams`), so the stream of a sample is fixed by (seed, global sample index); a (B,)
integer tensor gives sample b the stream ``seed[b]`` directly.
"""
from __future__ import annotations

import math

import torch

from .philox import normal_from_counters, philox4x32

__all__ = ["Noise", "streams", "philox4x32", "normal_from_counters", "PRIOR_STEP", "PROBE_STEP", "DEQUANTIZATION_STEP",
           "Draw", "kernel_noise"]

#: step counter used for the prior sample x_T, distinct from every solver step (which are >= 0)
PRIOR_STEP = 0xFFFFFFFF
#: step counter of the Hutchinson probes of a likelihood (draw p is probe p)
PROBE_STEP = 0xFFFF0000
#: step counter of the dequantization draws of bits per dimension (draw k is dequantization k)
DEQUANTIZATION_STEP = 0xFFFE0000


class Draw:
    """Which draw of a step a random number is: every draw number used anywhere, in one place.

    Within one step (counter ``step`` of a sample's stream) a solver's own normals use draws
    0..15 (the Brownian increment is draw 0; SRA1's second normal draw 1; annealed Langevin's
    update j draw j); ``CORRECTOR + j`` is iteration j of a Langevin corrector; ``REPLACEMENT``
    the noise of the known entries in inpainting-style replacement, ``RESAMPLE`` RePaint's forward
    jump back to the step's start; ``BRIDGE`` the Brownian-bridge normal of a retried step under step-size control. The prior x_T is drawn at step
    ``PRIOR_STEP``, draw 0; the likelihood's probes and dequantization draws at ``PROBE_STEP`` and
    ``DEQUANTIZATION_STEP``, draw p for probe (or draw) p.
    """

    SOLVER_LIMIT = 16
    CORRECTOR = 16
    REPLACEMENT = 64
    RESAMPLE = 65
    BRIDGE = 0x7F000000


def streams(seed, batch: int, offset: int = 0, device=None) -> torch.Tensor:
    """Per-sample 64-bit streams (int64, shape (batch,)) for an int seed or a tensor of seeds.

    An int ``seed`` gives global sample ``offset + b`` the stream ``seed + (offset + b) * 2**32``;
    a tensor is taken as the per-sample streams themselves (its length must equal ``batch``).
    """
    if isinstance(seed, torch.Tensor):
        if seed.dtype.is_floating_point or seed.dtype == torch.bool:
            raise TypeError(f"per-sample seeds must be an integer tensor, got {seed.dtype}")
        seed = seed.reshape(-1).to(device=device, dtype=torch.int64)
        if seed.shape[0] != batch:
            raise ValueError(f"got {seed.shape[0]} per-sample seeds for a batch of {batch}")
        return seed
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    seed = int(seed)
    if not 0 <= seed < 2**32:
        raise ValueError(f"an int seed must lie in [0, 2**32), got {seed}")
    index = torch.arange(offset, offset + batch, dtype=torch.int64, device=device)
    return seed + (index << 32)


class Noise:
    """Standard normal noise for a batch: per-sample streams and per-sample step counters.

    ``noise.normal(like, draw)`` returns z shaped and typed like ``like``; ``noise.at(step)``
    moves to another step; ``noise[idx]`` restricts to a subset of samples (the adaptive
    controllers use it on the active set). A Brownian increment over ``[t0, t1]`` is
    ``sqrt(|t1 - t0|) * z``; :meth:`increments` also returns the time integral
    ``I10 = int_{t0}^{t1} (W(s) - W(t0)) ds`` that order-1.5 schemes need.
    """

    def __init__(self, stream: torch.Tensor, step=0):
        self.stream = stream
        self._step = step if isinstance(step, torch.Tensor) else int(step)

    @property
    def step(self) -> torch.Tensor:
        """The per-sample step counters (B,) int64; a step given as an int is made a tensor on first
        use (a deterministic step of a fixed-grid loop never asks for it)."""
        if not isinstance(self._step, torch.Tensor):
            self._step = torch.full_like(self.stream, self._step)
        return self._step

    @classmethod
    def from_seed(cls, seed, batch: int, device=None, offset: int = 0) -> "Noise":
        return cls(streams(seed, batch, offset=offset, device=device))

    def __len__(self) -> int:
        return self.stream.shape[0]

    def at(self, step) -> "Noise":
        return Noise(self.stream, step)

    def __getitem__(self, idx) -> "Noise":
        return Noise(self.stream[idx], self.step[idx])

    def normal(self, like: torch.Tensor, draw: int = 0) -> torch.Tensor:
        stream, step = self.stream, self._step  # an int step stays one (no per-sample tensor)
        shape = like.shape
        if shape[0] != stream.shape[0]:
            raise ValueError(f"noise for {len(self)} samples asked for a batch of {shape[0]}")
        if stream.device != like.device:
            stream, step = stream.to(like.device), self.step.to(like.device)
        z = normal_from_counters(stream, step, draw, math.prod(shape[1:])).view(shape)
        return z if z.dtype == like.dtype else z.to(like.dtype)

    def increments(self, like: torch.Tensor, dt: torch.Tensor, draw: int = 0):
        """Brownian increment dW and I10 over a step of (per-sample) length |dt|.

        dW = sqrt(h) z1 and I10 = h^{3/2} (z1 / 2 + z2 / (2 sqrt 3)), the exact joint law of
        (W(t0 + h) - W(t0), int (W - W(t0)) ds) for independent z1, z2 (draws ``draw``, ``draw+1``).
        """
        h = dt.abs().to(like.dtype).reshape((-1,) + (1,) * (like.dim() - 1))
        z1 = self.normal(like, draw)
        z2 = self.normal(like, draw + 1)
        dW = h.sqrt() * z1
        return dW, h * h.sqrt() * (0.5 * z1 + z2 / (2.0 * math.sqrt(3.0)))


def kernel_noise(noise, like: torch.Tensor, draw: int) -> dict:
    """The noise arguments of a fused update (:mod:`sdesolve.kernels`) for draw ``draw``.

    A counter-based :class:`Noise` gives ``{"noise": noise, "draw": draw}``: the kernels
    regenerate its numbers in-kernel (the same numbers as ``noise.normal(like, draw)``). Any
    other source of normals (a Noise subclass that overrides ``normal``, a recorded Brownian
    path, anything with a ``normal(like, draw)`` method) gives ``{"z": noise.normal(like, draw)}``.
    """
    if isinstance(noise, Noise) and type(noise).normal is Noise.normal:
        return {"noise": noise, "draw": draw}
    return {"z": noise.normal(like, draw)}
