"""Sharding over the ranks of a torchrun job: two CPU processes (gloo) give the samples and the
metrics of one process.

Sample i draws the noise streams of its global index in any split, so the samples agree; they
may differ in the last bits only where a model's arithmetic depends on the batch it is in (an MLP
on a batch of 18 or 19 rows against one of 37), hence the float32-rounding tolerance for
``sample``. For ``bench`` on a Gaussian mixture the exact score is computed sample by sample in
float64, and the sliced Wasserstein distance from the gathered samples in global order, so the
figures agree exactly; adaptive rows agree in evaluations per sample (each sample has its own
step sizes) though not in batched calls.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from sdesolve.bench import distributed as bdist
from sdesolve.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torchrun(*args, nproc=2):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "sdesolve", "--", *args]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def test_shards_partition_the_indices():
    for n in (0, 1, 7, 37, 1000):
        for world in (1, 2, 3, 8):
            parts = [bdist.shard(n, r, world) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(parts[r][1] == parts[r + 1][0] for r in range(world - 1))
            assert max(hi - lo for lo, hi in parts) - min(hi - lo for lo, hi in parts) <= 1
    with pytest.raises(ValueError):
        bdist.shard(10, 2, 2)


def test_bench_on_two_processes_matches_one(tmp_path):
    args = ["bench", "--gmm", "gmm8d", "--solvers", "euler,dpmsolverpp:order=2,eulermaruyama,adaptivesde",
            "--nfe", "6,12", "--tolerances", "5e-2", "--reference", "eulermaruyama@30", "--peers", "kdiffusion:heun",
            "--n", "101", "--batch-size", "32", "--reference-n", "400", "--seed", "5", "--quiet", "--threads", "1"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    torchrun(*args, "--out", str(tmp_path / "two"))
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert one["meta"]["world_size"] == 1 and two["meta"]["world_size"] == 2
    assert two["meta"]["command"].startswith("torchrun --standalone --nproc_per_node=2 -m sdesolve -- bench")
    assert [r["sampler"] for r in one["rows"]] == [r["sampler"] for r in two["rows"]]
    skipped = {s["sampler"] for s in one["skipped"]}
    assert len(one["rows"]) == 1 + 3 * 2 + 1 + (0 if skipped else 2)
    for a, b in zip(one["rows"], two["rows"]):
        assert a["error"] is None and b["error"] is None, (a["error"], b["error"])
        assert a["metrics"] == b["metrics"], a["sampler"]  # sw, nll, tv, proportions: exactly
        assert a["nfe_per_sample"] == b["nfe_per_sample"]
        if not a["adaptive"]:
            assert a["nfe"] == b["nfe"] and a["steps"] == b["steps"]
    assert one["rows"][-1 if skipped else -3]["adaptive"]  # the adaptive SDE row was compared too


def test_sample_on_two_processes_matches_one(tmp_path):
    ckpt = tmp_path / "ckpt"
    assert main(["train", "--data", "gmm2d", "--n-data", "500", "--hidden", "32", "--depth", "1", "--steps", "3",
                 "--batch-size", "32", "--out", str(ckpt), "--quiet"]) == 0
    # a stochastic solver: its step noise, not only x_T, must follow the global sample index
    args = ["sample", "--checkpoint", str(ckpt), "--solver", "eulermaruyama", "--steps", "20", "--n", "37",
            "--seed", "9", "--threads", "1"]
    assert main([*args, "--out", str(tmp_path / "one.npy")]) == 0
    out = torchrun(*args, "--out", str(tmp_path / "two.npy"))
    assert "on 2 processes" in out.stdout
    one, two = np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy")
    assert one.shape == two.shape == (37, 2)
    # float32 rounding of the MLP, amplified at most mildly over 20 steps
    np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-5)
    # and the shards are the right samples: a split at the wrong offset would repeat sample 0
    assert not np.allclose(two[18], two[0], atol=1e-3)


def test_gather_and_sums_are_identities_on_one_process():
    x = torch.arange(6.0).reshape(3, 2)
    assert bdist.gather(x) is x and bdist.all_sum(x) is x and bdist.all_max(2.5) == 2.5
    assert bdist.rank_world() == (0, 1)


def test_likelihood_on_two_processes_matches_one_with_an_adaptive_solver(tmp_path):
    """Each point's dequantization and probe noise follow its global index and the batches are
    aligned to global indices, so the per-point NLLs of a 2-process run (ranks whose adaptive
    solves take different numbers of steps, gathered once at the end) equal one process's."""
    ckpt = tmp_path / "ckpt"
    assert main(["train", "--data", "digits", "--model", "mlp", "--hidden", "32", "--depth", "1", "--steps", "3",
                 "--batch-size", "16", "--out", str(ckpt), "--quiet"]) == 0
    args = ["likelihood", "--checkpoint", str(ckpt), "--data", "digits", "--n", "8", "--batch", "2",
            "--dequantizations", "2", "--solver", "dopri5:rtol=1e-3,atol=1e-3", "--seed", "4", "--threads", "1"]
    assert main([*args, "--out", str(tmp_path / "one.json")]) == 0
    torchrun(*args, "--out", str(tmp_path / "two.json"))
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert one["world_size"] == 1 and two["world_size"] == 2 and one["levels"] == 17
    assert one["per_point_nats"] == two["per_point_nats"]
    assert one["bits_per_dim"] == two["bits_per_dim"]
    b = one["bits_per_dim"]
    assert b["lo"] < b["mean"] < b["hi"] and b["sd_within_point"] > 0
