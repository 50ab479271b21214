"""Argument checks, per-sample coefficients and tile geometry shared by the fused updates.

Conventions of every fused update:

* A state ``x`` has shape ``(B, ...)``; each sample is flattened to ``N = prod(shape[1:])``
  elements. States are float16, bfloat16 or float32 (the kernels' dtypes, math in float32) or
  float64 (always the ``*_ref`` path, math in float64).
* A per-sample coefficient (``dt``, ``g``, ``a``, ``snr``, ...) is a Python number, a
  one-element tensor or a ``(B,)`` tensor of any floating dtype (time is float64); it is
  rounded to the compute dtype (float32 for the kernel dtypes) before use, on both paths.
* Noise is a :class:`sdesolve.noise.Noise` (per-sample streams and step counters) plus a
  ``draw`` index, or an explicit ``z`` shaped like the state.
"""
from __future__ import annotations

import numbers

import torch

__all__ = [
    "KERNEL_DTYPES",
    "BLOCK_QUADS",
    "compute_dtype",
    "as_dtype",
    "column",
    "coefficient",
    "check_like",
    "check_draw",
    "check_noise",
    "noise_ref",
    "TileGeometry",
    "tile_geometry",
]

#: state dtypes the Triton kernels handle (float32 math); anything else takes the *_ref path
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

#: Philox quads (4 elements each) per Triton program: 1024 elements per program
BLOCK_QUADS = 256


def compute_dtype(dtype: torch.dtype, where: str) -> torch.dtype:
    """float32 for the kernel dtypes, float64 for float64; anything else is an error."""
    if dtype in KERNEL_DTYPES:
        return torch.float32
    if dtype == torch.float64:
        return torch.float64
    raise TypeError(f"{where}: states must be float16, bfloat16, float32 or float64, got {dtype}")


def _check_per_sample(value, batch: int, name: str, where: str) -> torch.Tensor | float:
    if isinstance(value, torch.Tensor):
        if not (value.dtype.is_floating_point or value.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{where}: {name} must be a floating tensor, got {value.dtype}")
        if value.numel() != 1 and tuple(value.shape) != (batch,):
            raise ValueError(
                f"{where}: {name} must be a number or a tensor of shape (B,) = ({batch},), "
                f"got shape {tuple(value.shape)}"
            )
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"{where}: {name} must be a number or a (B,) tensor, got {type(value).__name__}")


def column(value, x: torch.Tensor, dtype: torch.dtype, name: str, where: str) -> torch.Tensor:
    """A per-sample coefficient as a ``(B, 1, ..., 1)`` tensor in ``dtype`` broadcasting against x."""
    value = _check_per_sample(value, x.shape[0], name, where)
    if not isinstance(value, torch.Tensor):
        # a fill on the device, not a host-to-device copy: capturable in a CUDA graph
        return torch.full((), value, dtype=dtype, device=x.device)
    if value.dim() == 0 and value.device.type == "cpu":  # broadcasts as it is
        return as_dtype(value, dtype)
    value = as_dtype(value, dtype, x.device)
    shape = (-1,) + (1,) * (x.dim() - 1)
    return value.reshape(-1).reshape(shape) if value.numel() != 1 else value.reshape((1,) * x.dim())


def as_dtype(t: torch.Tensor, dtype: torch.dtype, device=None) -> torch.Tensor:
    """``t.to(device, dtype)``, skipping the call when t already is (the hot loops call it often)."""
    if t.dtype == dtype and (device is None or t.device == device):
        return t
    return t.to(device=device if device is not None else t.device, dtype=dtype)


def coefficient(value, batch: int, device, name: str, where: str) -> tuple[torch.Tensor, int]:
    """A per-sample coefficient as ``(tensor, stride)`` for a kernel: a contiguous ``(B,)``
    tensor with stride 1, or a one-element tensor with stride 0 (its dtype is kept: the kernel
    loads it and rounds to float32). Numbers become a one-element float64 tensor made on the
    device (a fill, not a host-to-device copy, so no host synchronisation)."""
    value = _check_per_sample(value, batch, name, where)
    if not isinstance(value, torch.Tensor):
        return torch.full((1,), value, dtype=torch.float64, device=device), 0
    value = value.to(device=device)
    if not value.dtype.is_floating_point:
        value = value.to(torch.float64)
    if value.numel() == 1:
        return value.reshape(1), 0
    return value.contiguous(), 1


def check_like(t: torch.Tensor, x: torch.Tensor, name: str, where: str) -> None:
    """``t`` must be a floating tensor of x's shape on x's device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{where}: {name} must be a tensor, got {type(t).__name__}")
    if t.shape != x.shape:
        raise ValueError(f"{where}: {name} has shape {tuple(t.shape)}, the state has {tuple(x.shape)}")
    if t.device != x.device:
        raise ValueError(f"{where}: {name} is on {t.device}, the state is on {x.device}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{where}: {name} must be a floating tensor, got {t.dtype}")


def check_draw(draw, where: str) -> int:
    if isinstance(draw, bool) or not isinstance(draw, numbers.Integral) or not 0 <= draw < 2**31:
        raise ValueError(f"{where}: draw must be an int in [0, 2**31), got {draw!r}")
    return int(draw)


def check_noise(noise, z, x: torch.Tensor, where: str, required: bool = True) -> None:
    """Exactly one of ``noise`` (a Noise for the batch) and ``z`` (x-shaped) when ``required``;
    neither when not."""
    if not required:
        if noise is not None or z is not None:
            raise ValueError(f"{where}: noise or z given for an update without a noise term")
        return
    if (noise is None) == (z is None):
        raise ValueError(f"{where}: give exactly one of noise (a Noise) and z (an explicit normal draw)")
    if z is not None:
        check_like(z, x, "z", where)
        return
    if not (hasattr(noise, "stream") and hasattr(noise, "at")):  # ("step" may build a tensor)
        raise TypeError(f"{where}: noise must be an sdesolve.noise.Noise, got {type(noise).__name__}")
    if len(noise) != x.shape[0]:
        raise ValueError(f"{where}: noise holds {len(noise)} samples, the state has {x.shape[0]}")


def noise_ref(noise, draw: int, z, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The standard normal draw of the reference path, in ``dtype`` (float32 noise is generated
    in float32 and never rounded to a half-precision state dtype, as in the kernels)."""
    if z is not None:
        return as_dtype(z, dtype)
    like = x if x.dtype == dtype else torch.empty(x.shape, dtype=dtype, device=x.device)
    return noise.normal(like, draw)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


class TileGeometry:
    """How the ``(B, N)`` elements map onto Triton programs.

    Each program covers ``rows`` samples and ``quads`` Philox quads (4 consecutive elements of
    one sample, one Philox call) of each: a ``(rows, quads, 4)`` tile. A sample is split into
    ``chunks`` tiles along its elements; program ``p`` takes rows ``(p // chunks) * rows ...``
    and chunk ``p % chunks``. ``wide`` asks for 64-bit offsets.
    """

    __slots__ = ("rows", "quads", "chunks", "programs", "wide")

    def __init__(self, rows: int, quads: int, chunks: int, programs: int, wide: bool):
        self.rows, self.quads, self.chunks, self.programs, self.wide = rows, quads, chunks, programs, wide

    def __repr__(self) -> str:
        return (f"TileGeometry(rows={self.rows}, quads={self.quads}, chunks={self.chunks}, "
                f"programs={self.programs}, wide={self.wide})")


def tile_geometry(batch: int, numel: int, block_quads: int | None = None) -> TileGeometry:
    """Tile shape for ``batch`` samples of ``numel`` elements.

    ``quads`` is a power of two (at least 8 unless a sample is smaller) and ``rows = block_quads
    // quads`` samples share a tile (no more than the batch needs). Every program costs about a
    full tile, so the choice minimises the number of programs, preferring the longest contiguous
    runs (the largest ``quads``) among those within 1/8 of the fewest.
    """
    block_quads = BLOCK_QUADS if block_quads is None else block_quads
    nq = max(1, -(-numel // 4))
    top = min(_next_pow2(nq), block_quads)
    low = min(8, top)
    options = []
    p = top
    while p >= low:
        rows = max(1, min(block_quads // p, _next_pow2(batch)))
        chunks = -(-nq // p)
        options.append((-(-batch // rows) * chunks, p, rows, chunks))
        p //= 2
    fewest = min(o[0] for o in options)
    programs, quads, rows, chunks = next(o for o in options if 8 * o[0] <= 9 * fewest)
    # largest offset formed, masked lanes included: (batch + rows) * (chunks * quads * 4)
    wide = (batch + rows) * max(numel, chunks * quads * 4) >= 2**31
    return TileGeometry(rows, quads, chunks, programs, wide)


def noise_arguments(tk, noise, z, placeholder: torch.Tensor):
    """(kind, z, stream, step) for a kernel launch: an explicit ``z``, or the counters of a
    :class:`sdesolve.noise.Noise` for in-kernel Philox; ``placeholder`` fills the unused slots."""
    if z is not None:
        return tk.EXPLICIT_NOISE, z.contiguous(), placeholder, placeholder
    dev = placeholder.device
    return (tk.COUNTER_NOISE, placeholder, noise.stream.to(device=dev, dtype=torch.int64).contiguous(),
            noise.step.to(device=dev, dtype=torch.int64).contiguous())
