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
    the same function in C (``philox_cpu.c`` beside this module), built once per machine with the
    system's C compiler into a shared library in :func:`cache_dir` and called through ``ctypes``
    on the tensors' memory: blocks of 64 Philox calls, each phase a loop the compiler vectorises
    (the 32 x 32 -> 64-bit products of the rounds, the uniforms, log/sqrt, cos and sin; on
    x86-64 glibc the vector log/cos/sin of libmvec). About a fifth of a second to build (the
    library's name carries a hash of the source, the compiler and the processor, so that a
    library built for other code or another machine is not used); as fast as ``torch.randn``
    per element from a few thousand normals up. The Philox integers are the same bit for bit;
    the float32 operations are the eager path's in the same order (no reassociation or
    contraction), so the normals agree with it to a few ulp of log/cos/sin, as the Triton
    kernels do.

Which path runs is chosen by the environment variable ``SDESOLVE_NOISE``, read at every call:

``auto`` (default, also when unset or empty)
    CPU tensors take the compiled path when it can be had: the library is built at the first CPU
    call if it is not on disk (once per machine, about a fifth of a second) and loaded; without a C
    compiler eager (silently), after a failed build eager with one warning. A process takes one path for all its calls (the two
    differ in the last bits of log/cos/sin, so switching paths mid-run would change a sample by
    rounding). Non-CPU tensors always run eager (CUDA has the Triton kernels).
``compiled``
    the compiled path for every CPU call (building the library on the first if needed);
``eager``
    always eager.

If building or loading fails (no C compiler, a compiler error) the process falls back to eager
for good, with one warning. :func:`normal_path` says which path the last call took.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import threading
import warnings

import torch

__all__ = ["ENV_VAR", "philox4x32", "uniform", "normal_eager", "normal_from_counters",
           "noise_mode", "normal_path", "compiled_available", "compile_normals", "cache_dir", "reset"]

ENV_VAR = "SDESOLVE_NOISE"
_MODES = ("auto", "compiled", "eager")

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


def normal_eager(stream: torch.Tensor, step: torch.Tensor, draw: int, n: int) -> torch.Tensor:
    """Normals z[b, i], i < n, for int64 ``stream`` (B,) and ``step`` (B,). Float32, shape (B, n)."""
    return _normal_quads(stream, step, draw, (n + 3) // 4)[:, :n]


# --- path selection -------------------------------------------------------------------------------

class _State:
    """Per-process state of the compiled path (a lock: building happens once per process)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.runner = None        # the loaded library's function
        self.failed = None        # the reason building failed, if it did
        self.last = None          # "eager" or "compiled": the path of the last call


_STATE = _State()


def reset() -> None:
    """Forget the loaded library and a failure of this process."""
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


def _c_compiler() -> str | None:
    names = [os.environ["CC"]] if os.environ.get("CC") else []
    for name in names + ["cc", "gcc", "clang"]:
        found = shutil.which(name)
        if found:
            return found
    return None


def compiled_available() -> bool:
    """Whether the compiled path can be used here: the library is already built, or a C compiler
    is on PATH to build it; False after a failure in this process."""
    if _STATE.failed is not None:
        return False
    return os.path.exists(_library_path()) or _c_compiler() is not None


def cache_dir() -> str:
    """Where the compiled library lives: ``SDESOLVE_CACHE_DIR``, else ``$XDG_CACHE_HOME/sdesolve``
    (``~/.cache/sdesolve``)."""
    if os.environ.get("SDESOLVE_CACHE_DIR"):
        return os.environ["SDESOLVE_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sdesolve")


_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "philox_cpu.c")
# no -ffast-math: the float32 operations must keep the eager path's order (module docstring)
_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off",
          "-fPIC", "-shared"]
_MVEC = (["-DSDESOLVE_MVEC"], ["-lmvec", "-lm"])  # glibc's vector log/cos/sin; retried without


@functools.lru_cache(maxsize=None)
def _library_key() -> str:
    """The source, the compiler and the processor (``-march=native`` compiles for the host's
    instruction set)."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = "".join(line for line in f if line.startswith(("model name", "flags")))
    except OSError:
        pass
    with open(_SOURCE, "rb") as f:
        src = f.read()
    cc = _c_compiler() or ""
    h = hashlib.sha1(b"\n".join([src, cc.encode(), " ".join(_FLAGS).encode(), platform.machine().encode(),
                                   cpu.encode()]))
    return h.hexdigest()[:16]


def _library_path() -> str:
    return os.path.join(cache_dir(), f"philox_cpu_{_library_key()}.so")


def _build_library(path: str) -> None:
    """Compile ``philox_cpu.c`` into ``path`` (written atomically): with libmvec's vector
    functions where the C library has them, else with the scalar ones."""
    cc = _c_compiler()
    if cc is None:
        raise RuntimeError("no C compiler on PATH (CC, cc, gcc or clang)")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    errors = []
    for defines, libs in (_MVEC, ([], ["-lm"])):
        cmd = [cc, *_FLAGS, *defines, _SOURCE, "-o", tmp, *libs]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode == 0:
            os.replace(tmp, path)
            return
        errors.append(f"{' '.join(cmd)}: {done.stderr.strip()[-500:]}")
    raise RuntimeError("building the Philox library failed: " + " | ".join(errors))


def _load(path: str):
    """The library's function as ``fn(stream, step, draw, n) -> (B, n) float32``; ``step`` a (B,)
    tensor or one int for the batch."""
    lib = ctypes.CDLL(path)
    fn = lib.sdesolve_philox_normals
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint32, ctypes.c_int64,
                   ctypes.c_int64, ctypes.c_void_p]
    fn.restype = None

    def normals(stream, step, draw, n):
        stream = stream.contiguous()
        out = torch.empty(stream.shape[0], n, dtype=torch.float32)
        if isinstance(step, int):
            one = ctypes.c_int64(step)
            fn(stream.data_ptr(), ctypes.addressof(one), 0, draw & _M32, stream.shape[0], n, out.data_ptr())
        else:
            step = step.contiguous()
            fn(stream.data_ptr(), step.data_ptr(), 1, draw & _M32, stream.shape[0], n, out.data_ptr())
        return out

    normals.library = lib  # keeps the library loaded while the function is
    return normals


def _runner():
    """The compiled function, built first if the library is not on disk; None after a failure."""
    st = _STATE
    if st.runner is not None or st.failed is not None:
        return st.runner
    with st.lock:
        if st.runner is not None or st.failed is not None:
            return st.runner
        try:
            path = _library_path()
            if not os.path.exists(path):
                _build_library(path)
            st.runner = _load(path)
        except Exception as e:  # any compiler or loading failure: eager for good
            st.failed = f"{type(e).__name__}: {e}"
            warnings.warn(f"sdesolve.noise: the compiled Philox path is unavailable, using the eager one "
                          f"({st.failed[:300]})", RuntimeWarning, stacklevel=4)
            return None
        return st.runner


def compile_normals() -> bool:
    """Build (if needed) and load the compiled library now; whether the compiled path is usable."""
    return _runner() is not None


def normal_from_counters(stream: torch.Tensor, step, draw: int, n: int) -> torch.Tensor:
    """Normals z[b, i], i < n, for int64 ``stream`` (B,) and ``step`` (B,) (or one int for the
    batch). Float32, shape (B, n).

    Takes the eager or the compiled path as ``SDESOLVE_NOISE`` says (module docstring).
    """
    st = _STATE
    mode = noise_mode()
    fn = None
    if mode != "eager" and stream.is_cpu:
        if mode == "auto" and st.runner is None and st.failed is None and not compiled_available():
            st.failed = "no C compiler"  # auto: eager for good, without a warning (nothing was asked for)
        fn = _runner()
    if fn is None:
        st.last = "eager"
        return normal_eager(stream, _counters(step, stream), draw, n)
    st.last = "compiled"
    return fn(stream, step, draw, n)


def _counters(step, stream: torch.Tensor) -> torch.Tensor:
    return torch.full_like(stream, step) if isinstance(step, int) else step
