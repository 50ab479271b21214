"""Tables of time coefficients over a fixed grid (sdesolve.tensors.PointTable, the fixed-grid
steps of sdesolve.solvers.base.AffineSteps and DPM-Solver++'s table): the loop's times are looked
up, anything else is computed per call, and the values are the same."""
import pytest
import torch

import sdesolve as sds
from sdesolve import tensors, timeplan
from sdesolve.solvers.base import AffineSteps
from sdesolve.tensors import PointTable, grid_point
from sdesolve.timeplan import plan_times


def test_grid_point_names_the_point_a_time_is():
    grid = torch.linspace(1.0, 0.0, 11, dtype=torch.float64)
    assert grid_point(grid[3].expand(5))[1] == 3 and grid_point(grid[3].expand(5))[0] is grid
    sub = grid[2:]  # a view: its points are named in the root grid
    g, i = grid_point(sub[1].expand(4))
    assert g is grid and i == 3
    assert grid_point(torch.full((5,), 0.3, dtype=torch.float64)) is None  # not a view
    assert grid_point(grid[:5]) is None  # per-sample times
    assert grid_point(grid.float()[3].expand(5)) is None  # not float64


def test_point_table_matches_per_call_values_and_follows_its_grid():
    calls = []

    def fn(t):
        calls.append(t.numel())
        return torch.exp(-t), t * t

    table = PointTable(fn)
    grid = torch.linspace(1.0, 0.0, 11, dtype=torch.float64)
    for i in (0, 4, 10):
        a, b = table.lookup(grid[i].expand(3))
        assert a.dim() == 0 and float(a) == pytest.approx(float(torch.exp(-grid[i])), rel=1e-15)
        assert float(b) == float(grid[i] * grid[i])
    assert calls == [11]  # one evaluation over the whole grid
    grid.mul_(0.5)  # modified in place: tabulated again
    assert float(table.lookup(grid[4].expand(3))[1]) == float(grid[4] * grid[4]) and calls == [11, 11]
    other = torch.linspace(2.0, 0.0, 5, dtype=torch.float64)
    assert float(table.lookup(other[1].expand(2))[1]) == 2.25 and calls[-1] == 5
    assert table.lookup(torch.full((3,), 0.5, dtype=torch.float64)) is None
    assert table.lookup(other.clone().requires_grad_()[1].expand(2)) is None  # times with a gradient


def test_a_position_given_its_own_step_length_reads_it_back():
    grid = torch.tensor([1.0, 0.7, 0.2], dtype=torch.float64)
    own = sds.Position(1, 2, grid, False, grid[2] - grid[1])
    assert float(own.h) == float(grid[2] - grid[1]) and own.last
    shared = plan_times(None, schedule=grid).positions[1]
    assert float(shared.h) == float(own.h) and shared._replace(ends_low=True).ends_low
    assert sds.Position().h is None


def test_affine_steps_read_the_row_of_the_position_on_its_grid():
    calls = []

    def fn(t0, t1):
        calls.append(t0.numel())
        return t1 - t0, t0 * t1, torch.exp(t1)

    steps = AffineSteps(fn)
    grid = torch.tensor([1.0, 0.7, 0.2, 0.0], dtype=torch.float64)
    at = plan_times(None, schedule=grid).positions
    t0, y = grid[1].expand(2), torch.zeros(2, 3)
    a, b, c = steps.row(at[1], t0, y)
    assert (a.dtype, b.dtype, c.dtype) == (torch.float32,) * 3 and a.dim() == 0
    assert float(a) == float(torch.tensor(0.2 - 0.7, dtype=torch.float32)) and calls == [3]
    assert float(steps.row(at[2], t0, y)[2]) == pytest.approx(1.0) and calls == [3]  # one evaluation
    assert steps.row(at[1], t0, y.double())[0].dtype == torch.float64 and calls == [3, 3]
    assert steps.row(sds.Position(), t0, y) is None  # no grid: step-size control
    assert steps.row(at[1], t0.clone().requires_grad_(), y) is None  # times with a gradient
    other = plan_times(None, schedule=torch.tensor([2.0, 1.0], dtype=torch.float64)).positions
    assert float(steps.row(other[0], t0, y)[0]) == -1.0 and calls[-1] == 1  # another grid: tabulated


@pytest.mark.parametrize("solver", [sds.Euler(), sds.EulerMaruyama(), sds.ReverseDiffusion(),
                                    sds.DPMSolverPP(order=2), sds.DPMSolverPP(order=3)],
                         ids=lambda s: repr(s))
def test_sampling_with_tables_equals_sampling_without(solver, monkeypatch):
    gm = sds.GaussianMixture([0.4, 0.6], [[-1.0, 0.5], [1.5, -1.0]], [0.3, 0.5])
    p = sds.VPSDE()
    score = sds.Score.from_eps(lambda x, t: (-gm.score_at(x, t, p) * p.sigma(t)[:, None]).to(x.dtype), p, check=False)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    run = lambda: sds.sample(p, score, solver, x_T=x_T, steps=12, seed=3).y
    with_tables = run()
    looked_up = []
    monkeypatch.setattr(tensors.PointTable, "_row", lambda self, grid, i, dtype=None: looked_up.append(1))
    # positions without their grid: the solvers' own tables (AffineSteps, DPM-Solver++'s) are not made
    real = timeplan.Positions.__getitem__
    monkeypatch.setattr(timeplan.Positions, "__getitem__", lambda self, i: real(self, i)._replace(grid=None, lengths=None))
    without = run()
    assert looked_up  # the tables were asked, and declined, at every step
    # f and g^2 of the VP SDE are polynomials (the same bits); alpha and sigma differ at most in
    # the last bit of the vectorised exp/expm1
    torch.testing.assert_close(with_tables, without, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("process", [sds.VPSDE(), sds.VESDE(), sds.SubVPSDE()], ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("which", ["reverse", "probability_flow"])
def test_score_linear_states_the_drift_and_diffusion(process, which):
    """(f, c, g) of Equation.score_linear: drift = f(t) x + c(t) score, diffusion = g(t), per sample."""
    gm = sds.GaussianMixture([0.4, 0.6], [[-1.0, 0.5], [1.5, -1.0]], [0.3, 0.5])
    eq = getattr(process, which)(gm.score(process))
    f, c, g = eq.score_linear()
    t = torch.linspace(process.t_min + 0.01, process.T, 16, dtype=torch.float64)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    col = lambda v: torch.as_tensor(v, dtype=torch.float64).broadcast_to(t.shape)[:, None]
    torch.testing.assert_close(eq.drift(t, x), col(f(t)) * x + col(c(t)) * eq.score_at(t, x), rtol=1e-12, atol=1e-12)
    if which == "reverse":
        torch.testing.assert_close(col(g(t)).expand_as(x), torch.broadcast_to(eq.diffusion(t, x), x.shape))
    else:
        assert g is None


def test_equations_of_a_velocity_are_not_linear_in_the_score():
    from sdesolve.equations import VelocityODE, VelocitySDE

    path = sds.paths.RectifiedFlow()
    score = sds.Score.from_velocity(lambda x, t: -x, path, check=False)
    assert VelocityODE(path, score).score_linear() is None
    assert VelocitySDE(path, score).score_linear() is None
    assert path.probability_flow(score).score_linear() is None and path.reverse(score).score_linear() is None
    assert sds.ODE(lambda t, x: -x).score_linear() is None
