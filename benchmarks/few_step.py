"""Few-step sampling (5-10 model evaluations): sdesolve's samplers on candidate grids against
k-diffusion's and diffusers' samplers on their own default grids, same model, same x_T, with
paired bootstrap intervals over the sample indices.

    python benchmarks/few_step.py --problem ring8|gmm8d|digits [--checkpoint DIR] --n 2000 \
        --nfe 5,6,8,10 --out benchmarks/results/few_step/PROBLEM.json [--samples FILE.npz] \
        [--defaults] [--optimized dp,learned] [--primary energy]

``--defaults``: sdesolve's solvers on their own default grids only (the ODE and the stochastic
ones), the counterparts and the peers, the rows of the lead (``benchmarks/results/few_step/LEAD.md``);
without it, every candidate grid of every solver and order: the choice of the defaults
(``DEFAULTS.md``, ``few_step_report.py --defaults-table``; run with ``--seed 7919``, not the lead's
evaluation seed).
``--optimized``: rows of UniPC(3), DPM-Solver++(2M) and iPNDM(4) on grids that
``sds.schedules.optimize`` fits to this model, solver and NFE on calibration seeds (not the
evaluation seed), with the optimization's seconds.

Every row samples the same n samples: x_T[i] from stream (seed, i) (``initial_noise``), and
stochastic rows their step noise from the same streams. A row's number of steps is the largest
whose model evaluations fit the NFE budget (dry runs, as ``sdesolve bench`` does). Quality: the
problem's primary metric (mixtures: sliced Wasserstein-2 to 10000 exact samples of p_{t_min};
digits: Fréchet distance in the digits classifier's features to the held-out split), or the one
``--primary`` names; on the mixtures the energy distance (to 2000 of the exact samples) is kept
beside SW, and ``--primary energy`` ranks by it and keeps SW beside: a proper metric whose paired
differences are far tighter than SW's, which mode proportions dominate. Intervals
(benchmarks/few_step_report.py, from the samples kept in an .npz): B bootstrap resamples of the
sample indices, the same resamples for every row (paired), 95% percentile intervals of each row's
metric and of the differences that the tables report.
Rows ending at t = 0 (sigma = 0) return the sample at t = 0, the others at t_min.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

import sdesolve as sds
from sdesolve.bench import peers as P
from sdesolve.bench import problems
from sdesolve.bench.runner import environment, fit_steps, initial_noise
from sdesolve.solvers.diffusion import append_zero

S = sds.schedules
GRIDS = {
    "karras7->0": append_zero(S.karras(7.0)), "karras7": S.karras(7.0), "karras5->0": append_zero(S.karras(5.0)),
    "logsnr": S.logsnr, "logsnr->0": append_zero(S.logsnr), "time_uniform2->0": append_zero(S.time_uniform(2.0)),
    "polyexp2->0": append_zero(S.polyexponential(2.0)), "uniform": S.uniform, "quadratic": S.quadratic,
    "time_uniform2": S.time_uniform(2.0), "linspace_timesteps": S.linspace_timesteps(), "uniform->0": append_zero(S.uniform),
    "time_uniform1.5": S.time_uniform(1.5), "time_uniform1.75": S.time_uniform(1.75),
}
# the candidates for a solver's default grid: grids that every process has (no sigma = 0 needed)
CANDIDATES = ("quadratic", "time_uniform1.5", "time_uniform1.75", "time_uniform2", "logsnr", "karras7->0")
# the grids a default may be: quadratic is spaced in t and starts at T, where rho = sigma / alpha is
# infinite on a path to pure noise (alpha(T) = 0), so the solvers in lambda or rho cannot start there
DEFAULT_CANDIDATES = tuple(g for g in CANDIDATES if g != "quadratic")


def ours():
    """(label, solver, grid name): sdesolve's candidates (each solver and order on every candidate
    grid), and the counterparts on their peers' grids."""
    rows = []
    for g in CANDIDATES + ("linspace_timesteps",):
        rows.append(("IPNDM(4)", sds.IPNDM(4), g))
        rows.append(("DEIS(3)", sds.DEIS(3), g))
        rows.append(("UniPC(3)", sds.UniPC(3), g))
        rows.append(("UniPC(2)", sds.UniPC(2), g))
        rows.append(("DPMSolverPP(3)", sds.DPMSolverPP(3), g))
        rows.append(("DPMSolverPP(2)", sds.DPMSolverPP(2), g))
        rows.append(("SASolver(tau=0)", sds.SASolver(tau=0.0), g))
        rows.append(("SASolver(2, 2, tau=0)", sds.SASolver(2, 2, tau=0.0), g))
    # the counterparts on their peers' default grids
    rows.append(("DPMSolverPP(2)", sds.DPMSolverPP(2), "karras7->0"))   # k-diffusion dpmpp_2m
    rows.append(("LMS(4)", sds.LMS(4), "karras7->0"))                   # k-diffusion lms
    rows.append(("EDMHeun", sds.EDMHeun(), "karras7->0"))               # k-diffusion heun
    rows.append(("UniPC(2)", sds.UniPC(2), "linspace_timesteps"))       # diffusers UniPC default
    seen, out = set(), []
    for r in rows:
        if (r[0], r[2]) not in seen:
            seen.add((r[0], r[2]))
            out.append(r)
    return out


def defaults():
    """(label, solver, grid name): sdesolve's solvers on their own default grids (the ODE ones and
    the stochastic ones), and the counterparts on their peers' grids."""
    from few_step_report import grid_name
    solvers = [("IPNDM(4)", sds.IPNDM(4)), ("DEIS(3)", sds.DEIS(3)), ("UniPC(3)", sds.UniPC(3)),
               ("UniPC(2)", sds.UniPC(2)), ("DPMSolverPP(3)", sds.DPMSolverPP(3)), ("DPMSolverPP(2)", sds.DPMSolverPP(2)),
               ("SASolver(tau=0)", sds.SASolver(tau=0.0)), ("SASolver(2, 2, tau=0)", sds.SASolver(2, 2, tau=0.0)),
               ("SASolver", sds.SASolver()),
               ("DPMSolverPP(2, sde)", sds.DPMSolverPP(2, sde=True)), ("DPMSolverPP3MSDE", sds.DPMSolverPP3MSDE())]
    rows = [(lab, s, grid_name(type(s).default_schedule)) for lab, s in solvers]
    return rows + [r for r in ours() if (r[0], r[2]) in COUNTERPART_ROWS]


COUNTERPART_ROWS = {("DPMSolverPP(2)", "karras7->0"), ("LMS(4)", "karras7->0"), ("EDMHeun", "karras7->0"),
                    ("UniPC(2)", "linspace_timesteps")}


OPTIMIZED = {"UniPC(3)": lambda: sds.UniPC(3), "DPMSolverPP(2)": lambda: sds.DPMSolverPP(2),
             "IPNDM(4)": lambda: sds.IPNDM(4)}


def optimized_grid(prob, solver, steps, method, calibration_n):
    """A grid fitted by ``sds.schedules.optimize`` on calibration seeds (not the evaluation seed),
    and the seconds it took."""
    from sdesolve import grid_optimization as go
    dtype = torch.float32 if prob.model is not None else torch.float64
    model_id = (go.model_digest(prob.model) + ":ema") if prob.model is not None else f"gmm:{prob.name}"
    opt = sds.schedules.optimize(prob.process, prob.score, solver, steps, method=method, n=calibration_n,
                                 shape=tuple(prob.sample_shape), dtype=dtype, model_id=model_id)
    return opt.grid, opt.record["seconds"], opt.record["calibration"]["seed"]


def extra():
    """The grid choice for the other new samplers (no peers, no counterparts)."""
    rows = []
    for g in CANDIDATES:
        rows.append(("LMS(4)", sds.LMS(4), g))
        rows.append(("SASolver", sds.SASolver(), g))
        rows.append(("SASolver(2, 2)", sds.SASolver(2, 2), g))
        rows.append(("DPMSolverPP3MSDE", sds.DPMSolverPP3MSDE(), g))
        rows.append(("DPMSolverPP3MSDE(eta=0)", sds.DPMSolverPP3MSDE(0.0), g))
        rows.append(("DPMSolverPPSDE", sds.DPMSolverPPSDE(), g))
    return rows


def peers(small=False):
    """k-diffusion's samplers on its Karras grid (to 0, as its samplers are used, and to
    sigma(t_min) with all steps at noise levels), diffusers' schedulers with their defaults.
    ``small`` leaves out k-diffusion's stochastic samplers (the worst peer rows on the mixtures)."""
    from diffusers import DEISMultistepScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler
    names = ("euler", "heun", "lms", "dpmpp_2m") + (() if small else ("dpmpp_2m_sde", "dpmpp_3m_sde", "dpmpp_sde"))
    out = [P.KDiffusion(name, zero=True) for name in names]
    out += [P.KDiffusion("dpmpp_2m"), P.KDiffusion("dpmpp_2m_sde")]
    out += [P.Diffusers(DPMSolverMultistepScheduler, "DPMSolverPP(order=2)", "diffusers DPMSolverMultistep (default)"),
            P.Diffusers(DPMSolverMultistepScheduler, "DPMSolverPP(order=3)", "diffusers DPMSolverMultistep(3)",
                        solver_order=3),
            P.Diffusers(UniPCMultistepScheduler, "UniPC(order=2)", "diffusers UniPCMultistep (default)"),
            P.Diffusers(UniPCMultistepScheduler, "UniPC(order=3)", "diffusers UniPCMultistep(3)", solver_order=3),
            P.Diffusers(DEISMultistepScheduler, "DEIS(order=1, in_log_rho=True)", "diffusers DEISMultistep (default)")]
    return out


# --- quality: the benchmark's paired metrics ------------------------------------------------------
class Metrics:
    """The problem's metrics (a :class:`sdesolve.bench.quality.Quality`): the primary one and, for
    the mixtures, the energy distance beside the sliced Wasserstein distance (which mode
    proportions dominate). ``prepare`` maps data-space samples to the representation once;
    ``__call__(rep, counts)`` gives {name: (B,) values} under bootstrap counts (B, n)."""

    def __init__(self, quality, primary=None):
        self.q = quality
        self.primary = primary or quality.primary
        if self.primary not in quality.names:
            raise ValueError(f"metric {self.primary!r} is not one of this problem's: {', '.join(quality.names)}")
        keep = [self.primary] + [k for k in (quality.primary, "energy") if k in quality.names and k != self.primary]
        self.metrics = [m for m in quality.metrics if m.name in keep]

    def prepare(self, x):
        return self.q.prepare(x)

    def __call__(self, rep, counts=None, names=None):
        w = torch.ones(1, rep.shape[0], dtype=torch.float64) if counts is None else counts
        ms = [m for m in self.metrics if names is None or m.name in names]
        if not torch.isfinite(rep).all():
            return {m.name: torch.full((w.shape[0],), float("nan"), dtype=torch.float64) for m in ms}
        return {m.name: m.evaluate(rep, w) for m in ms}


def count_nfe(sampler, process, grid, steps):
    x = torch.zeros(1, 1, dtype=torch.float64)
    score = sds.Score(lambda x, t: -x)
    with torch.no_grad():
        if isinstance(sampler, P.Peer):
            return sampler.sample(process, score, x, steps=steps)[1]
        return sds.sample(process, score, sampler, x_T=x, steps=steps, schedule=grid, seed=0).stats.nfe


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--problem", required=True, choices=["ring8", "gmm8d", "digits"])
    ap.add_argument("--checkpoint", default="/work/runs/digits")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--nfe", default="5,6,8,10")
    ap.add_argument("--samples", default=None, help="where to keep the samples (.npz) for the report's bootstrap; "
                    "default: next to --out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--small", action="store_true", help="without k-diffusion's stochastic samplers (the worst peer rows)")
    ap.add_argument("--extra", action="store_true", help="only the grid choice of the other new samplers")
    ap.add_argument("--defaults", action="store_true", help="sdesolve's solvers on their default grids only "
                    "(with the stochastic ones), the counterparts and the peers")
    ap.add_argument("--optimized", default="", help="comma-separated methods (dp, learned): rows of "
                    f"{', '.join(OPTIMIZED)} on grids optimized for this model, solver and NFE on calibration seeds")
    ap.add_argument("--calibration-n", type=int, default=64)
    ap.add_argument("--optimized-nfe", default="5,10", help="the NFE budgets of the optimized rows")
    ap.add_argument("--primary", default=None, help="the metric that ranks the rows (default: the problem's primary; "
                    "mixtures: energy, the proper metric, or sw)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    if args.problem == "digits":
        prob = problems.checkpoint_problem(args.checkpoint)
    else:
        mix = {"ring8": problems.ring8, "gmm8d": problems.gmm8d}[args.problem]()
        prob = problems.mixture_problem(mix, name=args.problem)
    metric = Metrics(prob.quality, args.primary)
    nfes = [int(v) for v in args.nfe.split(",")]
    shape = tuple(prob.sample_shape)
    rows = [(lab, s, g, False) for lab, s, g in ours()] + [(p.label, p, None, True) for p in peers(args.small)]
    k = len(peers(args.small))
    rows = rows[:-4 - k] + rows[-k:] + rows[-4 - k:-k]  # the counterparts last
    if args.extra:
        rows = [(lab, s, g, False) for lab, s, g in extra()]
    if args.defaults:
        rows = [(lab, s, g, False) for lab, s, g in defaults()] + [(p.label, p, None, True) for p in peers(args.small)]
    rows = [(lab, make(), m, False) for m in filter(None, args.optimized.split(",")) for lab, make in OPTIMIZED.items()] + rows
    optimized_nfes = [int(v) for v in args.optimized_nfe.split(",")]
    n = args.n
    out_rows, samples = [], {}
    floor = prob.quality.floor(n)  # 8 sets of n exact samples (digits: real training images)

    def write():
        import numpy as np
        out = Path(args.out)
        spath = Path(args.samples) if args.samples else out.with_suffix(".samples.npz")
        spath.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(spath, **samples)
        label = next(m.label for m in prob.quality.metrics if m.name == metric.primary)
        res = {"problem": args.problem, "metric": metric.primary, "label": label, "n": n,
               "seed": args.seed, "floor": floor, "rows": out_rows, "samples": str(spath), "checkpoint": args.checkpoint,
               "command": " ".join(["python", "benchmarks/few_step.py"] + (argv or sys.argv[1:])),
               "environment": environment(torch.device("cpu"))}
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1, default=str))
        os.replace(tmp, out)
    start = time.time()
    for lab, s, gname, is_peer in rows:
        if is_peer:
            try:
                s.check(prob.process)
            except P.PeerUnavailable as e:
                print("skip", lab, e, flush=True)
                continue
        grid = GRIDS.get(gname) if gname else None
        cache = {}
        for budget in nfes:
            extra_info = {}
            if gname in ("dp", "learned"):
                if budget not in optimized_nfes:
                    continue
                steps = budget // s.nfe_per_step
                grid, secs, cseed = optimized_grid(prob, s, steps, gname, args.calibration_n)
                nfe = count_nfe(s, prob.process, grid, steps)
                extra_info = {"optimization_seconds": secs, "calibration_seed": cseed, "calibration_n": args.calibration_n,
                              "grid_times": [float(t) for t in grid]}
            else:
                try:
                    steps, nfe = fit_steps(lambda k: count_nfe(s, prob.process, grid, k), budget, cache)
                except ValueError as e:
                    print("skip", lab, budget, e, flush=True)
                    continue
            if nfe > budget:
                continue
            ys, t0 = [], time.time()
            with torch.no_grad():
                for lo in range(0, n, args.batch):
                    b = min(args.batch, n - lo)
                    x_T = initial_noise(prob.process, (b,) + shape, args.seed, lo)
                    if is_peer:
                        y, _ = s.sample(prob.process, prob.score, x_T, steps=steps, seed=args.seed, offset=lo)
                    else:
                        y = sds.sample(prob.process, prob.score, s, x_T=x_T, steps=steps, schedule=grid, seed=args.seed,
                                       sample_offset=lo, check_finite=False).y
                    ys.append(prob.to_data(y.float()))
            y = torch.cat(ys)
            vals = {k: float(v[0]) for k, v in metric(metric.prepare(y)).items()}
            val = vals[metric.primary]
            samples[f"row{len(out_rows)}"] = y.numpy()
            out_rows.append({"sampler": lab, "grid": gname or "peer default", "peer": is_peer,
                             "library": s.library if is_peer else "sdesolve", "nfe_budget": budget, "nfe": nfe,
                             "steps": steps, "metric": val, "metrics": vals, "sample_key": f"row{len(out_rows)}",
                             "solver": repr(s), "seconds": time.time() - t0, **extra_info})
            print(f"{lab:38s} {gname or 'peer default':20s} NFE {nfe:2d} steps {steps:2d}  {val:.5g}  "
                  f"[{time.time() - start:.0f}s]", flush=True)
        write()  # after every row: a killed run keeps what it measured
    print("wrote", args.out, f"in {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
