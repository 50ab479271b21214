"""Time grids: end points, monotonicity, spacing laws, and k-diffusion's Karras sigmas."""
import pytest
import torch

import sdesolve as sds
from sdesolve import schedules

from peers import kdiffusion_sampling

PROCS = [sds.VPSDE(), sds.SubVPSDE(), sds.VESDE(), sds.EDM()]


@pytest.mark.parametrize("p", PROCS, ids=repr)
@pytest.mark.parametrize("sched", [schedules.uniform, schedules.quadratic, schedules.logsnr, schedules.karras(7.0)],
                         ids=["uniform", "quadratic", "logsnr", "karras"])
def test_grids(p, sched):
    g = sched(p, 17)
    assert g.dtype == torch.float64 and g.shape == (18,)
    assert g[0] == p.T and g[-1] == p.t_min
    assert (g[1:] < g[:-1]).all()


@pytest.mark.parametrize("p", PROCS, ids=repr)
def test_spacing_laws(p):
    lam = p.lam(schedules.logsnr(p, 10))
    torch.testing.assert_close(lam[1:] - lam[:-1], torch.full((10,), float(lam[1] - lam[0]), dtype=torch.float64))
    s = p.sigma_edm(schedules.karras(3.0)(p, 10)) ** (1 / 3)
    torch.testing.assert_close(s[1:] - s[:-1], torch.full((10,), float(s[1] - s[0]), dtype=torch.float64))


def test_karras_matches_kdiffusion():
    K = kdiffusion_sampling()
    p = sds.EDM()
    ref = K.get_sigmas_karras(25, p.sigma_min, p.sigma_max, rho=7.0).double()[:-1]  # k-diffusion appends 0
    # k-diffusion computes in float32: eps32 = 1.2e-7 relative, amplified ~rho = 7 times by the power
    torch.testing.assert_close(schedules.karras(7.0)(p, 24), ref, rtol=7 * 1.2e-7 * 4, atol=0)


def test_validate_errors():
    p = sds.VPSDE()
    with pytest.raises(ValueError, match="strictly monotone"):
        schedules.validate(torch.tensor([1.0, 0.5, 0.5, 0.1]), p)
    with pytest.raises(ValueError, match=r"outside \[t_min, T\].*index \[0\]"):
        schedules.validate(torch.tensor([1.5, 0.5, 0.1]), p)
    with pytest.raises(ValueError, match="at least 2"):
        schedules.validate(torch.tensor([1.0]), p)
    with pytest.raises(ValueError, match="integer >= 1"):
        schedules.uniform(p, 0)
    # a grid may end at 0 (nothing is evaluated there)
    schedules.validate(torch.tensor([1.0, 0.5, 0.0]), p)
