"""Optimized time grids against hand-designed ones, per solver and NFE, on models with a known
quality floor.

    python benchmarks/grid_optimization.py --out benchmarks/results/grid_optimization

Problems: the 2-D ring and the 8-D mixture of :mod:`sdesolve.bench.problems` (exact scores, VP
SDE; metric: the sliced Wasserstein-2 distance to 10000 exact samples of p_{t_min}) and a digits checkpoint
(``--checkpoint``; metric: Fréchet distance in the digits classifier's features to the held-out
split). For each solver and NFE budget the rows are the hand-designed grids (log-SNR, Karras
rho = 7, uniform, quadratic, time-uniform rho = 2) and the grids of ``sdesolve.schedules.optimize`` with the
dynamic program ("dp") and the learned grid ("learned"), calibrated on ``--calibration-n``
samples of seed ``--calibration-seed`` (the last ``--holdout`` fraction of them held out of the
search to choose the grid) and evaluated on ``--n`` other samples (seed ``--seed``, the same x_T
for every row). ``--feature-loss`` measures the digits losses in the digits classifier's
features, per sample (``--loss mse``) or as the Fréchet distance to the teacher's samples
(``--loss frechet``).

Comparisons are paired: every row maps the same x_T, and a bootstrap over sample indices
(``--bootstrap`` resamples, the same indices for both rows) gives 95% intervals for the metric
difference best-hand minus optimized and for the reduction of the excess over the floor,
1 - (m_opt - floor) / (m_hand - floor), where "best hand" is the hand grid with the lowest
metric for that solver and NFE (chosen on the evaluation samples themselves, which favours it)
and the floor is the metric of exact (mixtures) or real (digits) samples of the same size
(mean over sets; the ratio treats it as fixed). A difference whose interval contains 0 is not
resolved. The optimization cost is the wall time of ``optimize`` on this CPU, apart from
sampling. Writes ``<out>.json`` and ``<out>.md``.
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
from sdesolve import grid_optimization as go
from sdesolve.bench.problems import checkpoint_problem, gmm8d, mixture_problem, ring8
from sdesolve.bench.runner import cpu_name, initial_noise

HAND = {"logsnr": sds.schedules.logsnr, "karras": sds.schedules.karras(7.0), "uniform": sds.schedules.uniform,
        "quadratic": sds.schedules.quadratic, "time_uniform2": sds.schedules.time_uniform(2.0)}
LOSSES = {"mse": go.MeanSquared, "frechet": go.Frechet, "energy": go.Energy}
SOLVERS = {"euler": sds.Euler, "dpmsolverpp": lambda: sds.DPMSolverPP(2), "unipc": lambda: sds.UniPC(2),
           "ddim": sds.DDIM, "heun": sds.Heun, "ipndm": lambda: sds.IPNDM(4), "deis": lambda: sds.DEIS(3)}


class QualityMetric:
    """The problem's primary metric (its :class:`sdesolve.bench.quality.Quality`: SW_2 to exact
    samples for the mixtures, FD in the digits classifier's features for digits), evaluated on a
    representation computed once per row; bootstrap resamples are rows of counts (B, n)."""

    def __init__(self, problem, n, name=None):
        self.q = problem.quality
        key = name or self.q.primary
        if key not in self.q.names:
            raise ValueError(f"--metric {key!r} is not one of this problem's metrics: {', '.join(self.q.names)}")
        self.m = next(m for m in self.q.metrics if m.name == key)
        self.name = self.m.label or self.m.name
        fl = self.q.floor(n)
        self.floor_value, self.floor_std = fl[key], fl.get(key + "_std", 0.0)

    def prepare(self, y):
        return self.q.prepare(y)

    def __call__(self, rep):
        return self.resampled(rep, torch.ones(1, rep.shape[0], dtype=torch.float64))[0]

    def resampled(self, rep, counts):
        """The metric under each row of bootstrap counts (B, n)."""
        return self.m.evaluate(rep, counts).tolist()


def problem_represent(problem, args) -> dict:
    """--feature-loss: the digits classifier's features of the samples (in [-1, 1]) as the
    representation of the optimizers' losses (LD3 measures its loss in LPIPS features)."""
    if problem.model is None:  # a mixture: the loss on the samples themselves
        return {"loss": LOSSES[args.loss]()}
    if not args.feature_loss:
        return {}
    from sdesolve.metrics.features import DigitsClassifierFeatures
    ex = DigitsClassifierFeatures()
    lo, hi = problem.quality.info["data_range"]

    def represent(y):
        x = problem.to_data(y)
        return ex(((x - lo) * (2.0 / (hi - lo)) - 1.0).float())
    return {"represent": represent, "represent_id": "digits-classifier features", "loss": LOSSES[args.loss]()}


def _ci(v, point):
    """95% interval from bootstrap values: percentiles with 100 resamples or more, else the
    normal approximation point ± 1.96 sd (steadier with few resamples)."""
    t = torch.tensor(v, dtype=torch.float64)
    t = t[torch.isfinite(t)]
    if t.numel() < 2 or not math.isfinite(point):
        return [math.nan, math.nan]
    if t.numel() >= 100:
        return [float(t.quantile(0.025)), float(t.quantile(0.975))]
    sd = float(t.std())
    return [point - 1.96 * sd, point + 1.96 * sd]


def compare(metric, data, best, methods, floor, resamples, seed=0):
    """Paired bootstrap over sample indices (the same resamples for every row): 95% intervals of
    each row's metric, of best-hand minus optimized, and of the reduction of the excess over the
    data floor, 1 - (m_opt - floor) / (m_hand - floor), and over the teacher (the converged solve
    from the same x_T), 1 - (m_opt - m_teacher) / (m_hand - m_teacher)."""
    n = data[best].shape[0]
    g = torch.Generator().manual_seed(seed)
    keys = [best, "teacher", *methods]
    point = {k: metric(data[k]) for k in keys}
    counts = torch.stack([torch.bincount(torch.randint(0, n, (n,), generator=g), minlength=n).double()
                          for _ in range(resamples)])
    boot = {k: metric.resampled(data[k], counts) for k in keys}
    red = lambda a, b, f: 1.0 - (a - f) / (b - f) if b > f else math.nan  # noqa: E731
    out = {"ci": {k: _ci(v, point[k]) for k, v in boot.items()}, "point": point, "methods": {}}
    for m in methods:
        r_floor, r_teacher = red(point[m], point[best], floor), red(point[m], point[best], point["teacher"])
        out["methods"][m] = {
            "diff": point[best] - point[m],
            "diff_ci": _ci([b - a for a, b in zip(boot[m], boot[best])], point[best] - point[m]),
            "reduction_vs_floor": r_floor,
            "reduction_vs_floor_ci": _ci([red(a, b, floor) for a, b in zip(boot[m], boot[best])], r_floor),
            "reduction_vs_teacher": r_teacher,
            "reduction_vs_teacher_ci": _ci([red(a, b, t) for a, b, t in zip(boot[m], boot[best], boot["teacher"])],
                                           r_teacher),
        }
    return out


def run_problem(name, problem, metric, args, methods, dtype, model_id, log):
    process, score, shape = problem.process, problem.score, tuple(problem.sample_shape)
    x_T = initial_noise(process, (args.n,) + shape, args.seed, dtype=dtype)
    teacher = go.Teacher(steps=args.teacher_steps)
    t0 = time.perf_counter()
    with torch.no_grad():
        y = sds.sample(process, score, teacher.make_solver(), x_T=x_T,
                       schedule=sds.schedules.logsnr(process, teacher.steps), seed=args.seed).y
    teacher_data = metric.prepare(problem.to_data(y))
    log(f"{name}: teacher ({teacher.describe()}) on {args.n} samples in {time.perf_counter() - t0:.1f} s, "
        f"metric {metric(teacher_data):.4g}; floor {metric.floor_value:.4g}")
    out = []
    for sname in args.solvers.split(","):
        solver = SOLVERS[sname]()
        for nfe in (int(v) for v in args.nfe.split(",")):
            steps = nfe // solver.nfe_per_step
            rows, data = {}, {"teacher": teacher_data}
            for gname, sched in HAND.items():
                grid = sched(process, steps)
                t0 = time.perf_counter()
                with torch.no_grad():
                    y = sds.sample(process, score, solver, x_T=x_T, schedule=grid, seed=args.seed).y
                data[gname] = metric.prepare(problem.to_data(y))
                rows[gname] = {"grid": [float(t) for t in grid], "sample_seconds": time.perf_counter() - t0,
                               "metric": metric(data[gname])}
            for mname, method in methods.items():
                with torch.no_grad():
                    opt = go.optimize(process, score, solver, steps, method=method, n=args.calibration_n,
                                      seed=args.calibration_seed, reference=teacher, shape=shape, dtype=dtype,
                                      model_id=model_id, holdout=args.holdout, **problem_represent(problem, args))
                t0 = time.perf_counter()
                with torch.no_grad():
                    y = sds.sample(process, score, solver, x_T=x_T, schedule=opt.grid, seed=args.seed).y
                data[mname] = metric.prepare(problem.to_data(y))
                rec = {k: v for k, v in opt.record.items() if k not in ("loss_curve_every_10",)}
                rows[mname] = {"grid": [float(t) for t in opt.grid], "sample_seconds": time.perf_counter() - t0,
                               "optimization_seconds": opt.record["seconds"], "record": rec,
                               "metric": metric(data[mname])}
            best = min(HAND, key=lambda g: rows[g]["metric"])
            cmp = compare(metric, data, best, list(methods), metric.floor_value, args.bootstrap)
            for k in (best, *methods):
                rows[k]["ci"] = cmp["ci"][k]
            for m in methods:
                rows[m]["vs_best_hand"] = cmp["methods"][m]
            entry = {"problem": name, "solver": repr(solver), "solver_name": sname, "nfe": nfe, "steps": steps,
                     "best_hand": best, "teacher_metric": cmp["point"]["teacher"], "teacher_ci": cmp["ci"]["teacher"],
                     "rows": rows}
            out.append(entry)
            line = f"{name:8s} {sname:12s} NFE {nfe:3d}  best hand {best} {rows[best]['metric']:.4g}"
            for m in methods:
                r, v = rows[m], rows[m]["vs_best_hand"]
                line += (f" | {m} {r['metric']:.4g} ({r['optimization_seconds']:.1f} s) reduction vs floor "
                         f"{v['reduction_vs_floor']:.3f} {[round(c, 3) for c in v['reduction_vs_floor_ci']]} vs teacher "
                         f"{v['reduction_vs_teacher']:.3f} {[round(c, 3) for c in v['reduction_vs_teacher_ci']]}")
            log(line)
    return out


def markdown(results) -> str:
    pct = lambda v: "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.0f}%"  # noqa: E731
    lines = ["# Optimized time grids against hand-designed ones", "",
             f"Command: `{results['command']}`", "",
             f"Machine: {results['machine']}; torch {results['torch']}. Calibration: seed "
             f"{results['calibration_seed']}, {results['calibration_n']} samples ({results['calibration_n_digits']} for digits), "
             f"the last {100 * results.get('holdout', 0):.0f}% held out of the search to choose the grid (sdesolve.schedules.optimize's "
             f"holdout); loss: {LOSSES[results.get('loss', 'mse')].name} on the mixtures' samples, for digits "
             + (f"{results.get('loss', 'mse')} in the digits classifier's features" if results.get("feature_loss")
                else "the per-sample squared distance in pixels")
             + f"; evaluation: seed {results['seed']} "
             "(same x_T for every row). Intervals: 95% bootstrap over sample indices "
             f"({results['bootstrap']} resamples for the mixtures, {results.get('bootstrap_digits')} for digits; the same "
             "for every row: paired; percentiles from 100 resamples up, else point ± 1.96 bootstrap sd). Excess reduction: "
             "1 - (m_opt - m_0) / (m_best_hand - m_0), with m_0 the data floor (exact or real samples of the same "
             "size) or the teacher (the converged solve from the same x_T). Best hand: the lowest of log-SNR, "
             "Karras (rho 7), uniform, quadratic and time-uniform (rho 2) on the evaluation samples.", ""]
    for pname, info in results["problems"].items():
        lines += [f"## {pname}: {info['metric']}, {info['n']} samples", "",
                  f"Data floor {info['floor']:.4g} ± {info['floor_std']:.2g} (sd over sets); teacher "
                  f"{info.get('teacher', math.nan):.4g}.", "",
                  "| solver | NFE | grid | metric [95% CI] | best hand − this [95% CI] | excess reduction vs floor "
                  "[95% CI] | vs teacher [95% CI] | optimization s |",
                  "|---|---|---|---|---|---|---|---|"]
        for e in (e for e in results["entries"] if e["problem"] == pname):
            b = e["best_hand"]
            rb = e["rows"][b]
            lines.append(f"| {e['solver_name']} | {e['nfe']} | {b} (best hand) | {rb['metric']:.4g} "
                         f"[{rb['ci'][0]:.4g}, {rb['ci'][1]:.4g}] | | | | |")
            for m in results["methods"]:
                r = e["rows"][m]
                v = r["vs_best_hand"]
                resolved = "" if v["diff_ci"][0] > 0 or v["diff_ci"][1] < 0 else " (not resolved)"
                lines.append(f"| {e['solver_name']} | {e['nfe']} | {m} | {r['metric']:.4g} [{r['ci'][0]:.4g}, "
                             f"{r['ci'][1]:.4g}] | {v['diff']:.4g} [{v['diff_ci'][0]:.4g}, {v['diff_ci'][1]:.4g}]"
                             f"{resolved} | {pct(v['reduction_vs_floor'])} [{pct(v['reduction_vs_floor_ci'][0])}, "
                             f"{pct(v['reduction_vs_floor_ci'][1])}] | {pct(v['reduction_vs_teacher'])} "
                             f"[{pct(v['reduction_vs_teacher_ci'][0])}, {pct(v['reduction_vs_teacher_ci'][1])}] | "
                             f"{r['optimization_seconds']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def distances(args, log):
    """Second pass, from the grids of a results file: each row's distance to the teacher (the
    converged solve from the same x_T, evaluation seed), RMS per dimension, the target both
    optimizers minimise on their calibration samples; floor 0. Paired bootstrap (mean of
    per-sample squared distances, resampled) against the hand grid closest to the teacher."""
    res = json.load(open(args.distance_from))
    out = {"source": args.distance_from, "command": "python benchmarks/grid_optimization.py "
           + " ".join(sys.argv[1:]), "n": {}, "entries": []}
    teacher = go.Teacher(steps=res["teacher_steps"])
    for pname in args.problems.split(","):
        if pname == "digits":
            problem, dtype, n = checkpoint_problem(args.checkpoint), torch.float32, args.n_digits
        else:
            problem, dtype, n = mixture_problem({"ring8": ring8, "gmm8d": gmm8d}[pname](), pname), torch.float64, args.n
        out["n"][pname] = n
        process, score, shape = problem.process, problem.score, tuple(problem.sample_shape)
        x_T = initial_noise(process, (n,) + shape, res["seed"], dtype=dtype)
        with torch.no_grad():
            ref = sds.sample(process, score, teacher.make_solver(), x_T=x_T,
                             schedule=sds.schedules.logsnr(process, teacher.steps), seed=res["seed"]).y
        for e in (e for e in res["entries"] if e["problem"] == pname):
            solver = SOLVERS[e["solver_name"]]()
            d = {}
            for g, row in e["rows"].items():
                with torch.no_grad():
                    y = sds.sample(process, score, solver, x_T=x_T, schedule=torch.tensor(row["grid"], dtype=torch.float64),
                                   seed=res["seed"]).y
                d[g] = go._mse(y, ref)
            best = min(HAND, key=lambda g: float(d[g].mean()))
            gen = torch.Generator().manual_seed(0)
            idx = [torch.randint(0, n, (n,), generator=gen) for _ in range(args.bootstrap_digits)]
            rms = {g: float(v.mean().sqrt()) for g, v in d.items()}
            row = {"problem": pname, "solver_name": e["solver_name"], "nfe": e["nfe"], "best_hand": best, "rms": rms,
                   "ci": {g: _ci([float(d[g][i].mean().sqrt()) for i in idx], rms[g]) for g in (best, *res["methods"])}}
            for m in res["methods"]:
                red = [1.0 - float(d[m][i].mean().sqrt()) / float(d[best][i].mean().sqrt()) for i in idx]
                row[m] = {"reduction": 1.0 - rms[m] / rms[best], "reduction_ci": _ci(red, 1.0 - rms[m] / rms[best])}
            out["entries"].append(row)
            log(f"{pname:8s} {e['solver_name']:12s} NFE {e['nfe']:3d} best hand {best} {rms[best]:.4g} | "
                + " | ".join(f"{m} {rms[m]:.4g} reduction {row[m]['reduction']:.3f} "
                             f"{[round(c, 3) for c in row[m]['reduction_ci']]}" for m in res["methods"]))
    lines = ["# Distance to the teacher on evaluation samples", "", f"Command: `{out['command']}`", "",
             "RMS distance per dimension between each row's samples and the teacher's (the converged solve from "
             "the same x_T; floor 0), on the evaluation seed; grids from " + args.distance_from + ". Reduction: "
             "1 - rms_opt / rms_best_hand, 95% paired bootstrap interval (percentiles, "
             f"{args.bootstrap_digits} resamples).", "",
             "| problem | solver | NFE | best hand: rms [95% CI] | dp: rms, reduction [95% CI] | learned: rms, reduction [95% CI] |",
             "|---|---|---|---|---|---|"]
    pct = lambda v: f"{100 * v:.0f}%"  # noqa: E731
    for r in out["entries"]:
        b = r["best_hand"]
        cells = [f"{r['rms'][m]:.4g}, {pct(r[m]['reduction'])} [{pct(r[m]['reduction_ci'][0])}, "
                 f"{pct(r[m]['reduction_ci'][1])}]" for m in res["methods"]]
        lines.append(f"| {r['problem']} | {r['solver_name']} | {r['nfe']} | {b}: {r['rms'][b]:.4g} "
                     f"[{r['ci'][b][0]:.4g}, {r['ci'][b][1]:.4g}] | " + " | ".join(cells) + " |")
    with open(args.out + ".json", "w") as f:
        json.dump(out, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problems", default="ring8,gmm8d,digits")
    ap.add_argument("--checkpoint", default="/work/runs/digits")
    ap.add_argument("--solvers", default="euler,dpmsolverpp,unipc")
    ap.add_argument("--nfe", default="5,10")
    ap.add_argument("--n", type=int, default=2000, help="evaluation samples (mixtures)")
    ap.add_argument("--n-digits", type=int, default=1000, help="evaluation samples (digits)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calibration-n", type=int, default=64)
    ap.add_argument("--calibration-seed", type=int, default=go.CALIBRATION_SEED)
    ap.add_argument("--teacher-steps", type=int, default=64)
    ap.add_argument("--candidates", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--iterations-digits", type=int, default=20)
    ap.add_argument("--sweeps-digits", type=int, default=2)
    ap.add_argument("--calibration-n-digits", type=int, default=32)
    ap.add_argument("--bootstrap", type=int, default=30, help="bootstrap resamples (mixtures: each is a sort of the "
                    "samples' projections, interpolated to the reference's 10000 levels)")
    ap.add_argument("--bootstrap-digits", type=int, default=200)
    ap.add_argument("--feature-loss", action="store_true",
                    help="digits: measure the optimizers' losses in the digits classifier's features")
    ap.add_argument("--loss", choices=sorted(LOSSES), default="mse",
                    help="the optimizers' end-to-end loss, on the samples for the mixtures and, with --feature-loss, "
                         "in the features for digits (mse: per sample; frechet: the Fréchet distance to the teacher's "
                         "samples over the batch; energy: their energy distance)")
    ap.add_argument("--holdout", type=float, default=0.5,
                    help="fraction of the calibration samples held out of the search to choose the grid")
    ap.add_argument("--metric", default=None, help="the mixtures' metric (default: the problem's primary, SW; "
                    "energy: the energy distance, a proper metric)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--distance-from", help="a results .json of this script: measure its grids' distance to the "
                    "teacher on the evaluation samples instead")
    args = ap.parse_args(argv)
    if args.distance_from:
        return distances(args, lambda s: print(s, flush=True))
    if args.seed == args.calibration_seed:
        raise SystemExit("the evaluation seed must differ from the calibration seed")
    results = {"command": "python benchmarks/grid_optimization.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "machine": f"{cpu_name()}, torch threads {torch.get_num_threads()}", "torch": torch.__version__,
               "python": platform.python_version(), "seed": args.seed, "calibration_seed": args.calibration_seed,
               "calibration_n": args.calibration_n, "calibration_n_digits": args.calibration_n_digits, "n": args.n, "n_digits": args.n_digits,
               "bootstrap": args.bootstrap, "bootstrap_digits": args.bootstrap_digits, "teacher_steps": args.teacher_steps, "methods": ["dp", "learned"],
               "holdout": args.holdout, "feature_loss": args.feature_loss, "loss": args.loss,
               "problems": {}, "entries": []}
    log = lambda s: print(s, flush=True)  # noqa: E731
    for pname in args.problems.split(","):
        start = time.perf_counter()
        n_saved = args.n
        if pname == "digits":
            problem = checkpoint_problem(args.checkpoint)
            args.n, bootstrap_saved, args.bootstrap = args.n_digits, args.bootstrap, args.bootstrap_digits
            cal_saved, args.calibration_n = args.calibration_n, args.calibration_n_digits
            metric = QualityMetric(problem, args.n)
            methods = {"dp": go.DynamicProgramming(candidates=args.candidates, sweeps=args.sweeps_digits),
                       "learned": go.Learned(iterations=args.iterations_digits, lr=0.1)}
            dtype, model_id = torch.float32, go.model_digest(problem.model) + ":ema"
        else:
            problem = mixture_problem({"ring8": ring8, "gmm8d": gmm8d}[pname](), pname)
            metric = QualityMetric(problem, args.n, args.metric)
            methods = {"dp": go.DynamicProgramming(candidates=args.candidates),
                       "learned": go.Learned(iterations=args.iterations, lr=0.1)}
            dtype, model_id = torch.float64, f"gmm:{pname}"
        results["problems"][pname] = {"metric": metric.name, "floor": metric.floor_value, "floor_std": metric.floor_std,
                                      "n": args.n, "info": problem.info,
                                      "methods": {k: repr(v) for k, v in methods.items()}}
        entries = run_problem(pname, problem, metric, args, methods, dtype, model_id, log)
        results["entries"] += entries
        results["problems"][pname]["teacher"] = entries[0]["teacher_metric"] if entries else None
        results["problems"][pname]["seconds"] = time.perf_counter() - start
        if pname == "digits":
            args.n, args.bootstrap, args.calibration_n = n_saved, bootstrap_saved, cal_saved
        with open(args.out + ".json", "w") as f:
            json.dump(results, f, indent=1)
        with open(args.out + ".md", "w") as f:
            f.write(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
