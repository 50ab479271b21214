"""Counter-based noise: the Philox cipher, the normal transform, and batch invariance."""
import math
import warnings

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


# --- the eager and compiled CPU paths (sdesolve.philox) -------------------------------------------
from sdesolve import philox  # noqa: E402

_EPS32 = torch.finfo(torch.float32).eps
_SHAPES = [(1, 1), (3, 2), (5, 4), (7, 13), (64, 64), (2, 3072)]


def _counters(B, seed=0):
    g = torch.Generator().manual_seed(seed + B)
    # streams over the whole int64 range (both key words), step counters over the whole uint32 range
    return torch.randint(-2**63, 2**63 - 1, (B,), generator=g), torch.randint(0, 2**32, (B,), generator=g)


def test_philox_broadcast_counters_equal_full_tensors():
    # the eager path passes constant counters as Python ints and per-row/per-column ones broadcast;
    # the integers must equal those of full int64 tensors, bit for bit
    g = torch.Generator().manual_seed(1)
    k0, k1, step = (torch.randint(0, 2**32, (50, 1), generator=g) for _ in range(3))
    q = torch.arange(7).unsqueeze(0)
    full = lambda v: torch.as_tensor(v).expand(50, 7).clone()
    a = philox4x32(q, step, 0xABCDEF12, 0, k0, k1)
    b = philox4x32(full(q), full(step), full(0xABCDEF12), full(0), k0, k1)
    assert all(torch.equal(x.expand(50, 7), y) for x, y in zip(a, b))
    assert all(int(x.min()) >= 0 and int(x.max()) < 2**32 for x in a)


def test_normals_are_box_muller_of_the_philox_words():
    # closed form: z = sqrt(-2 log max(u(r_a), 1e-7)) (cos | sin)(theta), theta = float32(2 pi u(r_b)),
    # evaluated in float64 from the same words; float32 evaluation differs by a few roundings
    B, n = 300, 10
    stream, step = _counters(B)
    z = normal_from_counters(stream, step, 5, n)
    quads = (n + 3) // 4
    r = philox4x32(torch.arange(quads).unsqueeze(0), (step & 0xFFFFFFFF)[:, None], 5, 0,
                   (stream & 0xFFFFFFFF)[:, None], ((stream >> 32) & 0xFFFFFFFF)[:, None])
    u = [torch.where(w >= 2**31, 2**32 - 1 - w, w).to(torch.float32) * 4.6566127342e-10 for w in r]
    rad = [torch.sqrt(-2.0 * torch.log(torch.clamp_min(x, 1e-7).double())) for x in (u[0], u[2])]
    th = [(6.283185307179586 * x).double() for x in (u[1], u[3])]
    ref = torch.stack([rad[0] * th[0].cos(), rad[0] * th[0].sin(), rad[1] * th[1].cos(), rad[1] * th[1].sin()], -1)
    ref = ref.reshape(B, 4 * quads)[:, :n]
    torch.testing.assert_close(z.double(), ref, rtol=4 * _EPS32, atol=4 * _EPS32)


def test_noise_mode_values(monkeypatch):
    monkeypatch.setenv(philox.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="SDESOLVE_NOISE='fast'"):
        philox.noise_mode()
    monkeypatch.setenv(philox.ENV_VAR, " Eager ")
    assert philox.noise_mode() == "eager"


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A process state with no loaded library and an empty cache directory."""
    monkeypatch.setenv("SDESOLVE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(philox, "_STATE", philox._State())
    return tmp_path


def test_auto_mode_builds_at_the_first_call_and_keeps_one_path(fresh, monkeypatch):
    monkeypatch.setenv(philox.ENV_VAR, "auto")
    built, real_build = [], philox._build_library
    monkeypatch.setattr(philox, "_build_library", lambda path: built.append(path))
    stream, step = _counters(64)
    # the build (here a stub that writes nothing, so loading fails) happens at the first call,
    # and the process stays on the path it took from then on
    with pytest.warns(RuntimeWarning, match="compiled Philox path is unavailable"):
        z = normal_from_counters(stream, step, 0, 8)
    assert len(built) == 1 and philox.normal_path() == "eager"
    assert torch.equal(z, philox.normal_eager(stream, step, 0, 8))
    for _ in range(3):
        assert torch.equal(normal_from_counters(stream, step, 0, 8), z) and philox.normal_path() == "eager"
    assert len(built) == 1
    # without a C compiler: eager from the start, nothing built, no warning (auto asked for nothing)
    monkeypatch.setattr(philox, "_STATE", philox._State())
    monkeypatch.setattr(philox, "_c_compiler", lambda: None)
    monkeypatch.setattr(philox, "_build_library", real_build)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(normal_from_counters(stream, step, 0, 8), z)
    assert len(built) == 1 and philox.normal_path() == "eager" and not philox.compiled_available()


@pytest.mark.parametrize("failure", ["no compiler", "build error"])
def test_compiled_mode_falls_back_to_eager(fresh, monkeypatch, failure):
    monkeypatch.setenv(philox.ENV_VAR, "compiled")
    if failure == "no compiler":
        monkeypatch.setattr(philox, "_c_compiler", lambda: None)
    else:
        def broken(path):
            raise RuntimeError("simulated compiler failure")
        monkeypatch.setattr(philox, "_build_library", broken)
    stream, step = _counters(10)
    with pytest.warns(RuntimeWarning, match="using the eager one"):
        z = normal_from_counters(stream, step, 2, 6)
    assert philox.normal_path() == "eager" and not philox.compiled_available()
    assert torch.equal(z, philox.normal_eager(stream, step, 2, 6))
    z2 = normal_from_counters(stream, step, 2, 6)  # no second attempt, no second warning
    assert torch.equal(z2, z) and philox.normal_path() == "eager"


def test_compiled_path_matches_eager_and_is_batch_invariant(fresh, monkeypatch):
    # builds the library into an empty cache (a fraction of a second with a C compiler)
    if not philox.compile_normals():
        pytest.skip(f"compiled path unavailable: {philox._STATE.failed}")
    monkeypatch.setenv(philox.ENV_VAR, "compiled")
    for B, n in _SHAPES + [(4096, 2), (256, 64), (130, 7), (3, 0)]:
        stream, step = _counters(B)
        for draw in (0, 1, 2**31 - 1, 2**32 + 5):
            z = normal_from_counters(stream, step, draw, n)
            assert philox.normal_path() == "compiled" and z.shape == (B, n) and z.dtype == torch.float32
            assert z.is_contiguous()
            torch.testing.assert_close(z, philox.normal_eager(stream, step, draw, n), rtol=4 * _EPS32,
                                       atol=4 * _EPS32)
    stream, step = _counters(2000)
    z = normal_from_counters(stream, step, 4, 64)
    # one step counter for the batch, given as an int, is the same as the tensor of it
    for mode in ("compiled", "eager"):
        monkeypatch.setenv(philox.ENV_VAR, mode)
        assert torch.equal(normal_from_counters(stream, 2**32 + 7, 4, 64),
                           normal_from_counters(stream, torch.full_like(stream, 7), 4, 64))
    monkeypatch.setenv(philox.ENV_VAR, "compiled")
    # a non-contiguous counter tensor is read as its values
    wide = torch.stack([stream, stream], 1)
    assert torch.equal(normal_from_counters(wide[:, 0], step, 4, 64), z)
    # a sample's numbers do not depend on the batch it is drawn in (vector body or tail of the loop)
    stream, step = _counters(1000)
    full = normal_from_counters(stream, step, 3, 37)
    for lo, hi in ((0, 1), (3, 10), (17, 1000), (999, 1000)):
        assert torch.equal(normal_from_counters(stream[lo:hi], step[lo:hi], 3, 37), full[lo:hi])
