"""Sample quality against model evaluations for the samplers, on Gaussian mixtures with exact scores.

    python benchmarks/quality_vs_nfe.py --out benchmarks/results/quality_vs_nfe

For each data set (a 2-D ring of 8 narrow components, an 8-D mixture of 6 full-covariance
components) and each sampler, ``sdesolve.sample`` draws n samples from the VP SDE (beta 0.1..20,
T = 1, t_min = 1e-3) with the exact mixture score, using the sampler's default grid, with as
many steps as fit in the NFE budget (5, 10, 20, 50: NFE per step 1, 2 or 3; EDMHeun's grid
ends at sigma = 0, so N steps cost 2N - 1). The samples are compared with n exact samples of
p_{t_min}:

* SW: sliced Wasserstein-2 distance (256 directions, the same for every sampler);
* TV: total variation between the component proportions of the samples (each sample assigned
  to its most probable component under the data density) and the mixture weights.

The floor is the mean (and standard deviation) of the same figures for ``--floor-sets`` further
sets of n exact samples: a sampler within about two standard deviations of it cannot be told
from exact sampling. All deterministic samplers map the same x_T, so their converged rows are one
realization together and may sit that far below the floor's mean. Writes ``<out>.json`` (every figure, versions, the command) and
``<out>.md`` (the tables).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time

import torch

import sdesolve as sds
from sdesolve.bench.problems import gmm8d, ring8
from sdesolve.metrics import sliced_wasserstein


DATASETS = {"2-D ring (8 components)": ring8, "8-D mixture (6 components)": gmm8d}


def samplers():
    """(label, solver, model evaluations per step, the grid ends at sigma = 0)."""
    return [
        ("EulerMaruyama (reverse SDE)", sds.EulerMaruyama(), 1, False),
        ("Euler (PF ODE)", sds.Euler(), 1, False),
        ("Heun (PF ODE)", sds.Heun(), 2, False),
        ("EDMHeun", sds.EDMHeun(), 2, True),
        ("DDIM", sds.DDIM(), 1, False),
        ("DDIM eta=1", sds.DDIM(1.0), 1, False),
        ("DPM-Solver-2", sds.DPMSolver(2), 2, False),
        ("DPM-Solver-3", sds.DPMSolver(3), 3, False),
        ("DPM-Solver++(2S)", sds.DPMSolverPP(2, multistep=False), 2, False),
        ("DPM-Solver++(2M)", sds.DPMSolverPP(2), 1, False),
        ("DPM-Solver++(3M)", sds.DPMSolverPP(3), 1, False),
        ("SDE-DPM-Solver++(2M)", sds.DPMSolverPP(2, sde=True), 1, False),
        ("UniPC-2 bh1", sds.UniPC(2, "bh1"), 1, False),
        ("UniPC-2 bh2", sds.UniPC(2, "bh2"), 1, False),
        ("UniPC-3 bh2", sds.UniPC(3, "bh2"), 1, False),
    ]


def steps_for(nfe: int, per_step: int, ends_at_zero: bool) -> int:
    if ends_at_zero:  # N steps cost per_step (N - 1) + 1
        return max(2, (nfe - 1) // per_step + 1)
    return max(1, nfe // per_step)


def proportions(mix, x):
    k = mix.posterior(x.to(torch.float64)).argmax(1)
    return torch.bincount(k, minlength=mix.K).to(torch.float64) / x.shape[0]


def tv(mix, x) -> float:
    return float(0.5 * (proportions(mix, x) - mix.weights).abs().sum())


def schedule_name(solver) -> str:
    return getattr(solver.default_schedule, "__name__", str(solver.default_schedule))


def run(args):
    process = sds.VPSDE()
    dtype = getattr(torch, args.dtype)
    results = {}
    for dname, make in DATASETS.items():
        mix = make()
        score = mix.score(process)
        g = torch.Generator().manual_seed(args.seed)
        ref = mix.sample(args.n, g, t=process.t_min, process=process, dtype=torch.float64)
        proj = lambda: torch.Generator().manual_seed(args.seed + 1)  # the same directions for every row
        exact = [mix.sample(args.n, g, t=process.t_min, process=process, dtype=torch.float64)
                 for _ in range(args.floor_sets)]
        sw_f = torch.tensor([sliced_wasserstein(e, ref, 256, proj()) for e in exact])
        tv_f = torch.tensor([tv(mix, e) for e in exact])
        floor = {"sw": float(sw_f.mean()), "sw_std": float(sw_f.std()), "tv": float(tv_f.mean()),
                 "tv_std": float(tv_f.std()), "sets": args.floor_sets}
        rows = []
        for label, solver, per_step, zero in samplers():
            row = {"sampler": label, "solver": repr(solver), "schedule": schedule_name(solver), "runs": []}
            for target in args.nfe:
                steps = steps_for(target, per_step, zero)
                t0 = time.perf_counter()
                sol = sds.sample(process, score, solver, shape=(args.n, mix.D), steps=steps, seed=args.seed,
                                 dtype=dtype)
                wall = time.perf_counter() - t0
                y = sol.y.to(torch.float64)
                row["runs"].append({"nfe_target": target, "nfe": sol.stats.nfe, "steps": steps,
                                    "sw": sliced_wasserstein(y, ref, 256, proj()), "tv": tv(mix, y),
                                    "proportions": proportions(mix, y).tolist(), "wall_s": wall})
            rows.append(row)
            print(f"{dname:28s} {label:28s} " + "  ".join(
                f"NFE {r['nfe']:2d}: SW {r['sw']:.4f} TV {r['tv']:.3f}" for r in row["runs"]), flush=True)
        results[dname] = {"dim": mix.D, "weights": mix.weights.tolist(), "floor": floor, "samplers": rows}
    return results


def markdown(results, args, command) -> str:
    out = ["# Sample quality against NFE on Gaussian mixtures", "",
           f"Command: `{command}`", "",
           f"VP SDE (beta 0.1..20, t_min = 1e-3), exact mixture scores, n = {args.n} samples per run "
           f"({args.dtype}), seed {args.seed}, each sampler on its default grid. SW: sliced Wasserstein-2 "
           "distance to n exact samples of p_{t_min} (256 directions). TV: total variation between the "
           "samples' component proportions (most probable component under the data density) and the "
           "weights. Floor: mean +- standard deviation of the same figures for further sets of n exact "
           "samples (rows within about two standard deviations of it are indistinguishable from exact "
           "sampling; the deterministic samplers share x_T, so their converged rows are one realization). "
           "A cell reads `SW / TV`; `[k]` gives the NFE actually spent where it differs from the "
           "column's budget.", ""]
    for dname, res in results.items():
        fl = res["floor"]
        targets = [r["nfe_target"] for r in res["samplers"][0]["runs"]]
        out += [f"## {dname}", "", f"Floor ({fl['sets']} sets of exact samples): SW {fl['sw']:.4f} +- {fl['sw_std']:.4f} / "
                f"TV {fl['tv']:.3f} +- {fl['tv_std']:.3f}", "",
                "| sampler | grid | " + " | ".join(f"NFE {t}" for t in targets) + " |",
                "|---|---|" + "---|" * len(targets)]
        for row in res["samplers"]:
            cells = []
            for r in row["runs"]:
                note = "" if r["nfe"] == r["nfe_target"] else f" [{r['nfe']}]"
                cells.append(f"{r['sw']:.4f} / {r['tv']:.3f}{note}")
            out.append(f"| {row['sampler']} | {row['schedule']} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10000, help="samples per run")
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50], help="NFE budgets")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--floor-sets", type=int, default=8, help="sets of exact samples for the floor")
    ap.add_argument("--out", default=None, help="write <out>.json and <out>.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    command = "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:]))
    results = run(args)
    if args.out:
        meta = {"command": command, "python": platform.python_version(), "torch": torch.__version__,
                "sdesolve": sds.__version__, "n": args.n, "seed": args.seed, "dtype": args.dtype,
                "process": repr(sds.VPSDE())}
        with open(args.out + ".json", "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
        with open(args.out + ".md", "w") as f:
            f.write(markdown(results, args, command) + "\n")


if __name__ == "__main__":
    main()
