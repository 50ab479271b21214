"""Counter-based noise: the Philox cipher, the normal transform, and batch invariance."""
import math

import pytest
import torch

from sdesolve.noise import Noise, normal_from_counters, philox4x32, streams


def _t(v):
    return torch.tensor([v], dtype=torch.int64)


# Known-answer vectors of Philox4x32-10 from Random123 (Salmon et al. 2011), kat_vectors
@pytest.mark.parametrize("counter,key,expected", [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_philox_known_answers(counter, key, expected):
    out = philox4x32(*[_t(c) for c in counter], _t(key[0]), _t(key[1]))
    assert tuple(int(o) for o in out) == expected


def test_normal_moments():
    # 2e6 draws: standard errors of mean, variance and 4th moment are 7e-4, 1e-3 and 7e-3;
    # 5 standard errors each
    z = normal_from_counters(streams(7, 2000), torch.arange(2000), 0, 1000).double().flatten()
    n = z.numel()
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / n)
    assert abs((z**4).mean() - 3) < 5 * math.sqrt(96 / n)
    # tails: P(|z| > 3) = 0.0027; binomial 5-sigma band
    p = (z.abs() > 3).double().mean()
    assert abs(p - 0.0026998) < 5 * math.sqrt(0.0027 / n)


def test_draws_steps_and_samples_are_independent():
    nz = Noise.from_seed(3, 4000)
    like = torch.empty(4000, 8)
    a, b, c = nz.at(0).normal(like, 0), nz.at(0).normal(like, 1), nz.at(1).normal(like, 0)
    for u, v in ((a, b), (a, c), (b, c)):
        r = torch.corrcoef(torch.stack([u.flatten(), v.flatten()]))[0, 1]
        assert abs(r) < 5 / math.sqrt(u.numel())  # correlation of independent normals: sd 1/sqrt(n)
    # neighbouring samples and elements differ
    assert not torch.equal(a[0], a[1]) and a[0, 0] != a[0, 1]


def test_batch_invariance_of_noise():
    like = torch.empty(64, 3, 5)
    full = Noise.from_seed(11, 64).at(5).normal(like)
    part = Noise.from_seed(11, 10, offset=10).at(5).normal(like[:10])
    explicit = Noise(streams(11, 64)[10:20]).at(5).normal(like[:10])
    assert torch.equal(full[10:20], part) and torch.equal(full[10:20], explicit)
    assert torch.equal(Noise.from_seed(11, 64)[10:20].at(5).normal(like[:10]), part)


def test_seed_errors():
    with pytest.raises(ValueError, match="2\\*\\*32"):
        streams(-1, 4)
    with pytest.raises(ValueError, match="3 per-sample seeds for a batch of 4"):
        streams(torch.arange(3), 4)
    with pytest.raises(TypeError, match="integer"):
        streams(torch.ones(4), 4)
