"""Milstein and SRA1: strong orders on one Brownian path, torchsde on the same path, reverse time,
and sampling a Gaussian mixture from exact scores."""
import math

import pytest
import torch

import sdesolve as sds

from helpers import fitted_slope


class BrownianPath:
    """A Brownian path on a fine grid with the exact joint law of (dW, I10) on every fine step
    (I10 = int (W(s) - W(s_k)) ds: dW = sqrt(h) z1, I10 = h^{3/2} (z1 / 2 + z2 / (2 sqrt 3))).

    ``coarse(k)`` sums blocks of k fine steps exactly: dW is the sum of the fine increments and
    I10 = sum_j [(W(s_j) - W(T_0)) h + I10_j] over the block's fine steps s_j."""

    def __init__(self, batch, dim, fine_steps, T, generator):
        self.h, self.n, self.T = T / fine_steps, fine_steps, T
        z1 = torch.randn(fine_steps, batch, dim, generator=generator, dtype=torch.float64)
        z2 = torch.randn(fine_steps, batch, dim, generator=generator, dtype=torch.float64)
        self.dW = math.sqrt(self.h) * z1
        self.I10 = self.h**1.5 * (0.5 * z1 + z2 / (2 * math.sqrt(3)))

    def coarse(self, k):
        n = self.n // k
        dW = self.dW.reshape(n, k, *self.dW.shape[1:])
        before = torch.cumsum(dW, 1) - dW  # W(s_j) - W(T_0) at each fine step's start
        return dW.sum(1), (before * self.h + self.I10.reshape(dW.shape)).sum(1)


class StepNoise:
    """What a solver step sees: z = dW / sqrt|h| (draw 0) and (dW, I10), from a given path."""

    def __init__(self, dW, I10, h):
        self.dW, self.I10, self.h = dW, I10, abs(h)

    def normal(self, like, draw=0):
        assert draw == 0, "one normal per step"
        return (self.dW / math.sqrt(self.h)).to(like.dtype)

    def increments(self, like, dt, draw=0):
        return self.dW.to(like.dtype), self.I10.to(like.dtype)


def run(solver, eq, x0, path, k, t0=0.0, sign=1.0):
    """Integrate from t0 over path.T (sign=-1: backwards in time) on the grid of k fine steps."""
    dW, I10 = path.coarse(k)
    n, H, B = dW.shape[0], sign * path.T / dW.shape[0], x0.shape[0]
    y = x0.clone()
    for i in range(n):
        ta = torch.full((B,), t0 + i * H, dtype=torch.float64)
        tb = torch.full((B,), t0 + (i + 1) * H, dtype=torch.float64)
        y = solver.step(eq, ta, tb, y, None, StepNoise(dW[i], I10[i], H)).y
    return y


B, FINE = 1000, 2**11


def test_milstein_strong_order_gbm():
    # dX = mu X dt + sigma X dW:  X_T = X_0 exp((mu - sigma^2 / 2) T + sigma W_T)
    mu, sig, T = 1.0, 0.8, 1.0
    path = BrownianPath(B, 1, FINE, T, torch.Generator().manual_seed(0))
    x0 = torch.ones(B, 1, dtype=torch.float64)
    eq = sds.SDE(lambda t, x: mu * x, lambda t, x: sig * x, noise="diagonal")
    exact = x0 * torch.exp((mu - sig**2 / 2) * T + sig * path.dW.sum(0))
    ks = [2**j for j in range(3, 8)]
    hs = [k * T / FINE for k in ks]
    slopes = {}
    for solver in (sds.Milstein(), sds.EulerMaruyama()):
        errs = [float((run(solver, eq, x0, path, k) - exact).abs().mean()) for k in ks]
        slopes[type(solver).__name__] = fitted_slope(hs, errs)
        print(f"GBM {type(solver).__name__}: mean |error| {[f'{e:.2e}' for e in errs]}")
    print(f"GBM fitted strong orders {slopes}")
    assert abs(slopes["Milstein"] - 1.0) < 0.2 and abs(slopes["EulerMaruyama"] - 0.5) < 0.2


def test_sra1_strong_order_ou():
    # dX = -lam X dt + s dW: X_T = e^{-lam T} X_0 + s int e^{-lam (T - u)} dW_u, the integral over
    # each fine step expanded to first order: e^{-lam (T - s_k)} (dW_k + lam (h dW_k - I10_k)),
    # exact to O(h_fine^2) (here ~2e-7, far below the coarse errors)
    lam, s, T = 2.0, 1.0, 1.0
    path = BrownianPath(B, 2, FINE, T, torch.Generator().manual_seed(1))
    x0 = torch.ones(B, 2, dtype=torch.float64)
    eq = sds.SDE(lambda t, x: -lam * x, lambda t, x: s * torch.ones_like(x), noise="additive")
    decay = torch.exp(-lam * (T - torch.arange(FINE, dtype=torch.float64) * path.h)).reshape(-1, 1, 1)
    exact = math.exp(-lam * T) * x0 + s * (decay * (path.dW + lam * (path.h * path.dW - path.I10))).sum(0)
    ks = [2**j for j in range(4, 9)]
    hs = [k * T / FINE for k in ks]
    errs = [float((run(sds.SRA1(), eq, x0, path, k) - exact).abs().mean()) for k in ks]
    slope = fitted_slope(hs, errs)
    print(f"OU SRA1: mean |error| {[f'{e:.2e}' for e in errs]}, fitted order {slope:.3f}")
    # on a linear drift the order-1.5 error terms (which carry f'') vanish and SRA1 is of order
    # 2; the claim here is "at least 1.5"
    assert slope > 1.5 - 0.2


def test_sra1_strong_order_nonlinear():
    # nonlinear drift and time-dependent additive noise, where order 1.5 is sharp; no closed form:
    # the reference is SRA1 on the fine path itself (error O(h_fine^1.5) ~ 1e-5, 3% of the finest
    # coarse error)
    T = 1.0
    path = BrownianPath(B, 2, FINE, T, torch.Generator().manual_seed(2))
    x0 = torch.full((B, 2), 0.5, dtype=torch.float64)
    eq = sds.SDE(lambda t, x: torch.sin(3 * x) - x, lambda t, x: (1 + 0.5 * t)[:, None].expand_as(x),
                 noise="additive")
    ref = run(sds.SRA1(), eq, x0, path, 1)
    ks = [2**j for j in range(4, 9)]
    hs = [k * T / FINE for k in ks]
    out = {}
    for solver in (sds.SRA1(), sds.EulerMaruyama()):
        errs = [float((run(solver, eq, x0, path, k) - ref).abs().mean()) for k in ks]
        out[type(solver).__name__] = fitted_slope(hs, errs)
        print(f"sin drift {type(solver).__name__}: mean |error| {[f'{e:.2e}' for e in errs]}")
    print(f"nonlinear additive SDE fitted strong orders {out}")
    assert abs(out["SRA1"] - 1.5) < 0.2 and abs(out["EulerMaruyama"] - 1.0) < 0.2


# --- torchsde on the same path -------------------------------------------------------------------
def _grid_brownian(dW, I10, H):
    from torchsde._brownian.brownian_base import BaseBrownian

    class GridBrownian(BaseBrownian):
        """torchsde's Brownian interface over given per-step (dW, U = I10) on a uniform grid."""

        def __call__(self, ta, tb=None, return_U=False, return_A=False):
            i = int(round(float(ta) / H))
            assert abs(float(tb) - float(ta) - H) < 1e-9
            return (dW[i], I10[i]) if return_U else dW[i]

        def __repr__(self):
            return "GridBrownian"

        dtype = property(lambda self: dW.dtype)
        device = property(lambda self: dW.device)
        shape = property(lambda self: dW.shape[1:])
        levy_area_approximation = property(lambda self: "space-time")

    return GridBrownian()


def test_same_path_as_torchsde():
    torchsde = pytest.importorskip("torchsde")
    T, n_fine, k = 1.0, 2**8, 8
    H = k * T / n_fine
    g = torch.Generator().manual_seed(3)
    ts = torch.tensor([0.0, T], dtype=torch.float64)

    class Additive(torch.nn.Module):
        noise_type, sde_type = "additive", "ito"

        def f(self, t, y):
            return torch.sin(3 * y) - y

        def g(self, t, y):
            return torch.diag_embed((1 + 0.5 * t) * torch.ones_like(y))

    path = BrownianPath(200, 2, n_fine, T, g)
    x0 = torch.full((200, 2), 0.5, dtype=torch.float64)
    eq = sds.SDE(lambda t, x: torch.sin(3 * x) - x, lambda t, x: (1 + 0.5 * t)[:, None].expand_as(x),
                 noise="additive")
    ours = run(sds.SRA1(), eq, x0, path, k)
    theirs = torchsde.sdeint(Additive(), x0, ts, method="srk", dt=H, bm=_grid_brownian(*path.coarse(k), H))[-1]
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)

    class GBM(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return y

        def g(self, t, y):
            return 0.8 * y

    path1 = BrownianPath(200, 1, n_fine, T, g)
    x1 = torch.ones(200, 1, dtype=torch.float64)
    gbm = sds.SDE(lambda t, x: x, lambda t, x: 0.8 * x, noise="diagonal")
    ours = run(sds.Milstein(), gbm, x1, path1, k)
    theirs = torchsde.sdeint(GBM(), x1, ts, method="milstein", dt=H, bm=_grid_brownian(*path1.coarse(k), H),
                             options=dict(grad_free=True))[-1]
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


# --- reverse time --------------------------------------------------------------------------------
def test_sra1_reverse_time_is_forward_in_minus_t():
    """Integrating dx = F(t, x) dt + G(t) dW backwards over [0, 1] with h < 0 is integrating
    dx = -F(-s, x) ds + G(-s) dW_s forwards in s = -t over [-1, 0], on the same increments."""
    T = 1.0
    path = BrownianPath(100, 2, 64, T, torch.Generator().manual_seed(4))
    x0 = torch.full((100, 2), 0.3, dtype=torch.float64)
    F = lambda t, x: torch.sin(3 * x) * (1 + t)[:, None] - x
    G = lambda t, x: (1 + 0.5 * t)[:, None].expand_as(x)
    backward = run(sds.SRA1(), sds.SDE(F, G, noise="additive"), x0, path, 4, t0=T, sign=-1.0)
    fwd_eq = sds.SDE(lambda s, x: -F(-s, x), lambda s, x: G(-s, x), noise="additive")
    forward = run(sds.SRA1(), fwd_eq, x0, path, 4, t0=-T, sign=1.0)
    torch.testing.assert_close(backward, forward, rtol=1e-13, atol=1e-13)


def test_sra1_samples_mixture_in_reverse_time():
    from sdesolve.metrics import sliced_wasserstein

    gm = sds.GaussianMixture([0.2, 0.5, 0.3], [[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]], [0.1, 0.3, 0.2])
    p = sds.VPSDE()
    N, PROJ = 4000, 256
    x = sds.sample(p, gm.score(p), sds.SRA1(), shape=(N, 2), seed=21, steps=50).y
    exact = gm.sample(40_000, torch.Generator().manual_seed(9))
    w = torch.bincount(gm.posterior(exact).argmax(1), minlength=3).double() / len(exact)
    props = torch.bincount(gm.posterior(x).argmax(1), minlength=3).double() / N
    # binomial standard deviations of the proportions: within 4
    z = (props - w) / torch.sqrt(w * (1 - w) / N)
    # second moments against the exact mixture's: z-scores with the samples' own standard error
    m2 = (exact.double() ** 2).mean(0)
    zm = ((x.double() ** 2).mean(0) - m2) / ((x.double() ** 2).std(0) / math.sqrt(N))
    ref = exact[:N]  # equal sizes: SW compares sorted projections directly
    sw = sliced_wasserstein(x, ref, PROJ, torch.Generator().manual_seed(5))
    floors = [sliced_wasserstein(gm.sample(N, torch.Generator().manual_seed(200 + r)), ref, PROJ,
                                 torch.Generator().manual_seed(5)) for r in range(6)]
    f_mean = sum(floors) / len(floors)
    f_std = (sum((v - f_mean) ** 2 for v in floors) / (len(floors) - 1)) ** 0.5
    print(f"\nSRA1 50 steps (100 evaluations): proportions z {[round(v, 2) for v in z.tolist()]}, second-moment z "
          f"{[round(v, 2) for v in zm.tolist()]}, SW {sw:.4f}, exact floor {f_mean:.4f} +- {f_std:.4f}")
    assert (z.abs() <= 4).all() and (zm.abs() <= 4).all()
    assert sw <= f_mean + 3 * f_std


# --- compatibility ------------------------------------------------------------------------------
def test_noise_type_checks():
    diag = sds.SDE(lambda t, x: -x, lambda t, x: x, noise="diagonal")
    with pytest.raises(TypeError, match="additive"):
        sds.solve(diag, torch.ones(2, 1), 0.0, 1.0, sds.SRA1(), steps=4)
    with pytest.raises(TypeError, match="additive"):
        sds.solve(diag, torch.ones(2, 1), 0.0, 1.0, sds.AdaptiveSDE())
    with pytest.raises(TypeError, match="ODE"):
        sds.solve(sds.ODE(lambda t, x: -x), torch.ones(2, 1), 0.0, 1.0, sds.Milstein(), steps=4)


def test_milstein_scalar_noise_shares_one_brownian_motion():
    # scalar noise: every element of a sample sees the same dW, so equal components stay equal
    eq = sds.SDE(lambda t, x: 0.5 * x, lambda t, x: 0.7 * x, noise="scalar")
    sol = sds.solve(eq, torch.ones(6, 3, dtype=torch.float64), 0.0, 1.0, sds.Milstein(), steps=32, seed=0)
    assert torch.equal(sol.y[:, 0], sol.y[:, 1]) and torch.equal(sol.y[:, 0], sol.y[:, 2])
    assert sol.y[:, 0].unique().numel() == 6
