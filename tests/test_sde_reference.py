"""The Brownian-path coupling of benchmarks/sde_reference.py: on the reference grid it is the
reference's own noise; on other grids its step normals are independent standard normals (the
law of every row is unchanged) that sum to the reference's increments."""
import importlib.util
import math
from pathlib import Path

import torch

import sdesolve as sds
from sdesolve.noise import Noise

_spec = importlib.util.spec_from_file_location("sde_reference", Path(__file__).parents[1] / "benchmarks" / "sde_reference.py")
M = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(M)

P = sds.VPSDE()
REF = sds.schedules.uniform(P, 50)


def _path(grid, B=20000, d=1, seed=3):
    like = torch.zeros(B, d)
    return M.SharedBrownianPath(Noise.from_seed(seed, B), REF, grid, like), like


def test_on_the_reference_grid_it_is_the_reference_noise():
    path, like = _path(REF, B=64, d=3)
    base = Noise.from_seed(3, 64)
    for k in (0, 17, 49):
        assert torch.equal(path.at(k).normal(like, 0), base.at(k).normal(like, 0))
    assert torch.equal(path.at(5).normal(like, 2), base.at(5).normal(like, 2))  # other draws untouched
    # Euler-Maruyama with it is Euler-Maruyama with the default noise, sample for sample
    score = sds.GaussianMixture([1.0], torch.zeros(1, 3, dtype=torch.float64),
                                torch.full((1,), 0.25, dtype=torch.float64)).score(P)
    x = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = sds.solve(P.reverse(score), x, None, None, sds.EulerMaruyama(), schedule=REF, noise=path).y
    b = sds.solve(P.reverse(score), x, None, None, sds.EulerMaruyama(), schedule=REF, noise=base).y
    assert torch.equal(a, b)


def test_a_coarser_grid_on_reference_times_sums_the_increments():
    path, like = _path(REF[::5], B=16, d=2)
    base = Noise.from_seed(3, 16)
    for k in (0, 9):
        fine = sum(math.sqrt(float(REF[j] - REF[j + 1])) * base.at(j).normal(like, 0).double() for j in range(5 * k, 5 * k + 5))
        assert torch.allclose(path.at(k).normal(like, 0).double(), fine / math.sqrt(float(REF[5 * k] - REF[5 * k + 5])),
                              atol=1e-6)


def test_off_grid_normals_are_independent_standard_normals():
    """A log-SNR grid (most times between reference times; several in the last reference
    interval): mean, variance and lag-1 correlation of the step normals within 5 standard errors
    of 0, 1 and 0 over 20000 samples; each step normal correlates with the reference increment
    over the reference interval that contains it as a Brownian path does."""
    grid = sds.schedules.logsnr(P, 12)
    uf = (REF[0] - REF).abs()
    inside = torch.searchsorted(uf, (grid[0] - grid).abs(), right=True) - 1
    assert len(set(inside.tolist())) < len(grid)  # some reference interval holds several grid times
    path, like = _path(grid)
    B = like.shape[0]
    z = torch.stack([path.at(k).normal(like, 0)[:, 0].double() for k in range(len(grid) - 1)])
    se = 5.0 / math.sqrt(B)
    assert z.mean(1).abs().max() < se
    assert (z.var(1) - 1).abs().max() < 5.0 * math.sqrt(2.0 / B)
    assert (z[1:] * z[:-1]).mean(1).abs().max() < se
    # coupling: the first step [T, t_1] lies inside reference interval(s); corr(z_0, fine z_0) =
    # sqrt(overlap) / sqrt(h_0 h_ref) over the overlap of the two intervals
    h0, href = float(grid[0] - grid[1]), float(REF[0] - REF[1])
    ov = min(h0, href)
    zf = Noise.from_seed(3, B).at(0).normal(like, 0)[:, 0].double()
    assert abs(float((z[0] * zf).mean()) - ov / math.sqrt(h0 * href)) < se
