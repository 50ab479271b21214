"""Score adapters: every parametrization and time label gives the same score."""
import pytest
import torch

import sdesolve as sds

GM = sds.GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.5, -0.5]], [0.2, 0.5])


def _models(p, label):
    """Models of each parametrization built from the exact mixture, reading time through ``label``."""
    def t_of(lbl):
        # invert the label to recover t (labels are monotone functions of t)
        ts = torch.linspace(p.t_min, p.T, 20001, dtype=torch.float64)
        ls = label(p, ts)
        idx = torch.searchsorted(ls if ls[-1] > ls[0] else ls.flip(0), lbl.double())
        ts = ts if ls[-1] > ls[0] else ts.flip(0)
        return ts[idx.clamp(0, len(ts) - 1)]

    def exact(x, t):
        a, s = p.marginal(t)
        sc = GM.score_at(x, t, p)
        return a[:, None], s[:, None], sc

    def eps(x, lbl):
        a, s, sc = exact(x, t_of(lbl))
        return -s * sc

    def x0(x, lbl):
        a, s, sc = exact(x, t_of(lbl))
        return (x + s * s * sc) / a

    def v(x, lbl):
        a, s, sc = exact(x, t_of(lbl))
        return a * (-s * sc) - s * (x + s * s * sc) / a

    return eps, x0, v


@pytest.mark.parametrize("p", [sds.VPSDE(), sds.SubVPSDE(), sds.VESDE(), sds.EDM()], ids=repr)
def test_parametrizations_agree(p):
    torch.manual_seed(0)
    B = 16
    # times on the inversion grid of _models, so the models see exactly the t they are asked at
    t_grid = torch.linspace(p.t_min, p.T, 20001, dtype=torch.float64)
    t = t_grid[torch.randint(0, 20001, (B,))]
    a, s = p.marginal(t)
    x = (a[:, None] * GM.sample(B, dtype=torch.float64) + s[:, None] * torch.randn(B, 2, dtype=torch.float64))
    eps_m, x0_m, v_m = _models(p, sds.labels.continuous)
    ref = GM.score_at(x, t, p)
    a, s = (c[:, None] for c in p.marginal(t))
    for score in (sds.Score.from_eps(eps_m, p), sds.Score.from_x0(x0_m, p), sds.Score.from_v(v_m, p)):
        torch.testing.assert_close(score(x, t, p), ref, rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(score.denoised_of(x, t), (x + s * s * ref) / a, rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(score.eps_of(x, t), -s * ref, rtol=1e-8, atol=1e-8)


def test_denoiser_is_called_on_the_ve_scale():
    p = sds.VPSDE()
    seen = {}

    def denoiser(x_scaled, sigma):
        seen["x"], seen["sigma"] = x_scaled, sigma
        return torch.zeros_like(x_scaled)

    t = torch.full((3,), 0.4, dtype=torch.float64)
    x = torch.randn(3, 2, dtype=torch.float64)
    sc = sds.Score.from_denoiser(denoiser, p)
    out = sc(x, t)
    a, s = p.marginal(t)
    torch.testing.assert_close(seen["x"], x / a[:, None])
    torch.testing.assert_close(seen["sigma"], s / a)
    torch.testing.assert_close(out, -x / (s**2)[:, None])  # D = 0: score = (alpha * 0 - x) / sigma^2


def test_time_labels():
    p = sds.VPSDE()
    t = torch.tensor([0.25, 0.5], dtype=torch.float64)
    torch.testing.assert_close(sds.labels.discrete(1000)(p, t), t * 999)
    torch.testing.assert_close(sds.labels.sigma(p, t), p.sigma(t) / p.alpha(t))
    torch.testing.assert_close(sds.labels.edm_c_noise(p, t), torch.log(p.sigma(t) / p.alpha(t)) / 4)
    got = {}
    sc = sds.Score.from_eps(lambda x, lbl: (got.setdefault("l", lbl), x * 0)[1], p,
                            time_label=sds.labels.discrete(1000), check=False)
    sc(torch.zeros(2, 1), t)
    assert got["l"].dtype == torch.float32 and torch.allclose(got["l"].double(), t * 999)


def test_wrong_output_shape_is_named():
    p = sds.VPSDE()
    sc = sds.Score.from_eps(lambda x, lbl: x[:, :1], p, check=False)
    with pytest.raises(ValueError, match=r"eps model returned shape \(4, 1\) for input shape \(4, 2\)"):
        sc(torch.zeros(4, 2), torch.full((4,), 0.5, dtype=torch.float64))
