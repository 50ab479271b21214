"""Fused updates of the samplers' hot loops: Triton kernels on CUDA, PyTorch ``*_ref`` elsewhere.

Each update has a Triton kernel, a PyTorch ``*_ref`` with identical semantics (and autograd),
and a dispatcher choosing between them (:mod:`sdesolve.kernels.dispatch`; the environment
variable ``SDESOLVE_KERNELS=auto|triton|torch`` forces a path). Noise is generated in-kernel from
the counters of :class:`sdesolve.noise.Noise` and equals ``Noise.normal`` to float rounding.

==========================  ============================================================
em_step                     x + drift dt + g sqrt|dt| z                (Euler-Maruyama)
affine_noise_step           a x + b s + c z                 (ancestral DDPM / NCSN, DDIM)
langevin_step               x + eps s + sqrt(2 eps) z, eps = 2 alpha (snr |z| / |s|)^2
rk_combine                  y0 + dt sum b_i k_i and the embedded error norm
==========================  ============================================================

Solvers pass their noise through :func:`sdesolve.noise.kernel_noise`: a counter-based Noise
(anything with int64 ``stream`` and ``step`` tensors) is regenerated in-kernel, any other source
of normals is drawn first and passed as ``z``. This package imports nothing from the rest of
sdesolve.

triton is imported lazily, only when a call takes a kernel.
"""
from .affine import affine_noise_step, affine_noise_step_ref, held_affine_step
from .dispatch import ENV_VAR, interpreter_active, kernel_mode
from .em import em_step, em_step_ref
from .langevin import langevin_step, langevin_step_ref, langevin_step_size, langevin_step_size_ref
from .rk import MAX_FUSED_STAGES, rk_combine, rk_combine_ref

__all__ = [
    "em_step",
    "em_step_ref",
    "affine_noise_step",
    "affine_noise_step_ref",
    "held_affine_step",
    "langevin_step",
    "langevin_step_ref",
    "langevin_step_size",
    "langevin_step_size_ref",
    "rk_combine",
    "rk_combine_ref",
    "MAX_FUSED_STAGES",
    "ENV_VAR",
    "kernel_mode",
    "interpreter_active",
]
