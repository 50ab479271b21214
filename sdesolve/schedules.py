"""Time grids for sampling: pure functions ``schedule(process, steps) -> times``.

A grid is a float64 tensor of ``steps + 1`` times, ``process.T`` first, ``process.t_min`` last
(unless other end points are given). ``sample(..., schedule=...)`` also takes an explicit 1-D
tensor instead of a function.

    uniform            equal steps in t (score_sde)
    quadratic          t = t_min + (T - t_min) (1 - i/N)^2: denser near the data (DDIM's
                       "quadratic" spacing, Song et al. 2021a)
    logsnr             equal steps in the half log-SNR lambda (DPM-Solver's "logSNR" spacing)
    karras(rho=7)      sigma_i = (s_max^{1/rho} + i/N (s_min^{1/rho} - s_max^{1/rho}))^rho in the
                       noise level sigma = sigma/alpha of the equivalent VE process (Karras et
                       al. 2022, Eq. 5), mapped back to t
"""
from __future__ import annotations

import torch

__all__ = ["uniform", "quadratic", "logsnr", "karras", "validate"]


def _ends(process, t_start, t_end):
    t_start = process.T if t_start is None else float(t_start)
    t_end = process.t_min if t_end is None else float(t_end)
    return t_start, t_end


def _check_steps(steps):
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")


def uniform(process, steps: int, t_start=None, t_end=None) -> torch.Tensor:
    """steps + 1 times equally spaced in t from t_start (default T) to t_end (default t_min)
    (score_sde's grid)."""
    _check_steps(steps)
    a, b = _ends(process, t_start, t_end)
    return torch.linspace(a, b, steps + 1, dtype=torch.float64)


def quadratic(process, steps: int, t_start=None, t_end=None) -> torch.Tensor:
    """t_i = t_end + (t_start - t_end) (1 - i / N)^2: denser near the data (DDIM's "quadratic"
    spacing, Song et al. 2021a)."""
    _check_steps(steps)
    a, b = _ends(process, t_start, t_end)
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    return b + (a - b) * (1.0 - u) ** 2


def logsnr(process, steps: int, t_start=None, t_end=None) -> torch.Tensor:
    """Times equally spaced in the half log-SNR lambda = log(alpha / sigma) (DPM-Solver's "logSNR"
    spacing, Lu et al. 2022a), mapped back through the process's inverse of lambda."""
    _check_steps(steps)
    a, b = _ends(process, t_start, t_end)
    lam = torch.linspace(float(process.lam(a)), float(process.lam(b)), steps + 1, dtype=torch.float64)
    t = process.t_of_lam(lam)
    t[0], t[-1] = a, b  # exact end points despite the round trip
    return t


def karras(rho: float = 7.0):
    """The EDM grid with exponent ``rho`` (Karras et al. 2022), as a schedule function."""
    def schedule(process, steps: int, t_start=None, t_end=None) -> torch.Tensor:
        _check_steps(steps)
        a, b = _ends(process, t_start, t_end)
        s_max, s_min = float(process.sigma_edm(a)), float(process.sigma_edm(b))
        u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
        sig = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
        t = process.t_of_sigma_edm(sig)
        t[0], t[-1] = a, b
        return t
    schedule.__name__ = f"karras(rho={rho})"
    return schedule


def validate(grid: torch.Tensor, process=None) -> torch.Tensor:
    """Check an explicit grid: 1-D, float, finite, strictly monotone, at least 2 points and,
    for a diffusion process, inside [t_min, T] (the last point may be 0 where the final step
    evaluates nothing there, as in EDM's and k-diffusion's grids ending at sigma = 0)."""
    if not isinstance(grid, torch.Tensor):
        grid = torch.as_tensor(grid, dtype=torch.float64)
    if grid.dim() != 1 or grid.numel() < 2:
        raise ValueError(f"a time grid must be 1-D with at least 2 times, got shape {tuple(grid.shape)}")
    grid = grid.to(torch.float64)
    if not torch.isfinite(grid).all():
        raise ValueError(f"the time grid has non-finite entries at {torch.nonzero(~torch.isfinite(grid)).flatten().tolist()}")
    d = grid[1:] - grid[:-1]
    if not ((d > 0).all() or (d < 0).all()):
        bad = torch.nonzero(d == 0).flatten().tolist() or torch.nonzero(torch.sign(d) != torch.sign(d[0])).flatten().tolist()
        raise ValueError(f"the time grid must be strictly monotone; it is not at index {bad[:5]}")
    if process is not None:
        lo, hi = process.t_min, process.T
        tol = 1e-12 * max(1.0, hi)
        inner = grid[:-1]
        out = torch.nonzero((inner < lo - tol) | (inner > hi + tol)).flatten().tolist()
        last = float(grid[-1])
        if out or not (-tol <= last <= hi + tol):
            idx = out + ([grid.numel() - 1] if not (-tol <= last <= hi + tol) else [])
            raise ValueError(f"times outside [t_min, T] = [{lo}, {hi}] at grid index {idx[:5]}: "
                             f"{[float(grid[i]) for i in idx[:5]]}")
    return grid
