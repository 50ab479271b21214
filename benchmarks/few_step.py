"""Few-step sampling (5-10 model evaluations): sdesolve's samplers on candidate grids against
k-diffusion's and diffusers' samplers on their own default grids, same model, same x_T, with
paired bootstrap intervals over the sample indices.

    python benchmarks/few_step.py --problem ring8|gmm8d|digits [--checkpoint DIR] --n 2000 \
        --nfe 5,6,8,10 --out benchmarks/results/few_step/PROBLEM.json [--samples FILE.npz]

Every row samples the same n samples: x_T[i] from stream (seed, i) (``initial_noise``), and
stochastic rows their step noise from the same streams. A row's number of steps is the largest
whose model evaluations fit the NFE budget (dry runs, as ``sdesolve bench`` does). Quality: the
problem's primary metric (mixtures: sliced Wasserstein-2 to 10000 exact samples of p_{t_min};
digits: Fréchet distance in the digits classifier's features to the held-out split). Intervals
(benchmarks/few_step_report.py, from the samples kept in an .npz): B bootstrap resamples of the
sample indices, the same resamples for every row (paired), 95% percentile intervals of each row's
metric and of the differences that the tables report.
Rows ending at t = 0 (sigma = 0) return the sample at t = 0, the others at t_min.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

import sdesolve as sds
from sdesolve.bench import peers as P
from sdesolve.bench import problems
from sdesolve.bench.runner import environment, fit_steps, initial_noise
from sdesolve.metrics.sliced import _quantiles
from sdesolve.solvers.diffusion import append_zero

S = sds.schedules
GRIDS = {
    "karras7->0": append_zero(S.karras(7.0)), "karras7": S.karras(7.0), "karras5->0": append_zero(S.karras(5.0)),
    "logsnr": S.logsnr, "logsnr->0": append_zero(S.logsnr), "time_uniform2->0": append_zero(S.time_uniform(2.0)),
    "polyexp2->0": append_zero(S.polyexponential(2.0)), "uniform": S.uniform,
    "linspace_timesteps": S.linspace_timesteps(), "uniform->0": append_zero(S.uniform),
}


def ours(small=False):
    """(label, solver, grid name): sdesolve's candidates, and the counterparts on their peers'
    grids. ``small``: the candidates kept for the digits model (chosen on the mixtures)."""
    rows = []
    for g in ("karras7->0", "logsnr", "linspace_timesteps"):
        rows.append(("IPNDM(4)", sds.IPNDM(4), g))
        if not (small and g == "karras7->0"):
            rows.append(("IPNDM(4, afs)", sds.IPNDM(4, afs=True), g))
        rows.append(("DEIS(3)", sds.DEIS(3), g))
    for g in ("logsnr", "linspace_timesteps"):
        rows.append(("UniPC(3)", sds.UniPC(3), g))
        if not small:
            rows.append(("DPMSolverPP(3)", sds.DPMSolverPP(3), g))
        if not (small and g == "logsnr"):
            rows.append(("SASolver(tau=0)", sds.SASolver(tau=0.0), g))
    # the counterparts on their peers' default grids
    rows.append(("DPMSolverPP(2)", sds.DPMSolverPP(2), "karras7->0"))   # k-diffusion dpmpp_2m
    rows.append(("LMS(4)", sds.LMS(4), "karras7->0"))                   # k-diffusion lms
    rows.append(("EDMHeun", sds.EDMHeun(), "karras7->0"))               # k-diffusion heun
    rows.append(("UniPC(2)", sds.UniPC(2), "linspace_timesteps"))       # diffusers UniPC default
    return rows


def extra():
    """The grid choice for the other new samplers (no peers, no counterparts)."""
    rows = []
    for g in ("karras7->0", "logsnr", "linspace_timesteps"):
        rows.append(("LMS(4)", sds.LMS(4), g))
        rows.append(("SASolver", sds.SASolver(), g))
        rows.append(("DPMSolverPP3MSDE", sds.DPMSolverPP3MSDE(), g))
        rows.append(("DPMSolverPP3MSDE(eta=0)", sds.DPMSolverPP3MSDE(0.0), g))
        rows.append(("DPMSolverPPSDE", sds.DPMSolverPPSDE(), g))
    return rows


def peers(small=False):
    """k-diffusion's samplers on its Karras grid to 0, diffusers' schedulers with their defaults.
    ``small`` leaves out k-diffusion's stochastic samplers (the worst peer rows on the mixtures)."""
    from diffusers import DEISMultistepScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler
    names = ("euler", "heun", "lms", "dpmpp_2m") + (() if small else ("dpmpp_2m_sde", "dpmpp_3m_sde", "dpmpp_sde"))
    out = [P.KDiffusion(name, zero=True) for name in names]
    out += [P.Diffusers(DPMSolverMultistepScheduler, "DPMSolverPP(order=2)", "diffusers DPMSolverMultistep (default)"),
            P.Diffusers(DPMSolverMultistepScheduler, "DPMSolverPP(order=3)", "diffusers DPMSolverMultistep(3)",
                        solver_order=3),
            P.Diffusers(UniPCMultistepScheduler, "UniPC(order=2)", "diffusers UniPCMultistep (default)"),
            P.Diffusers(DEISMultistepScheduler, "DEIS(order=1, in_log_rho=True)", "diffusers DEISMultistep (default)")]
    return out


# --- quality with cached reference quantities ---------------------------------------------------
class SWMetric:
    """SW_2 to the mixture problem's exact reference (MixtureQuality's directions), estimated at
    the n mid-point quantile levels of the n samples: the reference's quantile functions are
    interpolated at those levels once. (MixtureQuality.figures interpolates the samples at the
    reference's 10000 levels instead; both estimate the same distance.)

    A bootstrap resample with counts c_j of sample j has, in each direction, the sorted values
    v_j repeated c_j times, so that its squared distance is
        sum_j c_j v_j^2 - 2 sum_j v_j (Q[C_j] - Q[C_j - c_j]) + sum_m qy_m^2,
    C the cumulative counts in sorted order and Q the prefix sums of the reference's quantiles:
    one sort per row, none per resample."""

    def __init__(self, quality, n):
        self.q = quality
        D = quality.mixture.D
        g = torch.Generator().manual_seed(quality.reference_seed + 1)
        theta = torch.randn(D, quality.n_proj, generator=g, dtype=torch.float64)
        self.theta = theta / theta.norm(dim=0, keepdim=True)
        qy = _quantiles(quality.reference @ self.theta, n).T.contiguous()      # (P, n)
        self.Q = torch.cat([torch.zeros(qy.shape[0], 1, dtype=torch.float64), qy.cumsum(-1)], -1)
        self.sq = float((qy**2).sum())
        self.n = n

    def prepare(self, x):
        proj = (x.reshape(x.shape[0], -1).to(torch.float64) @ self.theta).T.contiguous()
        v, perm = torch.sort(proj, dim=-1)
        return v, perm

    def __call__(self, prep, idx=None):
        v, perm = prep
        if not torch.isfinite(v).all():
            return float("nan")
        n = v.shape[-1]
        counts = torch.ones(n, dtype=torch.float64) if idx is None else torch.bincount(idx, minlength=n).double()
        c = counts[perm]
        C = c.cumsum(-1).long()
        S1 = self.Q.gather(-1, C) - self.Q.gather(-1, C - c.long())
        total = float((c * v * v).sum() - 2.0 * (v * S1).sum()) + self.sq
        return math.sqrt(max(total, 0.0) / v.numel())


class FDMetric:
    """Fréchet distance of features to the reference statistics."""

    def __init__(self, quality):
        self.q = quality
        self.name = quality.primary
        self.extractor, self.ref = quality.features[self.name]
        self.mu_r = self.ref.mean.to(torch.float64) if hasattr(self.ref, "mean") else None

    def prepare(self, x):
        images = self.q.to_unit(x)
        with torch.inference_mode():
            return torch.cat([self.extractor(c) for c in images.split(256)]).to(torch.float64)

    def __call__(self, feats, idx=None):
        from sdesolve.metrics.frechet import GaussianStats  # noqa: F811
        f = feats if idx is None else feats[idx]
        if not torch.isfinite(f).all():
            return float("nan")
        st = GaussianStats()
        st.update(f)
        return float(st.frechet_distance(self.ref))


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
    ap.add_argument("--small", action="store_true", help="the smaller set of rows (for the digits model)")
    ap.add_argument("--extra", action="store_true", help="only the grid choice of the other new samplers")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    if args.problem == "digits":
        prob = problems.checkpoint_problem(args.checkpoint)
        metric = FDMetric(prob.quality)
    else:
        mix = {"ring8": problems.ring8, "gmm8d": problems.gmm8d}[args.problem]()
        prob = problems.mixture_problem(mix, name=args.problem)
        metric = SWMetric(prob.quality, args.n)
    nfes = [int(v) for v in args.nfe.split(",")]
    metric_name = prob.quality.primary
    shape = tuple(prob.sample_shape)
    rows = [(lab, s, g, False) for lab, s, g in ours(args.small)] + [(p.label, p, None, True) for p in peers(args.small)]
    k = len(peers(args.small))
    rows = rows[:-4 - k] + rows[-k:] + rows[-4 - k:-k]  # the counterparts last
    if args.extra:
        rows = [(lab, s, g, False) for lab, s, g in extra()]
    n = args.n
    out_rows, samples = [], {}
    if args.problem == "digits":
        floor = prob.quality.floor(n)
    else:  # the same estimator as the rows': 8 sets of n exact samples
        vals = torch.tensor([metric(metric.prepare(prob.quality.exact(n, torch.Generator().manual_seed(1000 + k))))
                             for k in range(8)], dtype=torch.float64)
        floor = {"n": n, "sets": 8, metric_name: float(vals.mean()), metric_name + "_std": float(vals.std())}

    def write():
        import numpy as np
        out = Path(args.out)
        spath = Path(args.samples) if args.samples else out.with_suffix(".samples.npz")
        spath.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(spath, **samples)
        res = {"problem": args.problem, "metric": prob.quality.primary, "label": prob.quality.label, "n": n,
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
        grid = GRIDS[gname] if gname else None
        cache = {}
        for budget in nfes:
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
            val = metric(metric.prepare(y))
            samples[f"row{len(out_rows)}"] = y.numpy()
            out_rows.append({"sampler": lab, "grid": gname or "peer default", "peer": is_peer,
                             "library": s.library if is_peer else "sdesolve", "nfe_budget": budget, "nfe": nfe,
                             "steps": steps, "metric": val, "sample_key": f"row{len(out_rows)}",
                             "solver": repr(s), "seconds": time.time() - t0})
            print(f"{lab:38s} {gname or 'peer default':20s} NFE {nfe:2d} steps {steps:2d}  {val:.5g}  "
                  f"[{time.time() - start:.0f}s]", flush=True)
        write()  # after every row: a killed run keeps what it measured
    print("wrote", args.out, f"in {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
