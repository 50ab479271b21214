"""Philox4x32-10 normals from counters: an eager PyTorch path and a fused (compiled) CPU path.

The numbers are defined in :mod:`sdesolve.noise` (key = the sample's 64-bit stream, counter =
(element // 4, step, draw, 0), Box-Muller on Triton's uint->[0, 1) map). This module computes
them two ways:

``eager``
    plain PyTorch on int64 tensors holding uint32 values, one operator per line below. A Philox
    round is ``hi(c2 B) ^ c1 ^ k0``, ``lo(c2 B)``, ``hi(c0 A) ^ c3 ^ k1``, ``lo(c0 A)``
    (Salmon et al., SC 2011). The int64 product of two uint32 values wraps modulo 2**64, so its
    bit pattern is the unsigned 64-bit product; the low words are kept unmasked (their high
    bits are garbage) because they are only ever XORed into a word that is masked to 32 bits
    before it is multiplied, and the low 32 bits of an XOR depend only on the low 32 bits of its
    operands. Counters and keys that are the same for a whole row or column stay broadcast
    (Python ints, ``(B, 1)`` or ``(1, Q)`` tensors) until the rounds mix them.
``compiled``
    the flat form of the same function (:func:`_normal_flat`, one index over the B * quads
    Philox calls) exported with a dynamic batch and quad count and compiled ahead of time by
    inductor (``torch._inductor.aoti_compile_and_package``) into a package in :func:`cache_dir`:
    one fused C++ loop instead of ~100 elementwise operators, called without the Python guard
    checks of ``torch.compile``. Building needs a C++ compiler and takes tens of seconds to
    minutes, once per machine, torch version and source of these functions (the package name
    carries a hash of all three); later processes load the package in milliseconds. Two
    packages: one quad per sample (n <= 4) and more. The Philox integers are the same bit for
    bit; the normals agree with the eager path to float32 rounding of log/sqrt/cos/sin (a few
    ulp), as the Triton kernels do.

Which path runs is chosen by the environment variable ``SDESOLVE_NOISE``, read at every call:

``auto`` (default, also when unset or empty)
    CPU tensors take the compiled path at once when its packages are built; otherwise eager,
    until this process has spent as long in eager normals as building is expected to take (the
    last build time recorded in :func:`cache_dir`, else :data:`COLD_COMPILE_S`), and then it
    builds them -- the ski-rental rule: a process never pays more than about twice what the
    better choice in hindsight would have cost, and short processes (a test run) never build.
    Non-CPU tensors always run eager (CUDA has the Triton kernels).
``compiled``
    the compiled path for every CPU call (building the packages on the first if needed);
``eager``
    always eager.

If building or loading fails (no compiler, an inductor error) the process falls back to eager
for good, with one warning. :func:`normal_path` says which path the last call took.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import platform
import shutil
import threading
import time
import warnings

import torch

__all__ = ["ENV_VAR", "COLD_COMPILE_S", "philox4x32", "uniform", "normal_eager", "normal_from_counters",
           "noise_mode", "normal_path", "compiled_available", "compile_normals", "cache_dir", "reset"]

ENV_VAR = "SDESOLVE_NOISE"
_MODES = ("auto", "compiled", "eager")

#: build time assumed when none has been recorded on this machine
COLD_COMPILE_S = 60.0

_M32 = 0xFFFFFFFF
_ROUND_A = 0xD2511F53
_ROUND_B = 0xCD9E8D57
_KEY_A = 0x9E3779B9
_KEY_B = 0xBB67AE85
_UNIFORM_SCALE = 4.6566127342e-10
_TWO_PI = 6.283185307179586


def philox4x32(c0, c1, c2, c3, k0, k1, rounds: int = 10):
    """Philox4x32 on int64 tensors (or Python ints) holding uint32 values, broadcast together.

    Returns the four output words as int64 tensors in [0, 2**32).
    """
    k0 = torch.as_tensor(k0) & _M32
    k1 = torch.as_tensor(k1) & _M32
    for _ in range(rounds):
        p_b = c2 * _ROUND_B
        p_a = c0 * _ROUND_A
        c0 = ((p_b >> 32) ^ c1 ^ k0) & _M32
        c2 = ((p_a >> 32) ^ c3 ^ k1) & _M32
        c1, c3 = p_b, p_a  # low words, unmasked (see the module docstring)
        k0 = k0 + _KEY_A  # the keys' carries only reach bits >= 32, which the masks drop
        k1 = k1 + _KEY_B
    return c0, torch.as_tensor(c1) & _M32, c2, torch.as_tensor(c3) & _M32


def uniform(r: torch.Tensor) -> torch.Tensor:
    """Triton's ``uint_to_uniform_float``: bitcast uint32 to int32, fold negatives with bitwise
    not, scale by 4.6566127342e-10. For r in [0, 2**32) the folded value is ``min(r, r ^ M32)``."""
    return torch.minimum(r, r ^ _M32).to(torch.float32) * _UNIFORM_SCALE


def _normal_quads(stream: torch.Tensor, step: torch.Tensor, draw, quads: int) -> torch.Tensor:
    """All 4 * quads normals of each sample, float32 (B, 4 * quads); ``draw`` an int or 0-d tensor."""
    q = torch.arange(quads, device=stream.device, dtype=torch.int64).unsqueeze(0)
    k0 = (stream & _M32).unsqueeze(1)
    k1 = (stream >> 32).unsqueeze(1)  # philox4x32 masks the keys
    r0, r1, r2, r3 = philox4x32(q, (step & _M32).unsqueeze(1), draw & _M32, 0, k0, k1)
    u = uniform(torch.stack((r0, r2, r1, r3), -1))  # (B, Q, 4): the two radius words, the two angle words
    radius = torch.sqrt(-2.0 * torch.log(torch.clamp_min(u[..., :2], 1e-7)))
    theta = _TWO_PI * u[..., 2:]
    z = torch.stack((radius * torch.cos(theta), radius * torch.sin(theta)), -1)  # (B, Q, pair, cos|sin)
    return z.reshape(stream.shape[0], quads * 4)


def _normal_flat(stream: torch.Tensor, step: torch.Tensor, draw, q: torch.Tensor) -> torch.Tensor:
    """:func:`_normal_quads` laid out for the compiler: every tensor is 1-D over the B * quads
    Philox calls (sample-major), so the fused loop runs (and vectorises) along that one index
    even when a sample has a single quad, and no (B, Q, 4) intermediate is formed. ``q`` is
    ``arange(quads)`` (int64): a tensor, so that its length is a dynamic size of the export."""
    B, quads = stream.shape[0], q.shape[0]
    q = q.unsqueeze(0).expand(B, quads).reshape(-1)
    row = lambda v: v.unsqueeze(1).expand(B, quads).reshape(-1)
    r0, r1, r2, r3 = philox4x32(q, row(step & _M32), draw & _M32, 0, row(stream & _M32), row(stream >> 32))
    radius_a = torch.sqrt(-2.0 * torch.log(torch.clamp_min(uniform(r0), 1e-7)))
    radius_b = torch.sqrt(-2.0 * torch.log(torch.clamp_min(uniform(r2), 1e-7)))
    theta_a, theta_b = _TWO_PI * uniform(r1), _TWO_PI * uniform(r3)
    z = torch.stack((radius_a * torch.cos(theta_a), radius_a * torch.sin(theta_a),
                     radius_b * torch.cos(theta_b), radius_b * torch.sin(theta_b)), -1)
    return z.reshape(B, quads * 4)


def normal_eager(stream: torch.Tensor, step: torch.Tensor, draw: int, n: int) -> torch.Tensor:
    """Normals z[b, i], i < n, for int64 ``stream`` (B,) and ``step`` (B,). Float32, shape (B, n)."""
    return _normal_quads(stream, step, draw, (n + 3) // 4)[:, :n]


# --- path selection -------------------------------------------------------------------------------

class _State:
    """Per-process state of the compiled path (a lock: building happens once per process)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.runners = {}         # "single" / "multi" (one quad per sample or more) -> loaded package
        self.failed = None        # the reason building failed, if it did
        self.eager_s = 0.0        # seconds spent in eager normals on CPU tensors (auto mode)
        self.budget_s = None      # the build cost expected on this machine (auto mode)
        self.last = None          # "eager" or "compiled": the path of the last call
        self.draws = {}           # draw -> 0-d int64 tensor
        self.quads = {}           # quads -> arange(quads)


_STATE = _State()


def reset() -> None:
    """Forget the loaded packages, a failure and the eager-time account of this process."""
    global _STATE
    _STATE = _State()


def noise_mode() -> str:
    """The current value of ``SDESOLVE_NOISE``: ``"auto"``, ``"compiled"`` or ``"eager"``."""
    mode = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
    if mode not in _MODES:
        raise ValueError(f"{ENV_VAR}={os.environ[ENV_VAR]!r}: expected one of auto, compiled, eager")
    return mode


def normal_path() -> str | None:
    """The path the last :func:`normal_from_counters` call of this process took: ``"eager"`` or
    ``"compiled"`` (None before the first call)."""
    return _STATE.last


def _cxx_compiler() -> str | None:
    names = [os.environ["CXX"]] if os.environ.get("CXX") else []
    for name in names + ["g++", "c++", "clang++"]:
        found = shutil.which(name)
        if found:
            return found
    return None


def compiled_available() -> bool:
    """Whether the compiled path can be used here: a package is already built, or torch can
    export and AOT-compile here (a C++ compiler on PATH); False after a failure in this process."""
    if _STATE.failed is not None:
        return False
    if all(os.path.exists(_package_path(kind)) for kind in ("single", "multi")):
        return True
    try:
        import torch._inductor  # noqa: F401
        import torch.export  # noqa: F401
    except Exception:  # pragma: no cover - a torch build without inductor
        return False
    return _cxx_compiler() is not None


def cache_dir() -> str:
    """Where the compiled packages live: ``SDESOLVE_CACHE_DIR``, else ``sdesolve/`` inside
    inductor's cache directory (``TORCHINDUCTOR_CACHE_DIR`` or ``/tmp/torchinductor_$USER``)."""
    if os.environ.get("SDESOLVE_CACHE_DIR"):
        return os.environ["SDESOLVE_CACHE_DIR"]
    from torch._inductor.runtime.cache_dir_utils import cache_dir as inductor_cache_dir
    return os.path.join(inductor_cache_dir(), "sdesolve")


@functools.lru_cache(maxsize=None)
def _package_key() -> str:
    """Torch version, processor and the source of the compiled functions: a package built for
    other code or another machine (inductor compiles for the host's instruction set) is not used."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line for line in f if line.startswith(("model name", "flags")))
    except (OSError, StopIteration):
        pass
    src = "".join(inspect.getsource(f) for f in (philox4x32, uniform, _normal_flat))
    h = hashlib.sha1("\n".join([torch.__version__, platform.machine(), cpu, src]).encode())
    return h.hexdigest()[:16]


def _package_path(kind: str) -> str:
    return os.path.join(cache_dir(), f"philox_normals_{kind}_{_package_key()}.pt2")


class _Normals(torch.nn.Module):
    def forward(self, stream, step, draw, q):
        return _normal_flat(stream, step, draw, q)


def _build_package(kind: str, path: str) -> None:
    """Export the flat normal function with a dynamic batch (>= 2) and a dynamic number of quads
    (>= 2; "single" fixes it at 1) and AOT-compile it into ``path`` (written atomically)."""
    B = torch.export.Dim("batch", min=2)
    quads = 1 if kind == "single" else 3
    args = (torch.arange(4, dtype=torch.int64), torch.zeros(4, dtype=torch.int64),
            torch.tensor(0, dtype=torch.int64), torch.arange(quads, dtype=torch.int64))
    q_dim = None if kind == "single" else {0: torch.export.Dim("quads", min=2)}
    ep = torch.export.export(_Normals(), args, dynamic_shapes=({0: B}, {0: B}, {}, q_dim))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.pt2"
    torch._inductor.aoti_compile_and_package(ep, package_path=tmp)
    os.replace(tmp, path)


def _record_file() -> str:
    return os.path.join(cache_dir(), "philox_build_seconds.json")


def _expected_build_s() -> float:
    """0 when both packages are built; else the last build time recorded here, else COLD_COMPILE_S."""
    if all(os.path.exists(_package_path(kind)) for kind in ("single", "multi")):
        return 0.0
    try:
        with open(_record_file()) as f:
            return max(float(json.load(f)["seconds"]), 1.0)
    except Exception:
        return COLD_COMPILE_S


def _write_record(seconds: float) -> None:
    path = _record_file()
    try:
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({"torch": torch.__version__, "seconds": round(seconds, 3)}, f)
        os.replace(tmp, path)
    except OSError:
        pass  # a record is an optimisation, never a requirement


def _fast_call(model):
    """A direct call of a loaded package on its flat tensor inputs: the package's ``__call__``
    parses its input and output tree specs (JSON) at every call, tens of microseconds that
    matter for small batches; our inputs and output are flat already."""
    try:
        boxed = model.loader.boxed_run
    except AttributeError:  # another torch: the public call
        return model
    return lambda *args: boxed(list(args))[0]


def _runner(kind: str):
    """The loaded package of ``kind``, built first if it is not on disk; None after a failure."""
    st = _STATE
    fn = st.runners.get(kind)
    if fn is not None or st.failed is not None:
        return fn
    with st.lock:
        if kind in st.runners or st.failed is not None:
            return st.runners.get(kind)
        try:
            path = _package_path(kind)
            if not os.path.exists(path):
                if _cxx_compiler() is None:
                    raise RuntimeError("no C++ compiler on PATH")
                t = time.perf_counter()
                _build_package(kind, path)
                _write_record(time.perf_counter() - t)
            st.runners[kind] = _fast_call(torch._inductor.aoti_load_package(path))
        except Exception as e:  # any export, compiler or loading failure: eager for good
            st.failed = f"{type(e).__name__}: {e}"
            warnings.warn(f"sdesolve.noise: the compiled Philox path is unavailable, using the eager one "
                          f"({st.failed[:300]})", RuntimeWarning, stacklevel=4)
            return None
        return st.runners[kind]


def compile_normals() -> bool:
    """Build (if needed) and load both compiled packages now; whether the compiled path is usable."""
    return _runner("single") is not None and _runner("multi") is not None


def _normal_compiled(stream, step, draw: int, n: int):
    """The compiled path, or None when it is unavailable."""
    st = _STATE
    quads = (n + 3) // 4
    fn = _runner("single" if quads == 1 else "multi")
    if fn is None:
        return None
    d = st.draws.get(draw)
    if d is None:
        d = st.draws[draw] = torch.tensor(draw & _M32, dtype=torch.int64)
    q = st.quads.get(quads)
    if q is None:
        q = st.quads[quads] = torch.arange(quads, dtype=torch.int64)
    b = stream.shape[0]
    if b == 1:  # the export's batch is >= 2
        stream, step = stream.repeat(2), step.repeat(2)
    z = fn(stream.contiguous(), step.contiguous(), d, q)
    return z[:b, :n] if (b == 1 or n % 4) else z


def normal_from_counters(stream: torch.Tensor, step: torch.Tensor, draw: int, n: int) -> torch.Tensor:
    """Normals z[b, i], i < n, for int64 ``stream`` (B,) and ``step`` (B,). Float32, shape (B, n).

    Takes the eager or the compiled path as ``SDESOLVE_NOISE`` says (module docstring).
    """
    st = _STATE
    mode = noise_mode()
    if mode == "eager" or stream.device.type != "cpu" or st.failed is not None or stream.shape[0] == 0:
        st.last = "eager"
        return normal_eager(stream, step, draw, n)
    if mode == "auto" and not st.runners:
        if st.budget_s is None:
            st.budget_s = _expected_build_s() if compiled_available() else float("inf")
        if st.eager_s < st.budget_s:
            t = time.perf_counter()
            z = normal_eager(stream, step, draw, n)
            st.eager_s += time.perf_counter() - t
            st.last = "eager"
            return z
    z = _normal_compiled(stream, step, draw, n)
    if z is None:
        st.last = "eager"
        return normal_eager(stream, step, draw, n)
    st.last = "compiled"
    return z
