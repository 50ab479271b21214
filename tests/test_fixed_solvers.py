"""Fixed-step solvers: convergence orders against closed forms."""
import math

import pytest
import torch

import sdesolve as sds

from helpers import PathNoise, fitted_slope

A = torch.tensor([[-0.5, 2.0, 0.0], [-2.0, -0.5, 0.3], [0.1, 0.0, -1.0]], dtype=torch.float64)
Y0 = torch.tensor([[1.0, 0.5, -0.3], [0.2, -1.0, 0.8]], dtype=torch.float64)


def _linear_error(solver, steps):
    eq = sds.ODE(lambda t, y: y @ A.T)
    sol = sds.solve(eq, Y0, 0.0, 1.0, solver, steps=steps)
    exact = Y0 @ torch.linalg.matrix_exp(A).T
    return float((sol.y - exact).abs().max())


@pytest.mark.parametrize("solver,order,steps", [
    (sds.Euler(), 1, [64, 128, 256, 512]),
    (sds.Heun(), 2, [16, 32, 64, 128]),
    (sds.Midpoint(), 2, [16, 32, 64, 128]),
    (sds.RK4(), 4, [8, 16, 32, 64]),
], ids=lambda v: type(v).__name__ if isinstance(v, sds.Solver) else None)
def test_ode_order_on_linear_system(solver, order, steps):
    errs = [_linear_error(solver, n) for n in steps]
    slope = fitted_slope([1 / n for n in steps], errs)
    assert abs(slope - order) < 0.2, (slope, errs)


def test_nfe_counts():
    eq = sds.ODE(lambda t, y: -y)
    assert sds.solve(eq, Y0, 0.0, 1.0, sds.RK4(), steps=10).stats.nfe == 40
    sol = sds.solve(eq, Y0, 0.0, 1.0, sds.Heun(), steps=10)
    assert sol.stats.nfe == 20 and sol.stats.sample_nfe == 40 and sol.stats.steps == 10


def test_reverse_time_and_save_at():
    eq = sds.ODE(lambda t, y: y @ A.T)
    sol = sds.solve(eq, Y0, 1.0, 0.0, sds.RK4(), steps=64, save_at=True)
    torch.testing.assert_close(sol.y, Y0 @ torch.linalg.matrix_exp(-A).T, rtol=1e-7, atol=1e-7)
    assert sol.ys.shape == (65, 2, 3) and sol.ts[0] == 1.0 and sol.ts[-1] == 0.0


# --- SDEs on one Brownian path shared by all step sizes -----------------------------------------
FINE = 2**11


def _strong_errors(eq, x0, exact_fn, ks, batch=2000, T=1.0, seed=0):
    path = PathNoise(batch, x0.shape[1], FINE, T, torch.Generator().manual_seed(seed))
    exact = exact_fn(path)
    errs = []
    for k in ks:
        sol = sds.solve(eq, x0.expand(batch, -1), 0.0, T, sds.EulerMaruyama(), steps=FINE // k, noise=path.coarse(k))
        errs.append(float((sol.y - exact).abs().mean()))
    return [k * T / FINE for k in ks], errs


def test_euler_maruyama_strong_order_gbm():
    mu, sig = 1.0, 1.0  # geometric Brownian motion: exact X_T = X_0 exp((mu - sig^2/2) T + sig W_T)
    eq = sds.SDE(lambda t, x: mu * x, lambda t, x: sig * x)
    x0 = torch.ones(1, 1, dtype=torch.float64)
    hs, errs = _strong_errors(eq, x0, lambda p: torch.exp((mu - sig**2 / 2) + sig * p.W_T()), [8, 16, 32, 64, 128])
    assert abs(fitted_slope(hs, errs) - 0.5) < 0.15, errs


def test_euler_maruyama_strong_order_additive_ou():
    th, sig = 1.5, 0.8  # additive noise: EM has strong order 1 (Kloeden & Platen, Thm 10.2.2 with 10.3)
    eq = sds.SDE(lambda t, x: -th * x, lambda t, x: torch.full_like(x, sig), noise="additive")
    x0 = torch.full((1, 1), 2.0, dtype=torch.float64)

    def exact(path):
        # X_T = e^{-th T} X_0 + sig int e^{-th (T - s)} dW_s; the integrand is smooth, so the
        # midpoint sum over the fine path is accurate to O(h_fine) (far below the coarse errors)
        s_mid = (torch.arange(FINE, dtype=torch.float64) + 0.5) * path.h
        w = torch.exp(-th * (1.0 - s_mid))[:, None, None]
        return math.exp(-th) * 2.0 + sig * (w * path.dW).sum(0)

    hs, errs = _strong_errors(eq, x0, exact, [8, 16, 32, 64, 128])
    assert abs(fitted_slope(hs, errs) - 1.0) < 0.15, errs


def test_euler_maruyama_ou_moments():
    th, sig, x0, n, M = 1.0, 0.7, 1.5, 100, 40000
    h = 1.0 / n
    eq = sds.SDE(lambda t, x: -th * x, lambda t, x: torch.full_like(x, sig), noise="additive")
    y = sds.solve(eq, torch.full((M, 1), x0, dtype=torch.float64), 0.0, 1.0, sds.EulerMaruyama(), steps=n, seed=1).y
    # the EM scheme's own law is exact: X_n = a^n x0 + N(0, sig^2 h (1 - a^{2n}) / (1 - a^2)), a = 1 - th h
    a = 1 - th * h
    mean, var = a**n * x0, sig**2 * h * (1 - a ** (2 * n)) / (1 - a**2)
    assert abs(float(y.mean()) - mean) < 5 * math.sqrt(var / M)
    assert abs(float(y.var()) / var - 1) < 5 * math.sqrt(2 / M)
    # and it is within its O(h) weak bias of the SDE's closed form
    mean_sde, var_sde = math.exp(-th) * x0, sig**2 / (2 * th) * (1 - math.exp(-2 * th))
    assert abs(mean - mean_sde) < 2 * th * h * abs(mean_sde) and abs(var - var_sde) < 2 * th * h * var_sde
