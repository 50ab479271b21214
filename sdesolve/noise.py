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

Four normals per Philox call (both Box-Muller outputs of both pairs). All arithmetic here is
int64 emulating uint32; the float part is float32, as in the kernels.

Seeds: an int ``seed`` in [0, 2**32) gives sample ``b`` the stream ``seed + b * 2**32``
(:func:`streams`), so the stream of a sample is fixed by (seed, global sample index); a (B,)
integer tensor gives sample b the stream ``seed[b]`` directly.
"""
from __future__ import annotations

import math

import torch

__all__ = ["Noise", "streams", "philox4x32", "normal_from_counters", "PRIOR_STEP", "PROBE_STEP", "DEQUANTIZATION_STEP",
           "Draw", "kernel_noise"]

_M32 = 0xFFFFFFFF
_ROUND_A = 0xD2511F53
_ROUND_B = 0xCD9E8D57
_KEY_A = 0x9E3779B9
_KEY_B = 0xBB67AE85
_UNIFORM_SCALE = 4.6566127342e-10
_TWO_PI = 6.283185307179586

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
    the noise of the known entries in inpainting-style replacement; ``BRIDGE`` the Brownian-bridge
    normal of a retried step under step-size control. The prior x_T is drawn at step
    ``PRIOR_STEP``, draw 0; the likelihood's probes and dequantization draws at ``PROBE_STEP`` and
    ``DEQUANTIZATION_STEP``, draw p for probe (or draw) p.
    """

    SOLVER_LIMIT = 16
    CORRECTOR = 16
    REPLACEMENT = 64
    BRIDGE = 0x7F000000


def _mul_hi_lo(a: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of the 64-bit product of uint32 ``a`` (held in int64) and constant ``b``.

    The int64 product wraps modulo 2**64, so its two's-complement bit pattern is exactly the
    unsigned 64-bit product: bits 32..63 (arithmetic shift, then mask) are the high word.
    """
    p = a * b
    return (p >> 32) & _M32, p & _M32


def philox4x32(c0, c1, c2, c3, k0, k1, rounds: int = 10):
    """Philox4x32 on int64 tensors holding uint32 values (broadcast together). Returns 4 tensors."""
    k0 = torch.as_tensor(k0) & _M32
    k1 = torch.as_tensor(k1) & _M32
    for _ in range(rounds):
        hi_b, lo_b = _mul_hi_lo(c2, _ROUND_B)
        hi_a, lo_a = _mul_hi_lo(c0, _ROUND_A)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _KEY_A) & _M32
        k1 = (k1 + _KEY_B) & _M32
    return c0, c1, c2, c3


def _uniform(r: torch.Tensor) -> torch.Tensor:
    # bitcast to int32, fold negatives with bitwise not, scale: Triton's uint_to_uniform_float
    r = torch.where(r >= 2**31, r - 2**32, r)
    r = torch.where(r < 0, -r - 1, r)
    return r.to(torch.float32) * _UNIFORM_SCALE


def normal_from_counters(stream: torch.Tensor, step: torch.Tensor, draw: int, n: int) -> torch.Tensor:
    """Normals z[b, i], i < n, for int64 ``stream`` (B,) and ``step`` (B,). Float32, shape (B, n)."""
    device = stream.device
    quads = (n + 3) // 4
    q = torch.arange(quads, device=device, dtype=torch.int64).unsqueeze(0)
    k0 = (stream & _M32).unsqueeze(1)
    k1 = ((stream >> 32) & _M32).unsqueeze(1)
    c1 = (step & _M32).unsqueeze(1).expand(-1, quads)
    c0 = q.expand(stream.shape[0], -1)
    c2 = torch.full_like(c0, draw & _M32)
    c3 = torch.zeros_like(c0)
    r0, r1, r2, r3 = philox4x32(c0, c1, c2, c3, k0, k1)
    r_a = torch.sqrt(-2.0 * torch.log(torch.clamp_min(_uniform(torch.stack((r0, r2), -1)), 1e-7)))
    theta = _TWO_PI * _uniform(torch.stack((r1, r3), -1))
    z = torch.stack((r_a * torch.cos(theta), r_a * torch.sin(theta)), -1)  # (B, quads, pair, cos|sin)
    return z.reshape(stream.shape[0], quads * 4)[:, :n]


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
        if not isinstance(step, torch.Tensor):
            step = torch.full_like(stream, int(step))
        self.step = step

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
        if like.shape[0] != len(self):
            raise ValueError(f"noise for {len(self)} samples asked for a batch of {like.shape[0]}")
        n = math.prod(like.shape[1:])
        z = normal_from_counters(self.stream.to(like.device), self.step.to(like.device), draw, n)
        return z.reshape(like.shape).to(like.dtype)

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
