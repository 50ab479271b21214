"""Which path a fused update takes: its Triton kernel or its PyTorch ``*_ref``.

The environment variable ``SDESOLVE_KERNELS`` is read at every call:

``auto`` (default, also when unset or empty)
    the Triton kernel for CUDA states when triton is installed, ``*_ref`` otherwise;
``triton``
    the Triton kernel for every call a kernel can serve; CPU states then run under the Triton
    interpreter, which is only active when ``TRITON_INTERPRET=1`` was set before triton was
    first imported in the process (an error says so otherwise);
``torch``
    always ``*_ref``.

In every mode two kinds of call take ``*_ref``: float64 states (the kernels compute in float32)
and calls that need a gradient (grad mode on and a tensor argument requiring grad): the kernels
have no backward, ``*_ref`` is plain differentiable PyTorch with the same semantics.

triton is imported lazily, on the first call that takes a kernel, never when sdesolve is imported.
"""
from __future__ import annotations

import functools
import importlib.util
import os

import torch

from .common import KERNEL_DTYPES

__all__ = ["ENV_VAR", "kernel_mode", "triton_installed", "interpreter_active", "load_kernels", "use_triton"]

ENV_VAR = "SDESOLVE_KERNELS"
_MODES = ("auto", "triton", "torch")


def kernel_mode() -> str:
    """The current value of ``SDESOLVE_KERNELS``: ``"auto"``, ``"triton"`` or ``"torch"``."""
    mode = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
    if mode not in _MODES:
        raise ValueError(f"{ENV_VAR}={os.environ[ENV_VAR]!r}: expected one of auto, triton, torch")
    return mode


@functools.lru_cache(maxsize=None)
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def load_kernels():
    """The module of Triton kernels (imports triton on first use)."""
    from . import triton_kernels

    return triton_kernels


def interpreter_active() -> bool:
    """Whether the Triton kernels run under the interpreter in this process (so on CPU tensors)."""
    if not triton_installed():
        return False
    return load_kernels().interpreted()


def use_triton(where: str, x: torch.Tensor, tensors) -> bool:
    """Whether ``where`` runs its Triton kernel for state ``x`` and tensor arguments ``tensors``."""
    mode = kernel_mode()
    if mode == "torch" or x.dtype not in KERNEL_DTYPES or x.numel() == 0:
        return False
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors):
        return False
    if mode == "auto":
        return x.is_cuda and triton_installed()
    if not triton_installed():
        raise RuntimeError(f"{where}: {ENV_VAR}=triton but triton is not installed")
    if x.is_cuda:
        return True
    if x.device.type != "cpu":
        raise RuntimeError(f"{where}: {ENV_VAR}=triton has no Triton path for {x.device} tensors")
    if not interpreter_active():
        raise RuntimeError(
            f"{where}: {ENV_VAR}=triton on CPU tensors needs the Triton interpreter, which is not active "
            "in this process: set TRITON_INTERPRET=1 before triton is first imported"
        )
    return True
