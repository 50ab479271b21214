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
    exponential        equal steps in log sigma (k-diffusion's get_sigmas_exponential): the same
                       grid as ``logsnr``, since lambda = -log sigma
    polyexponential(rho=1)  log sigma_i = log s_min + (1 - i/N)^rho (log s_max - log s_min)
                       (k-diffusion's get_sigmas_polyexponential; rho = 1 is ``exponential``)
    beta(a=0.6, b=0.6) sigma_i = s_min + F^{-1}(1 - i/N) (s_max - s_min), F the Beta(a, b) CDF
                       (Lee et al. 2024, "Beta sampling is all you need"; diffusers'
                       ``use_beta_sigmas``)
    time_uniform(rho=1)  t_i = (T^{1/rho} + i/N (t_min^{1/rho} - T^{1/rho}))^rho: polynomial in the
                       process's own time (rho = 1 is ``uniform``; diff-sampler's "time_uniform"
                       grid on the VP SDE, Zhou et al. 2024)
    linspace_timesteps / leading_timesteps / trailing_timesteps(n_train=1000, final_zero=True)
                       diffusers' timestep spacings ("Common diffusion noise schedules and sample
                       steps are flawed", Lin et al. 2024, Table 2) on N training timesteps, with
                       diffusers' final point: t = 0 (sigma = 0, ``final_sigmas_type="zero"``,
                       the default of DPMSolverMultistepScheduler) or timestep 0 (``"sigma_min"``)

All grids in sigma are mapped back to t through ``process.t_of_sigma_edm``. k-diffusion's grids
end at sigma = 0: wrap a schedule in :func:`sdesolve.solvers.diffusion.append_zero` for that.

Flow paths to pure noise. A path with alpha(T) = 0 (``RectifiedFlow(T=1.0)``, the whole linear path
of diffusers' flow-matching schedulers) has lambda(T) = -inf and sigma_edm(T) = inf, where no grid
in lambda or sigma can start (nor sensibly where alpha / sigma is below float64 rounding, lambda <
log(2^-52) ~ -36: ``CosinePath(T=1.0)``, whose cos(pi / 2) is 6e-17). The grids spaced in lambda
or sigma (``logsnr``/``exponential``, ``karras``, ``polyexponential``, ``beta``) then start at the
noise level ``SIGMA_EDM_MAX = 999`` instead, sigma / alpha = 999, lambda = -log 999 ~ -6.91: on
the linear path t = 0.999 = 1 - 1/1000, the first point of diffusers' ``use_flow_sigmas`` grids
(1 - 1/N, N = 1000 training steps) and the default T of ``RectifiedFlow()``, so these grids on
``RectifiedFlow(T=1.0)`` are the grids on ``RectifiedFlow()``. Sampling starts there from the prior
N(0, sigma(T)^2 I) (the dropped alpha x_0 is 1e-3 x_0 on the linear path). The grids spaced in t
(``uniform``, ``quadratic``, the timestep spacings) start at T itself, as diffusers' FlowMatch
schedulers do; ``time_uniform``, the default grid of the samplers that work in lambda or in
rho = sigma / alpha (which is infinite at alpha = 0), starts at ``SIGMA_EDM_MAX`` like the grids in
sigma. At the data end, a time with lambda = +inf (sigma = 0) cannot
be the end of a grid in lambda or sigma: an error.
"""
from __future__ import annotations

import math

import torch

__all__ = ["uniform", "quadratic", "logsnr", "karras", "exponential", "polyexponential", "beta", "time_uniform",
           "linspace_timesteps", "leading_timesteps", "trailing_timesteps", "validate", "SIGMA_EDM_MAX"]

SIGMA_EDM_MAX = 999.0
"""Where grids in lambda or sigma start on a path whose noise end has alpha = 0 (module docstring)."""


def _ends(process, t_start, t_end):
    t_start = process.T if t_start is None else float(t_start)
    t_end = process.t_min if t_end is None else float(t_end)
    return t_start, t_end


_LAM_ZERO_ALPHA = math.log(torch.finfo(torch.float64).eps)  # -36.04


def _finite_ends(process, a, b, name):
    """(a, b) with an end at lambda = -inf (alpha = 0, pure noise) moved to sigma_edm =
    ``SIGMA_EDM_MAX``; an end at lambda = +inf (sigma = 0) is an error naming the schedule."""
    out = []
    for t in (a, b):
        t = _noise_start(process, t)
        lam = float(process.lam(torch.tensor(t, dtype=torch.float64)))
        if not math.isfinite(lam):
            raise ValueError(f"{name}: the grid is spaced in the log-SNR / noise level, which is {lam} at t = {t} "
                             f"on {process!r} (sigma = 0 there); end it at a time with sigma > 0 (t_end = t_min)")
        out.append(t)
    a2, b2 = out
    if not (a2 - b2) * (a - b) > 0:
        raise ValueError(f"{name}: on {process!r} the grid from t = {a} to {b} starts at sigma/alpha = "
                         f"{SIGMA_EDM_MAX} (t = {a2 if a2 != a else b2}), outside the interval")
    return a2, b2


def _noise_start(process, a):
    """``a``, or where sigma_edm = ``SIGMA_EDM_MAX`` when alpha(a) = 0, or alpha / sigma is below
    float64 rounding (cos(pi / 2) = 6e-17; module docstring)."""
    if float(process.lam(torch.tensor(a, dtype=torch.float64))) < _LAM_ZERO_ALPHA:
        return float(process.t_of_sigma_edm(torch.tensor(SIGMA_EDM_MAX, dtype=torch.float64)))
    return a


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
    a, b = _finite_ends(process, *_ends(process, t_start, t_end), "logsnr")
    lam = torch.linspace(float(process.lam(a)), float(process.lam(b)), steps + 1, dtype=torch.float64)
    t = process.t_of_lam(lam)
    t[0], t[-1] = a, b  # exact end points despite the round trip
    return t


def karras(rho: float = 7.0):
    """The EDM grid with exponent ``rho`` (Karras et al. 2022), as a schedule function."""
    def schedule(process, steps: int, t_start=None, t_end=None) -> torch.Tensor:
        _check_steps(steps)
        a, b = _finite_ends(process, *_ends(process, t_start, t_end), "karras")
        s_max, s_min = float(process.sigma_edm(a)), float(process.sigma_edm(b))
        u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
        sig = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
        t = process.t_of_sigma_edm(sig)
        t[0], t[-1] = a, b
        return t
    schedule.__name__ = f"karras(rho={rho})"
    return schedule


exponential = logsnr
"""Equal steps in log sigma_edm = -lambda: k-diffusion's exponential grid (the same as ``logsnr``)."""


def _in_sigma(process, a, b, sig):
    t = process.t_of_sigma_edm(sig)
    t[0], t[-1] = a, b
    return t


def polyexponential(rho: float = 1.0):
    """k-diffusion's polynomial-in-log-sigma grid: log sigma_i = log s_min + (1 - i/N)^rho
    (log s_max - log s_min). rho = 1 is ``exponential``; rho > 1 puts more steps at low noise."""
    rho = float(rho)
    if rho <= 0:
        raise ValueError(f"polyexponential: rho must be > 0, got {rho}")

    def schedule(process, steps: int, t_start=None, t_end=None) -> torch.Tensor:
        _check_steps(steps)
        a, b = _finite_ends(process, *_ends(process, t_start, t_end), "polyexponential")
        ls_max, ls_min = float(torch.log(process.sigma_edm(a))), float(torch.log(process.sigma_edm(b)))
        ramp = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64) ** rho
        return _in_sigma(process, a, b, torch.exp(ls_min + ramp * (ls_max - ls_min)))
    schedule.__name__ = f"polyexponential(rho={rho})"
    return schedule


def beta(a: float = 0.6, b: float = 0.6):
    """The Beta-quantile grid in sigma (Lee et al. 2024; diffusers' ``use_beta_sigmas`` with its
    defaults a = b = 0.6): sigma_i = s_min + F^{-1}(1 - i/N; a, b) (s_max - s_min)."""
    a, b = float(a), float(b)
    if a <= 0 or b <= 0:
        raise ValueError(f"beta: a and b must be > 0, got {a}, {b}")

    def schedule(process, steps: int, t_start=None, t_end=None) -> torch.Tensor:
        from scipy.stats import beta as beta_dist
        _check_steps(steps)
        t0, t1 = _finite_ends(process, *_ends(process, t_start, t_end), "beta")
        s_max, s_min = float(process.sigma_edm(t0)), float(process.sigma_edm(t1))
        q = torch.as_tensor(beta_dist.ppf(1.0 - torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64).numpy(),
                                          a, b), dtype=torch.float64)
        return _in_sigma(process, t0, t1, s_min + q * (s_max - s_min))
    schedule.__name__ = f"beta(a={a}, b={b})"
    return schedule


def time_uniform(rho: float = 1.0):
    """Polynomial spacing in the process's own time: t_i = (T^{1/rho} + i/N (t_min^{1/rho} -
    T^{1/rho}))^rho (rho = 1: ``uniform``). On the VP SDE this is diff-sampler's "time_uniform"
    grid (Zhou et al. 2024, with its ``schedule_rho``)."""
    rho = float(rho)
    if rho <= 0:
        raise ValueError(f"time_uniform: rho must be > 0, got {rho}")

    def schedule(process, steps: int, t_start=None, t_end=None) -> torch.Tensor:
        _check_steps(steps)
        a, b = _ends(process, t_start, t_end)
        if b < 0:
            raise ValueError(f"time_uniform needs times >= 0, got t_end = {b}")
        a = _noise_start(process, a)
        u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
        t = (a ** (1 / rho) + u * (b ** (1 / rho) - a ** (1 / rho))) ** rho
        t[0], t[-1] = a, b
        return t
    schedule.__name__ = f"time_uniform(rho={rho})"
    return schedule


def _timesteps_schedule(name, make, n_train, final_zero):
    """A diffusers-spacing schedule: integer timesteps k (from ``make(steps)``, descending) at
    t = t_end + k (t_start - t_end) / (n_train - 1), then the final point."""
    if not isinstance(n_train, int) or n_train < 2:
        raise ValueError(f"{name}: n_train must be an integer >= 2, got {n_train!r}")

    def schedule(process, steps: int, t_start=None, t_end=None) -> torch.Tensor:
        _check_steps(steps)
        a, b = _ends(process, t_start, t_end)
        k = make(steps).to(torch.float64)
        if k.numel() != steps or (k[1:] >= k[:-1]).any() or k[-1] < 0 or k[0] > n_train - 1:
            raise ValueError(f"{name}: {steps} steps on {n_train} timesteps give the timesteps {k.tolist()}, "
                             "not distinct and descending inside [0, n_train - 1]")
        t = b + k * ((a - b) / (n_train - 1))
        if final_zero:
            if float(process.sigma(torch.zeros(1, dtype=torch.float64))) != 0.0:
                raise ValueError(f"{name}(final_zero=True) ends at sigma = 0, which {process!r} does not reach at "
                                 "t = 0; use final_zero=False (diffusers' final_sigmas_type='sigma_min')")
            last = 0.0
        else:
            if float(k[-1]) == 0.0:
                raise ValueError(f"{name}(final_zero=False) appends timestep 0, which is already the last timestep")
            last = b
        return torch.cat([t, torch.tensor([last], dtype=torch.float64)])
    schedule.__name__ = f"{name}(n_train={n_train}, final_zero={final_zero})"
    return schedule


def linspace_timesteps(n_train: int = 1000, final_zero: bool = True):
    """diffusers' "linspace" spacing: timesteps round(linspace(0, N - 1, steps + 1))[::-1][:-1]
    (N = ``n_train``), then t = 0 (``final_zero``, diffusers' default ``final_sigmas_type="zero"``:
    the last step goes to sigma = 0 and returns the data prediction) or timestep 0 (t_min,
    ``"sigma_min"``). The timestep k sits at t = t_min + k (T - t_min) / (N - 1)."""
    import numpy as np

    def make(steps):
        return torch.from_numpy(np.linspace(0, n_train - 1, steps + 1).round()[::-1][:-1].copy())
    return _timesteps_schedule("linspace_timesteps", make, n_train, final_zero)


def leading_timesteps(n_train: int = 1000, steps_offset: int = 0, final_zero: bool = True):
    """diffusers' "leading" spacing of DPMSolverMultistepScheduler / DEIS: with r = N // (steps + 1),
    timesteps (arange(steps + 1) r)[::-1][:-1] + ``steps_offset``; final point as in
    :func:`linspace_timesteps`."""
    import numpy as np

    def make(steps):
        r = n_train // (steps + 1)
        return torch.from_numpy((np.arange(0, steps + 1) * r).round()[::-1][:-1].copy() + int(steps_offset))
    return _timesteps_schedule("leading_timesteps", make, n_train, final_zero)


def trailing_timesteps(n_train: int = 1000, final_zero: bool = True):
    """diffusers' "trailing" spacing: timesteps round(arange(N, 0, -N / steps)) - 1; final point
    as in :func:`linspace_timesteps`."""
    import numpy as np

    def make(steps):
        return torch.from_numpy(np.arange(n_train, 0, -n_train / steps).round().copy() - 1.0)
    return _timesteps_schedule("trailing_timesteps", make, n_train, final_zero)


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
