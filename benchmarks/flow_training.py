"""Training figures of flow matching: CLI-trained checkpoints measured against their criteria.

One command per part, one JSON and one Markdown file each (device, versions, command line, every figure):

    python benchmarks/flow_training.py mixture --cfm DIR --ot-cfm DIR --out benchmarks/results/flow/mixture_2d
    python benchmarks/flow_training.py digits --flow DIR --vp DIR --out benchmarks/results/flow/digits_fd

``mixture``: two rectified flows trained by ``sdesolve train --data gmm.npy --model mlp --loss cfm|ot-cfm``
on the 2-D mixture of :mod:`sdesolve.train.data` (``gmm2d``). For each, from the same x_T (seed 0,
``--n`` samples):

* Heun, 50 steps: component proportions (posterior argmax under the true mixture) and the sliced
  Wasserstein distance to fresh exact samples, averaged over 20 exact sets, against the floor
  (the same average between two exact sets, :func:`sdesolve.metrics.two_sample_floor`);
  criterion: SW < 2 x floor;
* Dopri5 at rtol = atol = 1e-3 and 1e-4 (per-sample step-size control): model evaluations per
  sample and the SW ratio; the paired difference of per-sample evaluations (OT-CFM - CFM, the same
  x_T) with a bootstrap interval over samples (criterion: OT-CFM fewer, at quality within 2 x floor).

``digits``: the flow and the VP model of the digits recipe (U-Net, 16 channels, 2000 steps,
batch 128, seed 0): FD in digits-classifier features to the held-out split at 50 NFE (Heun x25 and
DPM-Solver++(2M) x50), the same seeds for both; the ratio flow / VP with a paired bootstrap
interval over sample indices (criterion: ratio < 1.2).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

import sdesolve as sds
from sdesolve.fileio import atomic_write
from sdesolve.train import load_trained


def _meta(argv):
    return {"command": "python benchmarks/flow_training.py " + " ".join(argv),
            "python": platform.python_version(), "torch": torch.__version__, "sdesolve": sds.__version__,
            "numpy": np.__version__, "device": "cpu", "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "load_average": os.getloadavg()[0],
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}


def _boot(values, reps=2000, level=0.95, seed=0):
    g = np.random.default_rng(seed)
    v = np.asarray(values, dtype=np.float64)
    means = v[g.integers(0, len(v), (reps, len(v)))].mean(1)
    return [float(np.percentile(means, 50 * (1 - level))), float(np.percentile(means, 50 * (1 + level)))]


def mixture(args, argv):
    from sdesolve.metrics import sliced_wasserstein, two_sample_floor
    from sdesolve.train.data import GMM2D, gmm2d

    n, reps = args.n, 20
    floor = two_sample_floor(gmm2d, n, repeats=reps)
    refs = [gmm2d(n, torch.Generator().manual_seed(10_000 + r)) for r in range(reps)]

    def sw(y):
        return float(np.mean([sliced_wasserstein(y, refs[r], 256, torch.Generator().manual_seed(r)) for r in range(reps)]))

    mu = torch.tensor(GMM2D["means"], dtype=torch.float64)
    var = torch.tensor(GMM2D["variances"], dtype=torch.float64)
    w = torch.tensor(GMM2D["weights"], dtype=torch.float64)

    def props(y):
        lp = -((y[:, None] - mu[None]) ** 2).sum(-1) / (2 * var) - torch.log(var) + torch.log(w)
        return (torch.bincount(lp.argmax(1), minlength=len(w)).double() / len(y)).tolist()

    out = {"meta": _meta(argv), "n": n, "floor_sw": floor, "weights": w.tolist(), "rows": [], "paired": []}
    per_sample = {}
    for loss, d in (("cfm", args.cfm), ("ot-cfm", args.ot_cfm)):
        tm = load_trained(d)
        for name, solver, steps in (("Heun x50", sds.Heun(), 50), ("Dopri5 1e-3", sds.Dopri5(1e-3, 1e-3), None),
                                    ("Dopri5 1e-4", sds.Dopri5(1e-4, 1e-4), None)):
            t0 = time.time()
            with torch.no_grad():
                sol = sds.sample(tm.process, tm.score(), solver, shape=(n, 2), steps=steps, seed=0)
            y = tm.to_data(sol.y).double()
            s = sw(y)
            row = {"loss": loss, "checkpoint": str(d), "train_step": tm.step, "sampler": name, "nfe": sol.stats.nfe,
                   "evals_per_sample": sol.stats.sample_nfe / n, "sw": s, "sw_over_floor": s / floor,
                   "proportions": props(y), "seconds": time.time() - t0}
            if steps is None:
                attempts = (sol.stats.accepted + sol.stats.rejected).to(torch.float64)
                per_sample[(loss, name)] = attempts
                row["attempts_per_sample_mean"] = float(attempts.mean())
            out["rows"].append(row)
            print(f"{loss} {name}: {row['evals_per_sample']:.1f} evaluations/sample ({row['nfe']} calls), "
                  f"SW {s:.4f} = {s / floor:.2f} x floor, proportions {[round(p, 3) for p in row['proportions']]}",
                  flush=True)
    for name in ("Dopri5 1e-3", "Dopri5 1e-4"):
        # Dopri5 (FSAL): 6 evaluations per attempted step, plus the first; the paired difference per sample
        diff = 6.0 * (per_sample[("ot-cfm", name)] - per_sample[("cfm", name)])
        lo, hi = _boot(diff.numpy())
        out["paired"].append({"sampler": name, "evals_ot_minus_cfm_mean": float(diff.mean()), "interval95": [lo, hi],
                              "resolved": bool(hi < 0 or lo > 0)})
        print(f"{name}: OT-CFM - CFM evaluations per sample {float(diff.mean()):+.1f} (95% [{lo:+.1f}, {hi:+.1f}])")
    return out


def digits(args, argv):
    from sdesolve.metrics import DigitsClassifierFeatures, extract_features, fd_from_features
    from sdesolve.train import load_digits

    feat = DigitsClassifierFeatures()
    f_test = extract_features(feat, load_digits("test")[0])
    f_train = extract_features(feat, load_digits("train")[0])
    n = args.n
    out = {"meta": _meta(argv), "n": n, "floor_fd_train_vs_heldout": fd_from_features(f_train, f_test), "rows": [],
           "ratios": []}
    feats = {}
    for name, d in (("flow", args.flow), ("vp", args.vp)):
        tm = load_trained(d)
        for sname, solver, steps in (("Heun x25", sds.Heun(), 25), ("DPMSolverPP(2) x50", sds.DPMSolverPP(order=2), 50)):
            t0 = time.time()
            with torch.no_grad():
                sol = sds.sample(tm.process, tm.score(), solver, shape=(n, 1, 8, 8), steps=steps, seed=0)
            f = extract_features(feat, tm.to_data(sol.y))
            feats[(name, sname)] = f
            fd = fd_from_features(f, f_test)
            out["rows"].append({"model": name, "checkpoint": str(d), "process": repr(tm.process), "train_step": tm.step,
                                "sampler": sname, "nfe": sol.stats.nfe, "fd": fd, "seconds": time.time() - t0})
            print(f"{name} {sname}: NFE {sol.stats.nfe}, FD {fd:.3f}", flush=True)
    g = np.random.default_rng(0)
    for sname in ("Heun x25", "DPMSolverPP(2) x50"):
        a, b = feats[("flow", sname)], feats[("vp", sname)]
        r = fd_from_features(a, f_test) / fd_from_features(b, f_test)
        boots = []
        for _ in range(args.bootstrap):
            idx = torch.from_numpy(g.integers(0, n, n))
            boots.append(fd_from_features(a[idx], f_test) / fd_from_features(b[idx], f_test))
        lo, hi = (float(v) for v in np.percentile(boots, [2.5, 97.5]))
        out["ratios"].append({"sampler": sname, "fd_flow_over_vp": r, "interval95": [lo, hi], "criterion": 1.2,
                              "below_criterion_resolved": hi < 1.2})
        print(f"{sname}: FD flow / VP = {r:.3f} (paired bootstrap 95% [{lo:.3f}, {hi:.3f}])", flush=True)
    return out


def _markdown(kind, res):
    m = res["meta"]
    lines = [f"# Flow-matching training figures: {kind}", "",
             f"- command: `{m['command']}`",
             f"- {m['date_utc']} UTC; python {m['python']}, torch {m['torch']}, numpy {m['numpy']}, sdesolve "
             f"{m['sdesolve']}; cpu, torch threads {m['threads']}, load average {m['load_average']:.2f}", ""]
    if kind == "mixture":
        lines += [f"{res['n']} samples per row, seed 0 (the same x_T for every row); SW floor (two exact sets, mean of "
                  f"20): {res['floor_sw']:.4f}; mixture weights {[round(x, 3) for x in res['weights']]}", "",
                  "| loss | sampler | evaluations/sample | model calls | SW | SW / floor | proportions |",
                  "|---|---|---|---|---|---|---|"]
        for r in res["rows"]:
            lines.append(f"| {r['loss']} | {r['sampler']} | {r['evals_per_sample']:.1f} | {r['nfe']} | {r['sw']:.4f} | "
                         f"{r['sw_over_floor']:.2f} | {[round(p, 3) for p in r['proportions']]} |")
        lines += ["", "Paired (same x_T), OT-CFM - CFM model evaluations per sample, bootstrap over samples:", ""]
        for p in res["paired"]:
            lines.append(f"- {p['sampler']}: {p['evals_ot_minus_cfm_mean']:+.1f} (95% [{p['interval95'][0]:+.1f}, "
                         f"{p['interval95'][1]:+.1f}]){'' if p['resolved'] else ' (not resolved)'}")
    else:
        lines += [f"{res['n']} samples per row, seed 0 for both models; FD floor (training split vs held-out): "
                  f"{res['floor_fd_train_vs_heldout']:.3f}", "",
                  "| model | process | sampler | NFE | FD (held-out) |", "|---|---|---|---|---|"]
        for r in res["rows"]:
            lines.append(f"| {r['model']} | {r['process']} | {r['sampler']} | {r['nfe']} | {r['fd']:.3f} |")
        lines += ["", "FD ratio flow / VP, paired bootstrap over sample indices (criterion < 1.2):", ""]
        for r in res["ratios"]:
            lines.append(f"- {r['sampler']}: {r['fd_flow_over_vp']:.3f} (95% [{r['interval95'][0]:.3f}, "
                         f"{r['interval95'][1]:.3f}])")
    return "\n".join(lines) + "\n"


def _write_text(path, text):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(path, write)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="kind", required=True)
    p = sub.add_parser("mixture")
    p.add_argument("--cfm", required=True)
    p.add_argument("--ot-cfm", required=True)
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--out", required=True, help="path without extension: .json and .md are written")
    p = sub.add_parser("digits")
    p.add_argument("--flow", required=True)
    p.add_argument("--vp", required=True)
    p.add_argument("--n", type=int, default=1438)
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--out", required=True, help="path without extension: .json and .md are written")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    res = (mixture if args.kind == "mixture" else digits)(args, argv)
    for suffix, text in ((".json", json.dumps(res, indent=1, default=str)), (".md", _markdown(args.kind, res))):
        _write_text(args.out + suffix, text)
    print(f"wrote {args.out}.json, {args.out}.md")


if __name__ == "__main__":
    main()
