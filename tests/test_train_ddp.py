"""Data-parallel training under torchrun (2 CPU processes, gloo) takes the same steps as one process."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sdesolve.train import gmm2d, load_checkpoint
from sdesolve.train.checkpoint import LAST, PREV

ROOT = Path(__file__).resolve().parents[1]


def _torchrun():
    exe = shutil.which("torchrun", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    return [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_torchrun_two_processes_match_one(tmp_path):
    """Same global batch (64), 20 steps: each rank computes its 32-sample shard of the same draws,
    DDP averages the gradients, so the weights agree with one process up to float32 rounding of the
    gradient sums (~1e-7 relative; after 20 Adam steps of size <= lr = 2e-3 the drift stays far
    below 1e-5, while a different batch or noise would move weights by ~lr = 2e-3)."""
    data = tmp_path / "gmm.npy"
    np.save(data, gmm2d(3000, torch.Generator().manual_seed(0)).numpy())
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    args = ["-m", "sdesolve", "train", "--data", str(data), "--hidden", "32", "--depth", "2", "--batch-size", "64",
            "--steps", "20", "--ckpt-every", "10", "--lr", "2e-3", "--device", "cpu", "--quiet"]
    runs = {"one": [sys.executable, *args, "--out", str(tmp_path / "one")],
            "two": [*_torchrun(), "--standalone", "--nproc_per_node=2", *args, "--out", str(tmp_path / "two")]}
    for name, cmd in runs.items():
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{name}: {' '.join(cmd)}\n{r.stdout}\n{r.stderr}"
    a, b = load_checkpoint(tmp_path / "one" / LAST), load_checkpoint(tmp_path / "two" / LAST)
    assert a["step"] == b["step"] == 20
    at10 = load_checkpoint(tmp_path / "one" / PREV)
    moved = max(float((a["model"][k] - at10["model"][k]).abs().max()) for k in a["model"])
    assert moved > 1e-3  # steps 10..20 moved the weights far more than the tolerance below
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=0, atol=1e-5)
        torch.testing.assert_close(b["ema"]["shadow"][k], a["ema"]["shadow"][k], rtol=0, atol=1e-5)
    for k in ("data", "noise"):  # every rank drew the global batch's randomness, as one process does
        assert torch.equal(a["rng"][k], b["rng"][k]), k
